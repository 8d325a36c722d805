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


#: hw/loongarch/virt.c: RAM above the first 256 MiB is mapped here (QEMU 9.0 and later) ...
LOONGARCH_HIGH = 0x80000000
#: ... and here before (QEMU 7.1 to 8.2)
LOONGARCH_HIGH_OLD = 0x90000000


def _loongarch_rule(ctx: Context) -> tuple[int, bool, str]:
    """(high RAM base, device memory 1 GiB-aligned?, why) when ACPI does not say.

    The machine type has no version; what else the stream shows tells some
    QEMU versions apart: 16 KiB target pages are QEMU 8.1 or older (8.2
    changed TARGET_PAGE_BITS to 12); version 3 of the ``cpu`` section is QEMU
    9.1 or newer.  QEMU 8.2 and 9.0 look alike and differ here.
    """
    ps = ctx.mig.page_size
    if ps == 16384:
        return LOONGARCH_HIGH_OLD, True, "16 KiB target pages: QEMU 8.1 or older"
    version = ctx.cpu_version()
    if version is not None and version >= 3:
        return LOONGARCH_HIGH, False, f"cpu section version {version}: QEMU 9.1 or newer"
    ctx.guess(
        "loongarch virt without ACPI tables: high RAM taken to be at 0x80000000 as in "
        "QEMU 9.0 and later (QEMU 8.2 and older put it at 0x90000000)"
    )
    return LOONGARCH_HIGH, False, "QEMU 9.0 rule (assumed)"


def loongarch_virt(ctx: Context, painter: Painter) -> None:
    """hw/loongarch/virt.c: the first 256 MiB of RAM at 0, the rest at the high window.

    ACPI SRAT (built whenever ACPI is on) gives the high window and the device
    memory base; without it, :func:`_loongarch_rule`.
    """
    srat = acpi.memory_affinity(ctx.block_bytes(acpi.TABLES_BLOCK))
    low = 256 * MiB
    boot = [e.base for e in srat or () if not e.hotpluggable and e.base >= low]
    hot = [e.base for e in srat or () if e.hotpluggable]
    if boot:
        high, aligned, how = min(boot), False, f"ACPI SRAT: high RAM at {min(boot):#x}"
    else:
        high, aligned, why = _loongarch_rule(ctx)
        how = f"loongarch virt: high RAM at {high:#x} ({why})"
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
        end = high + max(size - low, 0)
        if hot:
            base, why = min(hot), "ACPI SRAT hotpluggable range"
        elif aligned:
            base, why = _round_gib(end), "loongarch virt: 1 GiB boundary above RAM (QEMU 8.1-)"
        else:
            base, why = end, "loongarch virt: right above RAM"
        paint_device_memory(painter, ctx, mram.device, base, why)
