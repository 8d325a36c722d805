"""Device-type specific parts of a virtio device: its config space and own state.

The config space (``vdev->config``, as the device last filled it for the
guest) follows the virtio spec's ``struct virtio_*_config``, little-endian
for virtio 1 devices and in the guest's byte order for legacy ones.  Fields
past ``config_len`` (features the device does not offer) are left out.
virtio-net's own state is ``vmstate_virtio_net_device`` (hw/net/virtio-net.c),
read here field by field because the description does not cover it.
"""

from __future__ import annotations

import struct
from typing import Any

MAC_TABLE_ENTRIES = 64
MAX_VLAN = 4096


def _fields(cfg: bytes, layout: list[tuple[str, int, str]], endian: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, off, fmt in layout:
        size = struct.calcsize(fmt)
        if off + size <= len(cfg):
            out[name] = struct.unpack_from(endian + fmt, cfg, off)[0]
    return out


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def net_config(cfg: bytes, endian: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if len(cfg) >= 6:
        out["mac"] = mac_text(cfg[:6])
    out.update(
        _fields(
            cfg,
            [
                ("status", 6, "H"),
                ("max_virtqueue_pairs", 8, "H"),
                ("mtu", 10, "H"),
                ("speed", 12, "I"),
                ("duplex", 16, "B"),
                ("rss_max_key_size", 17, "B"),
                ("rss_max_indirection_table_length", 18, "H"),
                ("supported_hash_types", 20, "I"),
            ],
            endian,
        )
    )
    if "status" in out:
        out["link_up"] = bool(out["status"] & 1)
        out["announce"] = bool(out["status"] & 2)
    return out


def blk_config(cfg: bytes, endian: str) -> dict[str, Any]:
    out = _fields(
        cfg,
        [
            ("capacity", 0, "Q"),
            ("size_max", 8, "I"),
            ("seg_max", 12, "I"),
            ("cylinders", 16, "H"),
            ("heads", 18, "B"),
            ("sectors", 19, "B"),
            ("blk_size", 20, "I"),
            ("physical_block_exp", 24, "B"),
            ("alignment_offset", 25, "B"),
            ("min_io_size", 26, "H"),
            ("opt_io_size", 28, "I"),
            ("writeback", 32, "B"),
            ("num_queues", 34, "H"),
            ("max_discard_sectors", 36, "I"),
            ("max_discard_seg", 40, "I"),
            ("discard_sector_alignment", 44, "I"),
            ("max_write_zeroes_sectors", 48, "I"),
            ("max_write_zeroes_seg", 52, "I"),
            ("write_zeroes_may_unmap", 56, "B"),
            ("max_secure_erase_sectors", 60, "I"),
            ("max_secure_erase_seg", 64, "I"),
            ("secure_erase_sector_alignment", 68, "I"),
        ],
        endian,
    )
    if "capacity" in out:
        out["capacity_bytes"] = out["capacity"] * 512
    return out


def scsi_config(cfg: bytes, endian: str) -> dict[str, Any]:
    return _fields(
        cfg,
        [
            ("num_queues", 0, "I"),
            ("seg_max", 4, "I"),
            ("max_sectors", 8, "I"),
            ("cmd_per_lun", 12, "I"),
            ("event_info_size", 16, "I"),
            ("sense_size", 20, "I"),
            ("cdb_size", 24, "I"),
            ("max_channel", 28, "H"),
            ("max_target", 30, "H"),
            ("max_lun", 32, "I"),
        ],
        endian,
    )


def balloon_config(cfg: bytes, endian: str) -> dict[str, Any]:
    # num_pages and actual are little-endian whatever the device (the spec says so
    # and QEMU writes them with cpu_to_le32)
    out = _fields(
        cfg,
        [
            ("num_pages", 0, "I"),
            ("actual", 4, "I"),
            ("free_page_hint_cmd_id", 8, "I"),
            ("poison_val", 12, "I"),
        ],
        "<",
    )
    return out


def console_config(cfg: bytes, endian: str) -> dict[str, Any]:
    return _fields(
        cfg,
        [("cols", 0, "H"), ("rows", 2, "H"), ("max_nr_ports", 4, "I"), ("emerg_wr", 8, "I")],
        endian,
    )


def gpu_config(cfg: bytes, endian: str) -> dict[str, Any]:
    return _fields(
        cfg,
        [("events_read", 0, "I"), ("events_clear", 4, "I"), ("num_scanouts", 8, "I")],
        endian,
    )


CONFIG_DECODERS = {
    1: net_config,
    2: blk_config,
    3: console_config,
    5: balloon_config,
    8: scsi_config,
    16: gpu_config,
}


def net_device_state(
    data: bytes, num_queues: int, guest_features_lo: int
) -> tuple[dict[str, Any], str | None]:
    """``vmstate_virtio_net_device``: MAC, link status, RX filters, queue pairs.

    Returns the fields read and, when the bytes do not follow the layout to
    the end, why (the fields before that point are still returned).
    """
    out: dict[str, Any] = {}
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise ValueError(f"ends at byte {len(data)}, expected {pos + n}")
        b = data[pos : pos + n]
        pos += n
        return b

    def be(n: int) -> int:
        return int.from_bytes(take(n), "big")

    max_pairs = max((num_queues - 1) // 2, 1)
    try:
        out["mac"] = mac_text(take(6))
        out["tx_waiting"] = [be(4)]
        out["mergeable_rx_bufs"] = be(4)
        out["status"] = be(2)
        out["link_up"] = bool(out["status"] & 1)
        out["promisc"] = be(1)
        out["allmulti"] = be(1)
        in_use = be(4)
        if in_use > 0x10000:
            raise ValueError(f"MAC table of {in_use} entries")
        macs = take(6 * in_use)
        out["mac_table"] = [mac_text(macs[6 * i : 6 * i + 6]) for i in range(in_use)]
        take(MAX_VLAN // 8)
        out["has_vnet_hdr"] = be(4)
        out["multi_overflow"] = be(1)
        out["uni_overflow"] = be(1)
        out["alluni"] = be(1)
        out["nomulti"] = be(1)
        out["nouni"] = be(1)
        out["nobcast"] = be(1)
        out["has_ufo"] = be(1)
        out["max_queue_pairs"] = max_pairs
        curr = 1
        if max_pairs > 1:
            out["max_queue_pairs"] = be(2)
            curr = be(2)
        out["curr_queue_pairs"] = curr
        for _ in range(curr - 1):
            out["tx_waiting"].append(be(4))
        if guest_features_lo & (1 << 2):  # VIRTIO_NET_F_CTRL_GUEST_OFFLOADS
            out["curr_guest_offloads"] = be(8)
    except ValueError as e:
        return out, f"virtio-net state: {e}"
    rest = data[pos:]
    if rest and not rest.startswith(b"\x05"):
        return out, f"virtio-net state: {len(rest)} bytes after the known fields"
    return out, None
