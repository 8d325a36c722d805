"""x86 machines: pc (i440FX), q35, isapc, microvm.

RAM is split at ``below_4g_mem_size``: the first part from 0, the rest from
4 GiB.  The stream records the split in the RTC's CMOS, which QEMU fills at
machine init (pc_cmos_init: 0x34/0x35 = RAM between 16 MiB and 4 GiB in
64 KiB units, 0x30/0x31 = KiB above 1 MiB when that is less, 0x5b-0x5d = RAM
above 4 GiB in 64 KiB units), so ``max-ram-below-4g`` and NUMA splits come
out right.  Without CMOS, QEMU's rules per machine type apply (pc_piix.c,
pc_q35.c, microvm.c).

Below 1 MiB: 0xa0000-0xbffff is VGA MMIO when a VGA device exists (and SMRAM
is not open); 0xc0000-0xfffff reads RAM or the PCI address space per PAM
segment (pc.rom at 0xc0000 and the ISA BIOS alias below 1 MiB live there);
isapc and microvm have no PAM and always show pc.rom and the ISA BIOS.  The
BIOS (or the pflash units) end at 4 GiB; device RAM is mapped where the guest
programmed its PCI BARs; device memory (DIMMs) starts at the 1 GiB boundary
above RAM, or where ACPI SRAT's hotpluggable range says.
"""

from __future__ import annotations

import re

from . import acpi, pci
from .model import Context, GiB, KiB, MiB, Painter, Range
from .ram import machine_ram, paint_device_memory, paint_ram

FOUR_G = 4 * GiB
#: Blocks that are firmware, never memory backends.
FIRMWARE = ("pc.bios", "pc.rom", "isa-bios", "system.flash*", "microvm.ram", "pc.ram")
_PCI_BLOCK = re.compile(r"^([0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])/(.+)$")
_VGA = re.compile(r"(^|/)(vga|cirrus_vga|qxl|vmware_vga|isa-vga|ati-vga)$|vga$")
SMRAM_D_OPEN = 0x40


def _version(machine: str) -> tuple[int, int] | None:
    m = re.search(r"-(\d+)\.(\d+)$", machine)
    return (int(m[1]), int(m[2])) if m else None


def _cmos_split(ctx: Context) -> tuple[int, int, str] | None:
    """``(below, above, source)`` from the CMOS memory-size bytes."""
    state = ctx.state("mc146818rtc")
    cmos = state.get("cmos_data") if state is not None else None
    if not isinstance(cmos, (bytes, bytearray)) or len(cmos) < 0x5E:
        return None
    above = int.from_bytes(cmos[0x5B:0x5E], "little") * 64 * KiB
    hi = cmos[0x34] | cmos[0x35] << 8
    if hi:
        below = hi * 64 * KiB + 16 * MiB
        how = "0x34/0x35"
    else:
        ext = cmos[0x30] | cmos[0x31] << 8
        if not ext:
            return None
        below = ext * KiB + MiB
        how = "0x30/0x31"
    return below, above, f"CMOS {how} and 0x5b-0x5d (below 4G {below:#x}, above {above:#x})"


def _rule_split(kind: str, machine: str, ram_size: int) -> tuple[int, str]:
    """QEMU's default split for ``ram_size`` (no max-ram-below-4g)."""
    ver = _version(machine)
    aligned = ver is None or ver >= (2, 0)  # pc-*-1.7 and older: no gigabyte_align
    if kind == "q35":
        if ram_size >= 0xB0000000:
            return (0x80000000 if aligned else 0xB0000000), "pc_q35.c rule (RAM >= 2.75 GiB)"
        return ram_size, "pc_q35.c rule"
    if kind == "microvm":
        limit = 0xC0000000
        return min(ram_size, limit), "microvm.c rule"
    if kind == "pc" and ram_size >= 0xE0000000:
        return (0xC0000000 if aligned else 0xE0000000), "pc_piix.c rule (RAM >= 3.5 GiB)"
    return ram_size, f"{kind} rule"


def _has_vga(ctx: Context) -> bool:
    return any(_VGA.search(d.name) for d in ctx.mig.devices())


def layout(ctx: Context, painter: Painter, kind: str) -> None:
    """Paint the guest-physical layout of an x86 machine of ``kind``."""
    blocks = ctx.blocks
    split = _cmos_split(ctx)
    srat = acpi.memory_affinity(ctx.block_bytes(acpi.TABLES_BLOCK))
    below0 = split[0] if split else None

    def to_offset(gpa: int) -> int:
        return gpa if gpa < FOUR_G or below0 is None else gpa - FOUR_G + below0

    mram = machine_ram(
        ctx,
        ("pc.ram", "microvm.ram"),
        FIRMWARE,
        expected=split[0] + split[1] if split else None,
        srat=srat,
        gpa_to_offset=to_offset,
    )
    ram_size = mram.size(ctx)
    if split and split[0] + split[1] == ram_size:
        below, above, how = split
    else:
        below, how = _rule_split(kind, ctx.machine, ram_size)
        above = ram_size - below
        big = {"q35": 0xB0000000, "pc": 0xE0000000}.get(kind)
        if big is not None and ram_size >= big and _version(ctx.machine) is None:
            ctx.guess(
                f"no CMOS memory size and no machine type version: RAM split at {below:#x} "
                "as machine types 2.0 and later do (1.7 and older split higher)"
            )
        if split:
            ctx.notes.append(
                f"CMOS says {split[0] + split[1]:#x} bytes of RAM but the RAM blocks have "
                f"{ram_size:#x}; used QEMU's rule instead"
            )
    src = f"{mram.source}; {how}"
    paint_ram(painter, ctx, mram, 0, below, 0, src)
    paint_ram(painter, ctx, mram, below, above, FOUR_G, src)

    chipset = None
    pam_off = smram_off = 0
    if kind == "pc":
        chipset, pam_off, smram_off = pci.config_space(ctx.state("*/I440FX")), 0x59, 0x72
    elif kind == "q35":
        chipset, pam_off, smram_off = pci.config_space(ctx.state("*/mch")), 0x90, 0x9D
    smram_open = bool(chipset and chipset[smram_off] & SMRAM_D_OPEN)
    if _has_vga(ctx) and not smram_open:
        painter.cut(0xA0000, 0x20000)

    # What the PCI address space (or, without PCI, system memory at priority 1)
    # has below 1 MiB: pc.rom and the ISA BIOS.
    low: list[Range] = []
    if "pc.rom" in blocks:
        low.append(Range(0xC0000, blocks["pc.rom"], "pc.rom", 0, "pc.rom at 0xc0000", "rom"))
    bios_name = "pc.bios" if "pc.bios" in blocks else None
    flashes = sorted(n for n in blocks if re.fullmatch(r"system\.flash\d+", n))
    if "isa-bios" in blocks:
        size = blocks["isa-bios"]
        low.append(Range(MiB - size, size, "isa-bios", 0, "isa-bios below 1 MiB", "rom"))
    elif bios_name or flashes:
        top = bios_name or flashes[0]
        isa = min(blocks[top], 128 * KiB)
        low.append(
            Range(
                MiB - isa,
                isa,
                top,
                blocks[top] - isa,
                f"isa-bios: the last {isa // KiB} KiB of {top} below 1 MiB",
                "rom",
            )
        )
    if chipset is not None:
        regs = chipset[pam_off : pam_off + 7]
        for start, size, mode in pci.pam_segments(regs):
            if mode == 0:
                for r in low:
                    part = painter.clip(r, start, size)
                    if part is not None:
                        painter.paint(
                            Range(
                                part.gpa,
                                part.size,
                                part.block,
                                part.offset,
                                f"{part.source} (PAM: PCI)",
                                part.kind,
                            )
                        )
            else:
                # RAM shows here whatever PCI has; say that PAM decided it
                for r in list(painter.ranges()):
                    part = painter.clip(r, start, size)
                    if part is not None and part.block in mram.blocks:
                        painter.paint(
                            Range(
                                part.gpa,
                                part.size,
                                part.block,
                                part.offset,
                                f"{part.source}; PAM mode {mode}: RAM",
                                "rom" if mode == 1 else "ram",
                            )
                        )
    else:
        for r in low:
            painter.paint(r)

    if bios_name:
        size = blocks[bios_name]
        painter.paint(
            Range(FOUR_G - size, size, bios_name, 0, "BIOS ends at 4 GiB (block size)", "rom")
        )
    top = FOUR_G
    for name in flashes:
        size = blocks[name]
        top -= size
        painter.paint(Range(top, size, name, 0, "pflash units end at 4 GiB", "romd"))

    paint_pci_blocks(ctx, painter)

    if mram.device:
        hot = [e for e in srat or () if e.hotpluggable]
        if hot:
            base = min(e.base for e in hot)
            why = f"ACPI SRAT hotpluggable range at {base:#x}"
        else:
            base = -(-(FOUR_G + above) // GiB) * GiB
            why = "pc.c rule: 1 GiB boundary above RAM"
        paint_device_memory(painter, ctx, mram.device, base, why)


def paint_pci_blocks(ctx: Context, painter: Painter) -> None:
    """Map device RAM and option ROMs where the guest programmed the device's BARs."""
    for name, size in ctx.blocks.items():
        m = _PCI_BLOCK.match(name)
        if not m:
            continue
        cfg = pci.device_config(ctx, m[1])
        if cfg is None:
            continue
        leaf = m[2].rsplit("/", 1)[-1]
        if leaf in pci.VRAM_BARS:
            bar = pci.VRAM_BARS[leaf]
            addr = pci.bar_address(cfg, bar)
            if addr is not None:
                painter.paint(
                    Range(addr, size, name, 0, f"PCI BAR{bar} of {m[1]} (decoded config space)")
                )
        elif leaf.endswith(".rom"):
            addr = pci.rom_address(cfg)
            if addr is not None:
                painter.paint(Range(addr, size, name, 0, f"PCI ROM BAR of {m[1]} (enabled)", "rom"))
