"""A virtio device's own state inside ``virtio_load()`` (``vdc->load`` / ``vdc->vmsd``).

Written after the queue table and before ``vmstate_virtio``'s subsections,
described nowhere in the stream.  Read here per device type as the
*destination* reads it:

* virtio-net (``vmstate_virtio_net_device``, hw/net/virtio-net.c): MAC,
  tx_waiting, RX mode, the MAC filter table (``in_use`` entries), the VLAN
  bitmap, the backend's vnet header and UFO flags (refused when the
  destination's backend lacks them), ``max_queue_pairs``/``curr_queue_pairs``
  only when the destination has more than one pair (``max_queue_pairs`` must
  be equal), the other pairs' tx_waiting, guest offloads when negotiated,
  subsections (RSS);
* virtio-blk (``virtio_blk_load_device``): in-flight requests, each with
  its queue index only when the destination has more than one queue;
* virtio-balloon (``vmstate_virtio_balloon_device``): num_pages, actual and
  subsections;
* virtio-serial (``virtio_serial_load_device``): the map of ports in use,
  which must be the destination's, and per active port (which must exist
  there) its connection state and a popped element;
* rng, scsi, 9p, gpu, input, vsock: nothing.

Other devices' state is taken as the source wrote it when the destination's
own stream has as many bytes there, and is a doubt otherwise.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .features import F_RING_PACKED, device_name
from .subsections import BALLOON_SUBSECTIONS, NET_SUBSECTIONS, read_subsections, sent_in

if TYPE_CHECKING:
    from .load import Cursor, LoadReading
    from .loadside import LoadSide

MAX_VLAN = 4096
VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 2
#: sizeof(VirtQueueElementOld) on a 64-bit host: index, out_num, in_num, padding, then
#: 1024 in and out addresses and 1024 in and out iovecs (qemu_get_virtqueue_element)
ELEMENT_SIZE = 16 + 2 * 8 * 1024 + 2 * 16 * 1024
#: device types whose virtio_load() reads no state of their own
NO_STATE = {4, 8, 9, 16, 18, 19}


def read_device_state(
    cur: Cursor, dest: LoadSide, source: LoadSide | None, features_lo: int, out: LoadReading
) -> None:
    """Read the device's own state the destination's way (raises Stop where it fails)."""
    from .load import Refusal, Stop

    kind = dest.device_id
    if kind in NO_STATE:
        return
    if kind == 1:
        _net(cur, dest, features_lo, out)
        return
    if kind == 2:
        _blk(cur, dest, source, out)
        return
    if kind == 3:
        _serial(cur, dest, source)
        return
    if kind == 5:
        cur.be32("num_pages")
        cur.be32("actual")
        sent = sent_in(dest.blob.device_state, "virtio-balloon-device")
        read_subsections(cur, "virtio-balloon-device", BALLOON_SUBSECTIONS, dest, out, sent)
        return
    name = device_name(kind) if kind is not None else "the device"
    at = cur.offset
    if source is None:
        raise Stop(
            Refusal(
                at,
                f"{name}'s own state: qevm does not know its layout, and the source's virtio "
                "state does not parse to show where it ends",
                certain=False,
                where="device state",
            )
        )
    n = source.device.get("state_size", 0)
    dn = dest.device.get("state_size")
    cur.take(n, "device state")
    if dn is not None and dn != n:
        out.refusals.append(
            Refusal(
                at,
                f"{name}'s own state: the source wrote {n} bytes, the destination's own "
                f"stream has {dn}; qevm does not know its layout, so how many bytes the "
                "destination reads cannot be told",
                certain=False,
                where="device state",
                source=n,
                destination=dn,
            )
        )
    elif n:
        out.notes.append(
            f"{name}'s own state ({n} bytes): qevm does not know its layout; taken as the "
            "destination reads it, as long as its own stream has as many bytes there"
        )


def _net(cur: Cursor, dest: LoadSide, features_lo: int, out: LoadReading) -> None:
    from .load import Refusal, Stop

    dev = dest.device
    cur.take(6, "mac")
    cur.be32("vqs[0].tx_waiting")
    cur.be32("mergeable_rx_bufs")
    cur.be16("status")
    cur.u8("promisc")
    cur.u8("allmulti")
    in_use = cur.be32("mac_table.in_use")
    # loaded when it fits the table, skipped when not: the same bytes either way
    cur.take(6 * in_use, "mac_table.macs")
    cur.take(MAX_VLAN // 8, "vlans")
    at = cur.offset
    vnet = cur.be32("has_vnet_hdr")
    if vnet and not dev.get("has_vnet_hdr"):
        raise Stop(
            Refusal(
                at,
                "the source's network backend passes a virtio-net header (a tap with "
                "vnet_hdr); the destination's does not",
                "virtio-net: saved image requires vnet_hdr=on",
                certain="has_vnet_hdr" in dev,
                where="has_vnet_hdr",
                source=vnet,
                destination=dev.get("has_vnet_hdr"),
            )
        )
    for name in ("multi_overflow", "uni_overflow", "alluni", "nomulti", "nouni", "nobcast"):
        cur.u8(name)
    at = cur.offset
    ufo = cur.u8("has_ufo")
    if ufo and not dev.get("has_ufo"):
        raise Stop(
            Refusal(
                at,
                "the source's backend supports UDP fragmentation offload (TUN_F_UFO); the "
                "destination's does not",
                "virtio-net: saved image requires TUN_F_UFO support",
                certain="has_ufo" in dev,
                where="has_ufo",
                source=ufo,
                destination=dev.get("has_ufo"),
            )
        )
    local_max = dev.get("max_queue_pairs", 1)
    curr = 1
    if local_max > 1:
        at = cur.offset
        got = cur.be16("max_queue_pairs")
        if got != local_max:
            raise Stop(
                Refusal(
                    at,
                    f"max_queue_pairs: {got} at the source, {local_max} at the destination",
                    f"{local_max:x} != {got:x}",
                    where="max_queue_pairs",
                    source=got,
                    destination=local_max,
                )
            )
        curr = cur.be16("curr_queue_pairs")
    if curr > local_max:
        raise Stop(
            Refusal(
                cur.offset,
                f"curr_queue_pairs {curr} is more than the destination's {local_max}",
                f"virtio-net: curr_queue_pairs {curr:x} > max_queue_pairs {local_max:x}",
                where="curr_queue_pairs",
            )
        )
    for k in range(1, curr):
        cur.be32(f"vqs[{k}].tx_waiting")
    if features_lo >> VIRTIO_NET_F_CTRL_GUEST_OFFLOADS & 1:
        cur.be64("curr_guest_offloads")
    sent = sent_in(dest.blob.device_state, "virtio-net-device")
    read_subsections(cur, "virtio-net-device", NET_SUBSECTIONS, dest, out, sent)


def _blk(cur: Cursor, dest: LoadSide, source: LoadSide | None, out: LoadReading) -> None:
    from .load import Refusal, Stop

    nvqs = dest.device.get("num_queues", 1)
    # an element carries its descriptor count when the device offers packed rings
    packed = source is not None and bool(source.negotiated >> F_RING_PACKED & 1)
    k = 0
    while True:
        (more,) = struct.unpack("b", cur.take(1, "request list"))
        if not more:
            return
        if nvqs > 1:
            at = cur.offset
            idx = cur.be32(f"request[{k}].vq")
            if idx >= nvqs:
                raise Stop(
                    Refusal(
                        at,
                        f"an in-flight request of queue {idx}; the destination has {nvqs} queues",
                        f"Invalid virtqueue index in request list: {idx:#x}",
                        where=f"request[{k}]",
                    )
                )
        cur.take(ELEMENT_SIZE + (4 if packed else 0), f"request[{k}]")
        if k == 0:
            out.notes.append(
                "virtio-blk has in-flight requests: each is read as a 64-bit host's "
                "VirtQueueElement"
            )
        k += 1


def serial_ports(state: bytes, queues: int) -> tuple[list[int], list[int]] | None:
    """A virtio-serial device's own map of ports in use and the ids of its ports, from
    the state it saved (``queues``: its queue count, 2 per port plus 2 control)."""
    words = (max((queues - 2) // 2, 1) + 31) // 32
    pos = 8 + 4 * words
    if len(state) < pos + 4:
        return None
    ports_map = list(struct.unpack_from(f">{words}I", state, 8))
    (n,) = struct.unpack_from(">I", state, pos)
    pos += 4
    ids = []
    for _ in range(min(n, 1024)):
        if len(state) < pos + 10:
            return None
        pid, _g, _h, popped = struct.unpack_from(">IBBI", state, pos)
        ids.append(pid)
        pos += 10 + (12 + ELEMENT_SIZE if popped else 0)
    return ports_map, ids


def _serial(cur: Cursor, dest: LoadSide, source: LoadSide | None) -> None:
    mine = serial_ports(dest.blob.device_state, len(dest.blob.queues))
    cur.take(8, "config (unused)")
    words = (max((len(dest.blob.queues) - 2) // 2, 1) + 31) // 32
    for i in range(words):
        got = cur.be32(f"ports_map[{i}]")
        if mine is not None and i < len(mine[0]) and got != mine[0][i]:
            raise cur.failed(
                f"the ports in use differ: map {got:#010x} at the source, {mine[0][i]:#010x} "
                "at the destination",
                f"ports_map[{i}]",
                source=got,
                destination=mine[0][i],
            )
    n = cur.be32("nr_active_ports")
    packed = source is not None and bool(source.negotiated >> F_RING_PACKED & 1)
    for k in range(n):
        pid = cur.be32(f"port[{k}].id")
        if mine is not None and pid not in mine[1]:
            raise cur.failed(
                f"port {pid} is active at the source; the destination has no port {pid}",
                f"port[{k}].id",
                source=pid,
            )
        cur.take(2, f"port[{k}].connected")
        if cur.be32(f"port[{k}].elem_popped"):
            cur.take(12, f"port[{k}].iov")
            cur.take(ELEMENT_SIZE + (4 if packed else 0), f"port[{k}].elem")
