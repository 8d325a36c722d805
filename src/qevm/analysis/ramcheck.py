"""The RAM block list against the destination's blocks (ram.c, physmem.c).

On the RAM section's MEM_SIZE record QEMU's loader takes each block in turn
(``ram_load_precopy`` then ``parse_ramblock``): a block it does not have
stops the load (``Unknown ramblock``); a length other than its own is
passed to ``qemu_ram_resize``, which accepts it only for resizeable blocks
and only up to their maximum (``Size mismatch`` / ``Size too large``); with
postcopy-ram the hugepage size of a block must match, with x-ignore-shared
the guest address of a shared block.  Blocks the destination has and the
source does not send are not checked by QEMU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .problems import Problem, Report

if TYPE_CHECKING:
    from ..migration import Migration
    from ..sections.ram.blocks import RamBlock
    from ..stream import SectionRecord
    from .target import DestBlock, Destination

#: Host page size assumed for the destination (x86-64, aarch64 4K hosts).
HOST_PAGE = 4096

#: Resizeable blocks with a maximum larger than their size (hw/acpi/utils.c
#: ``acpi_add_rom_blob``); every other fw_cfg ROM blob (``/rom@...``) is
#: resizeable up to the size it was created with.
ROM_MAXIMUM = {
    "/rom@etc/acpi/tables": 0x200000,
    "/rom@etc/table-loader": 0x10000,
}


def resizeable_maximum(name: str, dest_length: int) -> int | None:
    """The maximum length of a resizeable block, or None when it is not resizeable.

    ROM blobs QEMU places in fw_cfg (``rom_add_blob``/``rom_add_file`` with a
    fw_cfg file name) get a resizeable RAM region (hw/core/loader.c
    ``rom_set_mr``) whose maximum is the blob's reserved size.
    """
    if not name.startswith("/rom@"):
        return None
    return max(ROM_MAXIMUM.get(name, 0), dest_length)


def _align(n: int, page: int) -> int:
    return -(-n // page) * page


def check_ram_blocks(mig: Migration, rec: SectionRecord, dest: Destination, report: Report) -> None:
    """Apply the MEM_SIZE checks for the blocks announced in ``rec`` (the RAM START)."""
    ram = mig.ram
    if ram is None:
        return
    announced = getattr(rec.content, "blocks", None) or list(ram.blocks)
    if dest.blocks is None:
        report.warn(
            "the destination's RAM blocks are not known (give a stream it wrote to check them)"
        )
        return
    page = max(dest.page_size or mig.page_size or HOST_PAGE, HOST_PAGE)
    for name in announced:
        block = ram.blocks.get(name)
        if block is None:
            continue
        problem = _block_problem(block, dest.blocks.get(name), page)
        if problem is not None:
            report.problems.append(problem)


def _block_problem(block: RamBlock, have: DestBlock | None, page: int) -> Problem | None:
    name = block.name
    if have is None:
        return Problem(
            "ram-block",
            f"the destination has no RAM block {name} ({block.used_length:#x} bytes)",
            section="ram",
            field=name,
            source=block.used_length,
            offset=block.offset,
            qemu=f'Unknown ramblock "{name}", cannot accept migration',
        )
    length = _align(block.used_length, page)
    if length != have.used_length:
        maximum = resizeable_maximum(name, have.used_length)
        if maximum is None:
            return Problem(
                "ram-size",
                f"RAM block {name} is {block.used_length:#x} bytes at the source and "
                f"{have.used_length:#x} at the destination (not resizeable)",
                section="ram",
                field=name,
                source=block.used_length,
                destination=have.used_length,
                offset=block.offset,
                qemu=f"Size mismatch: {name}: {length:#x} != {have.used_length:#x}: "
                "Invalid argument",
            )
        if length > maximum:
            return Problem(
                "ram-size",
                f"RAM block {name} is {block.used_length:#x} bytes at the source, more than the "
                f"destination's maximum {maximum:#x}",
                section="ram",
                field=name,
                source=block.used_length,
                destination=maximum,
                offset=block.offset,
                qemu=f"Size too large: {name}: {length:#x} > {maximum:#x}: Invalid argument",
            )
    if block.page_size is not None and have.page_size is not None:
        if block.page_size != have.page_size:
            return Problem(
                "ram-page-size",
                f"RAM block {name} has {block.page_size}-byte pages at the source and "
                f"{have.page_size} at the destination (postcopy)",
                section="ram",
                field=name,
                source=block.page_size,
                destination=have.page_size,
                offset=block.offset,
                qemu=f"Mismatched RAM page size {name} (local) {have.page_size} != "
                f"{block.page_size}",
            )
    if block.mr_addr is not None and have.mr_addr is not None and block.mr_addr != have.mr_addr:
        return Problem(
            "ram-block",
            f"shared RAM block {name} is at guest address {block.mr_addr:#x} at the source and "
            f"{have.mr_addr:#x} at the destination (x-ignore-shared)",
            section="ram",
            field=name,
            source=block.mr_addr,
            destination=have.mr_addr,
            offset=block.offset,
            qemu=f"Mismatched GPAs for block {name} {block.mr_addr}!= {have.mr_addr}",
        )
    return None
