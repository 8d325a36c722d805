"""The PCI configuration header: identity, command and status bits, BARs, bridge windows.

Offsets and bit names follow Linux's ``pci_regs.h`` (QEMU includes the same
header); how an address is read out of a BAR and whether QEMU maps it follows
``pci_bar_address()`` in hw/pci/pci.c.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION_ID = 0x08
CLASS_PROG = 0x09
CLASS_DEVICE = 0x0A
CACHE_LINE_SIZE = 0x0C
LATENCY_TIMER = 0x0D
HEADER_TYPE = 0x0E
BIST = 0x0F
BAR0 = 0x10
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
ROM_ADDRESS = 0x30
CAPABILITY_LIST = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D
MIN_GNT = 0x3E
MAX_LAT = 0x3F
# type 1 (PCI-to-PCI bridge)
PRIMARY_BUS = 0x18
SECONDARY_BUS = 0x19
SUBORDINATE_BUS = 0x1A
SEC_LATENCY_TIMER = 0x1B
IO_BASE = 0x1C
IO_LIMIT = 0x1D
SEC_STATUS = 0x1E
MEMORY_BASE = 0x20
MEMORY_LIMIT = 0x22
PREF_MEMORY_BASE = 0x24
PREF_MEMORY_LIMIT = 0x26
PREF_BASE_UPPER32 = 0x28
PREF_LIMIT_UPPER32 = 0x2C
IO_BASE_UPPER16 = 0x30
IO_LIMIT_UPPER16 = 0x32
ROM_ADDRESS1 = 0x38
BRIDGE_CONTROL = 0x3E

HEADER_TYPE_NORMAL = 0
HEADER_TYPE_BRIDGE = 1
HEADER_TYPE_CARDBUS = 2
HEADER_TYPE_MULTI_FUNCTION = 0x80

STATUS_CAP_LIST = 0x10

#: PCI_COMMAND bits, low to high, as lspci names them.
COMMAND_BITS = [
    (0x001, "I/O"),
    (0x002, "Mem"),
    (0x004, "BusMaster"),
    (0x008, "SpecCycle"),
    (0x010, "MemWINV"),
    (0x020, "VGASnoop"),
    (0x040, "ParErr"),
    (0x080, "Stepping"),
    (0x100, "SERR"),
    (0x200, "FastB2B"),
    (0x400, "DisINTx"),
]
#: PCI_STATUS bits (DEVSEL timing, bits 9-10, is separate).
STATUS_BITS = [
    (0x0008, "INTx"),
    (0x0010, "Cap"),
    (0x0020, "66MHz"),
    (0x0040, "UDF"),
    (0x0080, "FastB2B"),
    (0x0100, "ParErr"),
    (0x0800, ">TAbort"),
    (0x1000, "<TAbort"),
    (0x2000, "<MAbort"),
    (0x4000, ">SERR"),
    (0x8000, "<PERR"),
]
DEVSEL = {0: "fast", 1: "medium", 2: "slow", 3: "??"}
BRIDGE_CONTROL_BITS = [
    (0x001, "Parity"),
    (0x002, "SERR"),
    (0x004, "NoISA"),
    (0x008, "VGA"),
    (0x010, "VGA16"),
    (0x020, "MAbort"),
    (0x040, ">Reset"),
    (0x080, "FastB2B"),
]

#: QEMU's PCI_BAR_UNMAPPED: the value ``info pci`` treats as "not mapped".
BAR_UNMAPPED = (1 << 64) - 1


def u8(cfg: bytes, off: int) -> int:
    return cfg[off]


def u16(cfg: bytes, off: int) -> int:
    return struct.unpack_from("<H", cfg, off)[0]


def u32(cfg: bytes, off: int) -> int:
    return struct.unpack_from("<I", cfg, off)[0]


def u64(cfg: bytes, off: int) -> int:
    return struct.unpack_from("<Q", cfg, off)[0]


def header_type(cfg: bytes) -> int:
    """The layout (0 normal, 1 bridge, 2 CardBus), without the multi-function bit."""
    return cfg[HEADER_TYPE] & 0x7F


def flag_names(value: int, bits: list[tuple[int, str]]) -> list[str]:
    """The names of the bits set in ``value``."""
    return [name for bit, name in bits if value & bit]


def flag_text(value: int, bits: list[tuple[int, str]]) -> str:
    """lspci's ``Name+ Other-`` rendering."""
    return " ".join(f"{name}{'+' if value & bit else '-'}" for bit, name in bits)


@dataclass
class Bar:
    """One base address register as the guest programmed it."""

    index: int
    #: ``io``, ``mem32`` or ``mem64`` (``rom`` for the expansion ROM)
    kind: str
    prefetchable: bool
    #: the programmed address (type bits removed)
    address: int
    #: whether QEMU maps it: decoding enabled in COMMAND, address not 0 or all-ones,
    #: ROM enable bit for the expansion ROM
    mapped: bool
    #: the region's size when the stream says it (a RAM block behind the BAR), else None
    size: int | None = None
    #: the ROM BAR's enable bit
    enabled: bool | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "kind": self.kind,
            "prefetchable": self.prefetchable,
            "address": self.address,
            "mapped": self.mapped,
        }
        if self.size is not None:
            out["size"] = self.size
        if self.enabled is not None:
            out["enabled"] = self.enabled
        return out


def bars(cfg: bytes) -> list[Bar]:
    """The BARs of a type 0 (six) or type 1 (two) header that hold a value.

    A BAR QEMU did not register reads as zero, and so does a registered
    32-bit memory BAR the guest never programmed: neither is listed.  The
    expansion ROM is not included (see :func:`rom_bar`).
    """
    htype = header_type(cfg)
    count = 6 if htype == HEADER_TYPE_NORMAL else 2 if htype == HEADER_TYPE_BRIDGE else 0
    cmd = u16(cfg, COMMAND)
    out = []
    i = 0
    while i < count:
        off = BAR0 + 4 * i
        low = u32(cfg, off)
        if low & 1:
            addr = low & 0xFFFFFFFC
            mapped = bool(cmd & 0x1) and addr != 0 and addr != 0xFFFFFFFC
            if low != 0:
                out.append(Bar(i, "io", False, addr, mapped))
            i += 1
            continue
        mem_type = (low >> 1) & 3
        prefetch = bool(low & 0x8)
        if mem_type == 2 and i + 1 < count:
            addr = (low & 0xFFFFFFF0) | (u32(cfg, off + 4) << 32)
            if low != 0 or addr != 0:
                mapped = bool(cmd & 0x2) and addr not in (0, 0xFFFFFFFFFFFFFFF0)
                out.append(Bar(i, "mem64", prefetch, addr, mapped))
            i += 2
            continue
        addr = low & 0xFFFFFFF0
        if low != 0:
            mapped = bool(cmd & 0x2) and addr not in (0, 0xFFFFFFF0)
            out.append(Bar(i, "mem32", prefetch, addr, mapped))
        i += 1
    return out


def rom_bar(cfg: bytes, size: int | None = None) -> Bar | None:
    """The expansion ROM BAR (index 6, as ``info pci`` numbers it), if it holds a value
    or its size is known (a ROM RAM block exists for the device)."""
    htype = header_type(cfg)
    if htype == HEADER_TYPE_CARDBUS:
        return None
    reg = ROM_ADDRESS1 if htype == HEADER_TYPE_BRIDGE else ROM_ADDRESS
    val = u32(cfg, reg)
    if val == 0 and size is None:
        return None
    addr = val & 0xFFFFF800
    enabled = bool(val & 1)
    cmd = u16(cfg, COMMAND)
    mapped = bool(cmd & 0x2) and enabled and addr not in (0, 0xFFFFF800)
    return Bar(6, "mem32", False, addr, mapped, size, enabled)


def bridge_windows(cfg: bytes) -> dict[str, dict[str, int]]:
    """The I/O, memory and prefetchable windows of a bridge, as QEMU computes them
    (``pci_bridge_get_base``/``pci_bridge_get_limit``); base > limit means closed."""
    io_base = cfg[IO_BASE]
    io_limit = cfg[IO_LIMIT]
    iob = (io_base & 0xF0) << 8
    iol = ((io_limit & 0xF0) << 8) | 0xFFF
    if io_base & 0x0F == 0x01:  # 32-bit I/O addressing
        iob |= u16(cfg, IO_BASE_UPPER16) << 16
        iol |= u16(cfg, IO_LIMIT_UPPER16) << 16
    memb = (u16(cfg, MEMORY_BASE) & 0xFFF0) << 16
    meml = ((u16(cfg, MEMORY_LIMIT) & 0xFFF0) << 16) | 0xFFFFF
    pb = u16(cfg, PREF_MEMORY_BASE)
    pl = u16(cfg, PREF_MEMORY_LIMIT)
    prefb = (pb & 0xFFF0) << 16
    prefl = ((pl & 0xFFF0) << 16) | 0xFFFFF
    if pb & 0x0F == 0x01:  # 64-bit prefetchable
        prefb |= u32(cfg, PREF_BASE_UPPER32) << 32
        prefl |= u32(cfg, PREF_LIMIT_UPPER32) << 32
    return {
        "io": {"base": iob, "limit": iol},
        "memory": {"base": memb, "limit": meml},
        "prefetchable": {"base": prefb, "limit": prefl},
    }


def bridge_buses(cfg: bytes) -> dict[str, int]:
    return {
        "primary": cfg[PRIMARY_BUS],
        "secondary": cfg[SECONDARY_BUS],
        "subordinate": cfg[SUBORDINATE_BUS],
    }
