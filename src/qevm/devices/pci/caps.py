"""The capability list of a PCI function (config space 0x40-0xff).

Each capability is decoded into a dict: ``offset``, ``id``, ``name`` and its
registers by meaning.  The list is walked as the guest would walk it (from
PCI_CAPABILITY_LIST, following each ``next``), guarding against loops and
pointers outside the list area.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .header import CAPABILITY_LIST, STATUS, STATUS_CAP_LIST, u16, u32

CAP_PM = 0x01
CAP_MSI = 0x05
CAP_VNDR = 0x09
CAP_SLOTID = 0x04
CAP_SHPC = 0x0C
CAP_SSVID = 0x0D
CAP_EXP = 0x10
CAP_MSIX = 0x11
CAP_SATA = 0x12
CAP_AF = 0x13

CAP_NAMES = {
    0x01: "Power Management",
    0x02: "AGP",
    0x03: "Vital Product Data",
    0x04: "Slot Identification",
    0x05: "MSI",
    0x06: "CompactPCI hot-swap",
    0x07: "PCI-X",
    0x08: "HyperTransport",
    0x09: "Vendor Specific",
    0x0A: "Debug port",
    0x0B: "CompactPCI central resource control",
    0x0C: "PCI Standard Hot-Plug Controller",
    0x0D: "Bridge subsystem vendor/device ID",
    0x0E: "AGP 8x",
    0x0F: "Secure device",
    0x10: "Express",
    0x11: "MSI-X",
    0x12: "SATA HBA",
    0x13: "PCI Advanced Features",
    0x14: "Enhanced Allocation",
    0x15: "Flattening Portal Bridge",
}

#: virtio_pci_cap.cfg_type (virtio 1.x, section 4.1.4)
VIRTIO_CFG_TYPES = {
    1: "common",
    2: "notify",
    3: "isr",
    4: "device",
    5: "pci",
    8: "shared memory",
    9: "vendor",
}


def walk(cfg: bytes) -> Iterator[tuple[int, int]]:
    """``(offset, id)`` of every capability in list order."""
    if not u16(cfg, STATUS) & STATUS_CAP_LIST:
        return
    pos = cfg[CAPABILITY_LIST] & 0xFC
    seen: set[int] = set()
    while pos and 0x40 <= pos <= 0xFC and pos not in seen and len(seen) < 48:
        seen.add(pos)
        yield pos, cfg[pos]
        pos = cfg[pos + 1] & 0xFC


def decode_all(cfg: bytes) -> list[dict[str, Any]]:
    """Every capability, decoded."""
    return [decode(cfg, pos, cid) for pos, cid in walk(cfg)]


def decode(cfg: bytes, pos: int, cid: int) -> dict[str, Any]:
    out: dict[str, Any] = {"offset": pos, "id": cid, "name": CAP_NAMES.get(cid, f"#{cid:02x}")}
    fn = _DECODERS.get(cid)
    if fn is not None:
        out.update(fn(cfg, pos))
    return out


def _pm(cfg: bytes, pos: int) -> dict[str, Any]:
    pmc = u16(cfg, pos + 2)
    ctrl = u16(cfg, pos + 4)
    return {
        "version": pmc & 7,
        "pme_support": (pmc >> 11) & 0x1F,
        "d1": bool(pmc & 0x200),
        "d2": bool(pmc & 0x400),
        "power_state": f"D{ctrl & 3}",
        "no_soft_reset": bool(ctrl & 0x8),
        "pme_enable": bool(ctrl & 0x100),
        "pme_status": bool(ctrl & 0x8000),
    }


def msi_layout(flags: int) -> tuple[bool, bool, int]:
    """``(64-bit, per-vector masking, capability size)`` from the MSI flags word,
    as QEMU's ``msi_cap_sizeof()`` computes the size."""
    is64 = bool(flags & 0x80)
    maskbit = bool(flags & 0x100)
    if is64:
        size = 0x18 if maskbit else 0x0E
    else:
        size = 0x14 if maskbit else 0x0A
    return is64, maskbit, size


def _msi(cfg: bytes, pos: int) -> dict[str, Any]:
    flags = u16(cfg, pos + 2)
    is64, maskbit, _ = msi_layout(flags)
    addr = u32(cfg, pos + 4)
    data_off = pos + (0x0C if is64 else 0x08)
    if is64:
        addr |= u32(cfg, pos + 8) << 32
    out: dict[str, Any] = {
        "enabled": bool(flags & 1),
        "vectors_capable": 1 << ((flags >> 1) & 7),
        "vectors_enabled": 1 << ((flags >> 4) & 7),
        "address_64bit": is64,
        "per_vector_masking": maskbit,
        "address": addr,
        "data": u16(cfg, data_off),
    }
    if maskbit:
        out["mask"] = u32(cfg, pos + (0x10 if is64 else 0x0C))
        out["pending"] = u32(cfg, pos + (0x14 if is64 else 0x10))
    return out


def _msix(cfg: bytes, pos: int) -> dict[str, Any]:
    flags = u16(cfg, pos + 2)
    table = u32(cfg, pos + 4)
    pba = u32(cfg, pos + 8)
    return {
        "enabled": bool(flags & 0x8000),
        "function_mask": bool(flags & 0x4000),
        "table_size": (flags & 0x7FF) + 1,
        "table_bar": table & 7,
        "table_offset": table & ~7,
        "pba_bar": pba & 7,
        "pba_offset": pba & ~7,
    }


def _vendor(cfg: bytes, pos: int) -> dict[str, Any]:
    length = cfg[pos + 2]
    out: dict[str, Any] = {"length": length}
    # virtio_pci_cap (virtio 1.x, 4.1.4): cap_len, cfg_type, bar, id, padding, offset, length
    if is_virtio(cfg) and length >= 16 and pos + 16 <= len(cfg):
        out["virtio"] = {
            "cfg_type": cfg[pos + 3],
            "cfg_type_name": VIRTIO_CFG_TYPES.get(cfg[pos + 3], "unknown"),
            "bar": cfg[pos + 4],
            "id": cfg[pos + 5],
            "offset": u32(cfg, pos + 8),
            "length": u32(cfg, pos + 12),
        }
        if cfg[pos + 3] == 2 and length >= 20:
            out["virtio"]["notify_off_multiplier"] = u32(cfg, pos + 16)
    return out


def is_virtio(cfg: bytes) -> bool:
    """A virtio PCI function: Red Hat's vendor id and a device id in 0x1000-0x107f."""
    return u16(cfg, 0) == 0x1AF4 and 0x1000 <= u16(cfg, 2) <= 0x107F


def _ssvid(cfg: bytes, pos: int) -> dict[str, Any]:
    return {"subsystem_vendor_id": u16(cfg, pos + 4), "subsystem_id": u16(cfg, pos + 6)}


def _slotid(cfg: bytes, pos: int) -> dict[str, Any]:
    esr = cfg[pos + 2]
    return {"slots": esr & 0x1F, "first": bool(esr & 0x20), "chassis": cfg[pos + 3]}


def _sata(cfg: bytes, pos: int) -> dict[str, Any]:
    rev = cfg[pos + 2]
    bar = u32(cfg, pos + 4)
    return {
        "revision": f"{rev >> 4}.{rev & 0xF}",
        "bar_location": bar & 0xF,
        "bar_offset": (bar >> 4) & 0xFFFFF,
    }


_DECODERS = {
    CAP_PM: _pm,
    CAP_MSI: _msi,
    CAP_MSIX: _msix,
    CAP_VNDR: _vendor,
    CAP_SSVID: _ssvid,
    CAP_SLOTID: _slotid,
    CAP_SATA: _sata,
}


def register(cap_id: int):
    """Add a decoder for a capability id (used by :mod:`.express`)."""

    def deco(fn):
        _DECODERS[cap_id] = fn
        return fn

    return deco


def find(cfg: bytes, cap_id: int) -> int | None:
    """The offset of the first capability with ``cap_id``."""
    for pos, cid in walk(cfg):
        if cid == cap_id:
            return pos
    return None
