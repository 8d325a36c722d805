"""PCI configuration space from the decoded device state: BARs, ROM BARs, PAM, SMRAM.

Every PCI device migrates its configuration space (``vmstate_pci_device``:
a field of type ``pci config``), so the addresses the guest programmed into
its BARs are in the stream.  The chipset's PAM registers (i440FX 0x59-0x5f,
Q35 MCH 0x90-0x96) say how the 0xc0000-0xfffff window reads.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from ...vmstate.values import StateNode
from .model import Context

PCI_COMMAND = 0x04
PCI_COMMAND_MEMORY = 0x2
PCI_HEADER_TYPE = 0x0E
PCI_BAR0 = 0x10
PCI_ROM_ADDRESS = 0x30
PCI_ROM_ADDRESS1 = 0x38  # PCI-to-PCI bridges
PCI_ROM_ENABLE = 0x1

#: RAM blocks that a PCI device maps through one of its BARs: block name -> BAR.
#: (QEMU's std VGA, secondary-vga, bochs-display and cirrus put their VRAM in BAR 0.)
VRAM_BARS = {"vga.vram": 0, "cirrus_vga.vram": 0, "qxl.vgavram": 0, "vmsvga.vram": 1}


def config_space(state: StateNode | None) -> bytes | None:
    """The ``pci config`` field of a device's state, wherever it is nested."""
    if state is None:
        return None
    for node in state.walk():
        for f in node.fields:
            if f.desc.type == "pci config":
                value = node.get(f.desc.name)
                if isinstance(value, (bytes, bytearray)) and len(value) >= 64:
                    return bytes(value)
    return None


def device_config(ctx: Context, pci_addr: str) -> bytes | None:
    """The config space of the device whose sections are named ``<pci_addr>/...``."""
    for d in ctx.mig.devices(f"{pci_addr}/*"):
        cfg = config_space(d.state)
        if cfg is not None:
            return cfg
    return None


def memory_enabled(cfg: bytes) -> bool:
    return bool(struct.unpack_from("<H", cfg, PCI_COMMAND)[0] & PCI_COMMAND_MEMORY)


def bar_address(cfg: bytes, bar: int) -> int | None:
    """The memory address programmed into BAR ``bar`` (None: I/O BAR, unset or disabled)."""
    if not memory_enabled(cfg):
        return None
    off = PCI_BAR0 + 4 * bar
    (low,) = struct.unpack_from("<I", cfg, off)
    if low & 1:
        return None
    addr = low & ~0xF
    if (low >> 1) & 3 == 2:  # 64-bit BAR
        addr |= struct.unpack_from("<I", cfg, off + 4)[0] << 32
    if addr == 0 or addr == 0xFFFFFFF0 or addr == 0xFFFFFFFFFFFFFFF0:
        return None
    return addr


def rom_address(cfg: bytes) -> int | None:
    """The address of an enabled expansion ROM BAR."""
    if not memory_enabled(cfg):
        return None
    reg = PCI_ROM_ADDRESS1 if cfg[PCI_HEADER_TYPE] & 0x7F == 1 else PCI_ROM_ADDRESS
    (val,) = struct.unpack_from("<I", cfg, reg)
    if not val & PCI_ROM_ENABLE:
        return None
    addr = val & ~0x7FF
    return addr or None


def pam_segments(regs: bytes) -> Iterator[tuple[int, int, int]]:
    """``(start, size, mode)`` of the 13 PAM segments from the 7 PAM registers.

    Segment 0 is 0xf0000-0xfffff (PAM0 high nibble); segments 1..12 are the
    16 KiB pieces of 0xc0000-0xeffff, low nibble first.  Mode 0 sends accesses
    to PCI; modes 1-3 read RAM (QEMU aliases RAM for read-only, write-only and
    read-write alike).
    """
    yield 0xF0000, 0x10000, (regs[0] >> 4) & 3
    for i in range(1, 13):
        reg = regs[(i + 1) // 2]
        mode = (reg >> 4) & 3 if i % 2 == 0 else reg & 3
        yield 0xC0000 + (i - 1) * 0x4000, 0x4000, mode
