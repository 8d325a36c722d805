"""Guest-physical memory as an image: an ELF64 core (like QEMU's ``dump-guest-memory``),
a flat raw image, or makedumpfile's kdump format.

:func:`write_memory` writes an image of a stream opened with its page index
(``qevm.open(..., index_ram=True)``): the layout (:func:`~qevm.views.memmap.layout`)
is known before any byte is copied, and only the parts of blocks that are
mapped are copied, a run of pages at a time from the mapped input.  A stream
that can be read only once (a pipe) is written with
:class:`~.staging.StreamedImage` instead, which places the pages as they pass.

The CPU notes, the ELF machine and the byte order are those QEMU writes
(:mod:`.notes`); the ELF and kdump images carry the kernel's VMCOREINFO when
it is found and checked (:mod:`.vmcoreinfo`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..ramio import copy_block_range
from ..views.memmap import MemoryMap, layout
from ..writebehind import WriteBehind
from .elf import ElfPlan, Target, elf_plan
from .formats import KDUMP_FORMATS, MEMORY_FORMATS
from .notes import EM_386, EM_AARCH64, target_for

if TYPE_CHECKING:
    from ..migration import Migration
    from .scan import Scanner

#: Reads ``length`` bytes of a RAM block from an offset.
BlockReader = Callable[[str, int, int], bytes]


@dataclass
class ImageResult:
    """What was written (:func:`write_memory`, :meth:`.staging.StreamedImage.finish`)."""

    memmap: MemoryMap
    format: str
    #: bytes of guest memory the ranges cover
    covered: int
    warnings: list[str]
    #: the kernel's VMCOREINFO written as a note (:class:`qevm.export.vmcoreinfo.VmcoreInfo`)
    vmcoreinfo: Any = None
    #: what the kdump writer counted (:class:`qevm.export.kdump.KdumpResult`)
    kdump: Any = None


def check_format(fmt: str) -> None:
    """Refuse an image format qevm does not write."""
    if fmt not in MEMORY_FORMATS:
        raise UsageError(f"unknown memory image format {fmt!r} ({', '.join(MEMORY_FORMATS)})")


def image_target(
    mig: Migration, mm: MemoryMap, read: BlockReader, scan: Scanner, vmcoreinfo: bool = True
) -> tuple[Target, Any, list[str]]:
    """ELF machine, byte order and notes: the CPUs' (:mod:`.notes`), then the kernel's
    VMCOREINFO (:class:`~.vmcoreinfo.VmcoreInfo` or None), and warnings.

    ``read`` reads RAM blocks, ``scan`` searches them (:mod:`.scan`);
    ``vmcoreinfo=False`` leaves the note out.
    """
    target, warnings = target_for(mig)
    if not vmcoreinfo:
        return target, None, warnings
    from .vmcoreinfo import recover

    info, more = recover(mig, mm, read, scan, target.endian)
    if info is not None:
        # dump.c writes the guest's note after every CPU note
        target = Target(target.machine, target.endian, target.notes + info.note)
    return target, info, warnings + more


def plan_elf(
    mig: Migration, mm: MemoryMap, vmcoreinfo: bool = True
) -> tuple[ElfPlan, Any, list[str]]:
    """Where everything of ``mig``'s ELF core goes (read from its page index), with the
    VMCOREINFO found and the warnings: what :func:`write_memory` writes, and what
    ``qevm mount`` serves as ``memory.elf``."""
    from .scan import index_scanner

    index = mig.page_index
    target, info, warnings = image_target(mig, mm, index.read, index_scanner(index), vmcoreinfo)
    sizes = {b.name: b.used_length for b in mig.ram_blocks}
    return elf_plan(mm.ranges, target, sizes), info, warnings


def write_memory(
    mig: Migration,
    path: str | os.PathLike[str],
    fmt: str = "elf",
    *,
    overrides: Any = None,
    vmcoreinfo: bool = True,
) -> ImageResult:
    """Write the guest-physical memory of ``mig`` (opened with ``index_ram=True``) to
    ``path`` as ``fmt``: ``elf``, ``raw`` or one of the kdump formats
    (:data:`~.formats.KDUMP_FORMATS`).

    ``overrides`` are ``--map`` items for the layout; ``vmcoreinfo=False``
    does not look for the kernel's VMCOREINFO.
    """
    check_format(fmt)
    mm = layout(mig, overrides)
    covered = sum(r.size for r in mm.ranges)
    index = mig.page_index
    if fmt in KDUMP_FORMATS:
        from .scan import index_scanner

        target, info, warnings = image_target(mig, mm, index.read, index_scanner(index), vmcoreinfo)
        kd = write_kdump_image(path, fmt, mig, mm, target, info, index.read)
        return ImageResult(mm, fmt, covered, warnings, info, kd)
    info = None
    warnings: list[str] = []
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if fmt == "raw":
            os.ftruncate(fd, max((r.end for r in mm.ranges), default=0))
            _copy_ranges(mig, fd, ((r.block, r.offset, r.size, r.gpa) for r in mm.ranges))
        else:
            plan, info, warnings = plan_elf(mig, mm, vmcoreinfo)
            os.ftruncate(fd, plan.size)
            os.pwrite(fd, plan.headers, 0)
            os.pwrite(fd, plan.notes, plan.note_offset)
            jobs = (
                (b, s, e - s, plan.areas[b] + s)
                for b, spans in plan.extents.items()
                for s, e in spans
            )
            _copy_ranges(mig, fd, jobs)
    finally:
        os.close(fd)
    return ImageResult(mm, fmt, covered, warnings, info)


def _copy_ranges(mig: Migration, fd: int, jobs: Iterator[tuple[str, int, int, int]]) -> None:
    """Copy ``(block, start, length, file offset)`` ranges from the page index to ``fd``."""
    index = mig.page_index
    wb = WriteBehind()
    try:
        for block, start, length, dest in jobs:
            copy_block_range(index, block, start, length, fd, dest, wb)
        wb.close()
    finally:
        wb.abort()


def write_kdump_image(
    path: str | os.PathLike[str],
    fmt: str,
    mig: Migration,
    mm: MemoryMap,
    target: Target,
    info: Any,
    read: BlockReader,
) -> Any:
    """Write a kdump image of ``mm``'s ranges, reading RAM blocks with ``read``; the
    :class:`~.kdump.KdumpResult`."""
    from ..views.guestmem import GuestMemory
    from .kdump import write_kdump

    if target.machine == EM_386:  # QEMU writes the 32-bit header layout
        raise UsageError("kdump output of a 32-bit x86 guest is not supported (use elf)")
    # the kernel's page size; without it QEMU's choice: the largest the
    # architecture has on aarch64 (64 KiB), the target page elsewhere
    aarch64 = target.machine == EM_AARCH64
    ps = info.page_size if info is not None else 65536 if aarch64 else mig.page_size
    if info is not None:
        phys_base = info.phys_base(target.machine)
    else:  # QEMU: aarch64's lowest RAM address, else 0
        ram = [r.gpa for r in mm.ranges if r.kind == "ram"]
        phys_base = min(ram) if aarch64 and ram else 0
    mem = GuestMemory(mm, read)
    ncpus = len({d.instance_id for d in mig.devices("cpu")}) or 1
    with open(path, "wb") as out:
        return write_kdump(
            out,
            fmt,
            ranges=mm.ranges,
            read_phys=mem.read_filled,
            page_size=ps,
            machine=target.machine,
            endian=target.endian,
            ncpus=ncpus,
            notes=target.notes,
            vmcoreinfo=info,
            phys_base=phys_base,
        )
