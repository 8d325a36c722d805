"""Boards whose RAM sits in one window: Arm/RISC-V/LoongArch ``virt``, pseries, s390-ccw.

Each board maps its RAM (one block, or NUMA backends concatenated in node
order) at a fixed base from its memory map, its flash and boot ROMs at fixed
addresses sized by their blocks, and device memory (DIMMs) at the 1 GiB
boundary above RAM (hw/arm/virt.c, hw/riscv/virt.c, hw/ppc/spapr.c,
hw/s390x/s390-virtio-ccw.c, hw/loongarch/virt.c).
"""

from __future__ import annotations

from . import acpi
from .model import Context, GiB, MiB, Painter, Range
from .ram import machine_ram, paint_device_memory, paint_ram
from .x86 import paint_pci_blocks


def _round_gib(x: int) -> int:
    return -(-x // GiB) * GiB


def _simple(
    ctx: Context,
    painter: Painter,
    board: str,
    ram_ids: tuple[str, ...],
    firmware: tuple[str, ...],
    base: int,
    roms: list[tuple[str, int, str]],
) -> None:
    srat = acpi.memory_affinity(ctx.block_bytes(acpi.TABLES_BLOCK))
    mram = machine_ram(ctx, ram_ids, firmware, srat=srat, gpa_to_offset=lambda gpa: gpa - base)
    size = mram.size(ctx)
    paint_ram(painter, ctx, mram, 0, size, base, f"{mram.source}; {board}: RAM at {base:#x}")
    for name, gpa, kind in roms:
        if name in ctx.blocks:
            painter.paint(Range(gpa, ctx.blocks[name], name, 0, f"{board}: {name}", kind))
    paint_pci_blocks(ctx, painter)
    if mram.device:
        hot = [e for e in srat or () if e.hotpluggable]
        if hot:
            dbase = min(e.base for e in hot)
            why = f"ACPI SRAT hotpluggable range at {dbase:#x}"
        else:
            dbase = _round_gib(base + size)
            why = f"{board}: 1 GiB boundary above RAM"
        paint_device_memory(painter, ctx, mram.device, dbase, why)


def arm_virt(ctx: Context, painter: Painter) -> None:
    """hw/arm/virt.c: flash at 0 and 64 MiB, RAM from 1 GiB."""
    _simple(
        ctx,
        painter,
        "arm virt",
        ("mach-virt.ram",),
        ("virt.flash*",),
        GiB,
        [("virt.flash0", 0, "romd"), ("virt.flash1", 64 * MiB, "romd")],
    )


def riscv_virt(ctx: Context, painter: Painter) -> None:
    """hw/riscv/virt.c: boot ROM at 0x1000, flash at 0x20000000, RAM from 0x80000000."""
    flash0 = ctx.blocks.get("virt.flash0", 32 * MiB)
    _simple(
        ctx,
        painter,
        "riscv virt",
        ("riscv_virt_board.ram",),
        ("virt.flash*", "riscv_virt_board.mrom"),
        0x80000000,
        [
            ("riscv_virt_board.mrom", 0x1000, "rom"),
            ("virt.flash0", 0x20000000, "romd"),
            ("virt.flash1", 0x20000000 + flash0, "romd"),
        ],
    )


def pseries(ctx: Context, painter: Painter) -> None:
    """hw/ppc/spapr.c: RAM from 0, device memory at the 1 GiB boundary above it."""
    _simple(ctx, painter, "pseries", ("ppc_spapr.ram",), (), 0, [])


def s390_ccw(ctx: Context, painter: Painter) -> None:
    """hw/s390x/s390-virtio-ccw.c: RAM from 0, device memory at the 1 GiB boundary."""
    _simple(ctx, painter, "s390-ccw-virtio", ("s390.ram",), (), 0, [])


def loongarch_virt(ctx: Context, painter: Painter) -> None:
    """hw/loongarch/virt.c: the first 256 MiB of RAM at 0, the rest at the high window.

    The high window is at 0x80000000 in current QEMU (0x90000000 before 8.1);
    the machine type has no version, so ACPI SRAT decides when it is there.
    """
    srat = acpi.memory_affinity(ctx.block_bytes(acpi.TABLES_BLOCK))
    low = 256 * MiB
    high = 0x80000000
    how = "loongarch virt rule: high RAM at 0x80000000"
    for e in srat or ():
        if not e.hotpluggable and e.base >= low:
            high = min(high, e.base) if how.startswith("ACPI") else e.base
            how = f"ACPI SRAT: high RAM at {high:#x}"
    mram = machine_ram(
        ctx,
        ("loongarch.ram",),
        ("virt.flash*", "loongarch.bios"),
        srat=srat,
        gpa_to_offset=lambda gpa: gpa if gpa < low else gpa - high + low,
    )
    size = mram.size(ctx)
    src = f"{mram.source}; loongarch virt: first 256 MiB at 0"
    paint_ram(painter, ctx, mram, 0, min(low, size), 0, src)
    if size > low:
        paint_ram(painter, ctx, mram, low, size - low, high, f"{mram.source}; {how}")
    for name, gpa in (("virt.flash0", 0x1C000000), ("virt.flash1", 0x1D000000)):
        if name in ctx.blocks:
            painter.paint(Range(gpa, ctx.blocks[name], name, 0, f"loongarch virt: {name}", "romd"))
    paint_pci_blocks(ctx, painter)
    if mram.device:
        paint_device_memory(
            painter, ctx, mram.device, _round_gib(high + size - low), "loongarch virt rule"
        )
