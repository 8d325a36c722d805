"""Virtio devices: status, features by name, queues and their rings in guest RAM.

>>> from qevm.devices import decode
>>> with qevm.open("vm.mig", index_ram=True) as mig:
...     for v in decode(mig).virtio:
...         print(v.type, v.status_names, [(q.index, q.num, q.ring.used_idx) for q in v.queues])

Decoded from the description's opaque ``virtio`` field (see :mod:`.wire`).
QEMU does not migrate the host (offered) feature bits: ``host_features``
lists those the stream proves, every negotiated one and those its
subsections imply (``virtio/virtqueues``: VIRTIO_F_VERSION_1,
``virtio/packed_virtqueues``: VIRTIO_F_RING_PACKED).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from . import devconfig, features, rings, wire
from .features import F_RING_PACKED, F_VERSION_1, FeatureList
from .rings import RingCheck
from .wire import SavedQueue, VirtioBlob

VIRTIO_NO_VECTOR = 0xFFFF
ENDIAN_NAMES = {0: "unknown", 1: "little", 2: "big"}


@dataclass
class VirtQueue:
    """One virtqueue: what was migrated and what QEMU reads from guest RAM on load."""

    index: int
    num: int
    num_default: int
    desc: int
    avail: int | None
    used: int | None
    last_avail_idx: int
    vector: int | None
    enabled: bool | None
    ring: RingCheck
    packed: dict[str, int] | None = None
    align: int | None = None

    @property
    def used_idx(self) -> int | None:
        return self.ring.used_idx

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "num": self.num,
            "num_default": self.num_default,
            "desc": self.desc,
            "avail": self.avail,
            "used": self.used,
            "last_avail_idx": self.last_avail_idx,
            "used_idx": self.ring.used_idx,
            "avail_idx": self.ring.avail_idx,
            "inuse": self.ring.inuse,
            "vector": self.vector,
        }
        if self.align is not None:
            out["align"] = self.align
        if self.enabled is not None:
            out["enabled"] = self.enabled
        if self.packed is not None:
            out["packed"] = self.packed
        if self.ring.problem:
            out["problem"] = self.ring.problem
            out["fatal"] = self.ring.fatal
        if self.ring.note:
            out["note"] = self.ring.note
        return out


@dataclass
class VirtioDevice:
    """A virtio device section, decoded."""

    section: str
    instance_id: int
    transport: str
    device_id: int | None
    type: str
    status: int
    isr: int
    queue_sel: int
    guest_features: int
    host_features_proven: int
    config: bytes
    queues: list[VirtQueue]
    endianness: str
    config_vector: int | None = None
    flags: dict[str, bool] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)
    #: the PCI function of a virtio-pci device
    pci_function: Any = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def pci_address(self) -> str | None:
        return self.pci_function.address if self.pci_function is not None else None

    @property
    def status_names(self) -> list[str]:
        return features.decode_status(self.status)[0]

    @property
    def guest_feature_list(self) -> FeatureList:
        return features.decode_features(self.device_id, self.guest_features)

    @property
    def host_feature_list(self) -> FeatureList:
        return features.decode_features(self.device_id, self.host_features_proven)

    def ring_sizes(self) -> list[tuple[int, int, int]]:
        """``(index, num, num_default)`` of every queue: what a destination must match."""
        return [(q.index, q.num, q.num_default) for q in self.queues]

    def format(self) -> list[str]:
        """Text lines: status, features, queues, the device's own config."""
        from .text import format_device

        return format_device(self)

    def to_json(self) -> dict[str, Any]:
        g = self.guest_feature_list
        h = self.host_feature_list
        status_names, status_unknown = features.decode_status(self.status)
        out: dict[str, Any] = {
            "section": self.section,
            "instance_id": self.instance_id,
            "type": self.type,
            "device_id": self.device_id,
            "transport": self.transport,
            "pci_address": self.pci_address,
            "status": status_names,
            "status_value": self.status,
            "isr": self.isr,
            "queue_sel": self.queue_sel,
            "guest_features": g.names,
            "guest_features_value": self.guest_features,
            "guest_features_unknown": g.unknown,
            "host_features": h.names,
            "host_features_value": self.host_features_proven,
            "host_features_note": (
                "QEMU does not migrate the host features; these are the ones the stream "
                "proves (negotiated, or implied by its subsections)"
            ),
            "endianness": self.endianness,
            "config": self.config.hex(),
            "config_vector": self.config_vector,
            "num_queues": len(self.queues),
            "queues": [q.to_json() for q in self.queues],
        }
        if status_unknown:
            out["status_unknown"] = status_unknown
        out.update(self.flags)
        if self.device:
            out[self.type.removeprefix("virtio-").replace("-", "_")] = self.device
        if self.warnings:
            out["warnings"] = self.warnings
        if self.notes:
            out["notes"] = self.notes
        return out


def _device_id(blob: VirtioBlob, vmsd_name: str | None) -> int | None:
    cfg = blob.pci_config
    if cfg is not None and len(cfg) >= 0x30:
        did = struct.unpack_from("<H", cfg, 2)[0]
        if did >= 0x1040:
            return did - 0x1040
        # transitional devices carry the virtio device id in the subsystem id
        return struct.unpack_from("<H", cfg, 0x2E)[0]
    if vmsd_name is not None:
        return features.VMSD_IDS.get(vmsd_name)
    return None


def build(
    blob: VirtioBlob,
    section: str,
    instance_id: int,
    vmsd_name: str | None,
    memory: Any,
    *,
    big_endian_target: bool = False,
) -> VirtioDevice:
    """Turn the parsed bytes into a :class:`VirtioDevice`, reading rings through ``memory``
    (a :class:`~qevm.devices.guestmem.GuestMemory`, or None to skip RAM)."""
    dev_id = _device_id(blob, vmsd_name)
    guest = blob.guest_features_lo
    hi = blob.subsection("virtio/64bit_features")
    if hi is not None and len(hi.body) == 8:
        guest = struct.unpack(">Q", hi.body)[0]
    ext = blob.subsection("virtio/128bit_features")
    if ext is not None and len(ext.body) == 8:
        guest |= struct.unpack(">Q", ext.body)[0] << 64
    proven = guest
    if blob.subsection("virtio/virtqueues") is not None:
        proven |= 1 << F_VERSION_1
    if blob.subsection("virtio/packed_virtqueues") is not None:
        proven |= 1 << F_RING_PACKED
    version_1 = bool(guest >> F_VERSION_1 & 1)
    packed = bool(guest >> F_RING_PACKED & 1)

    endian_sub = blob.subsection("virtio/device_endian")
    if version_1:
        endian = "little"
    elif endian_sub is not None and endian_sub.body:
        endian = ENDIAN_NAMES.get(endian_sub.body[0], "unknown")
    else:
        endian = "big" if big_endian_target else "little"
    big = endian == "big"

    def read_u16(gpa: int) -> int | None:
        return memory.u16(gpa, big) if memory is not None else None

    out = VirtioDevice(
        section=section,
        instance_id=instance_id,
        transport=blob.transport,
        device_id=dev_id,
        type=features.device_name(dev_id) if dev_id is not None else (vmsd_name or "virtio"),
        status=blob.status,
        isr=blob.isr,
        queue_sel=blob.queue_sel,
        guest_features=guest,
        host_features_proven=proven,
        config=blob.config,
        queues=[],
        endianness=endian,
        config_vector=blob.config_vector,
        notes=list(blob.notes),
    )
    for name in ("broken", "started", "disabled"):
        sub = blob.subsection(f"virtio/{name}")
        out.flags[name] = bool(sub.body[0]) if sub is not None and sub.body else False
    for q in blob.queues:
        out.queues.append(_queue(q, blob, version_1, packed, read_u16, memory is not None))
    for q in out.queues:
        if q.ring.problem:
            out.warnings.append(f"{section}: {q.ring.problem}")
    decoder = devconfig.CONFIG_DECODERS.get(dev_id or -1)
    if decoder is not None:
        out.device["config"] = decoder(blob.config, ">" if big else "<")
    if dev_id == 1:
        state, why = devconfig.net_device_state(
            blob.device_state, len(blob.queues), blob.guest_features_lo
        )
        out.device["state"] = state
        if why:
            out.notes.append(why)
    if memory is None:
        out.notes.append("guest RAM not read: used and avail ring indexes not shown")
    return out


def _queue(
    q: SavedQueue, blob: VirtioBlob, version_1: bool, packed: bool, read_u16, have_mem: bool
) -> VirtQueue:
    if version_1 or packed:
        avail, used = q.avail, q.used
    elif q.desc:
        align = q.align or rings.PCI_VRING_ALIGN
        avail, used = rings.legacy_rings(q.desc, q.num, align)
    else:
        avail = used = 0
    if packed:
        check = RingCheck(note="packed ring: QEMU keeps its indexes in the stream")
        if q.packed:
            check.used_idx = q.packed["used_idx"]
            check.inuse = q.packed["inuse"]
    elif have_mem:
        check = rings.check_ring(q, avail, used, read_u16)
    else:
        check = RingCheck()
        if not q.desc and q.last_avail_idx:
            check = rings.check_ring(q, None, None, read_u16)
    vector = q.vector if q.vector is not None else None
    enabled = q.transport["enabled"] if q.transport else None
    return VirtQueue(
        index=q.index,
        num=q.num,
        num_default=q.num_default if q.num_default is not None else q.num,
        desc=q.desc,
        avail=avail,
        used=used,
        last_avail_idx=q.last_avail_idx,
        vector=vector,
        enabled=enabled,
        ring=check,
        packed=q.packed,
        align=q.align,
    )


__all__ = ["VirtQueue", "VirtioDevice", "build", "wire"]
