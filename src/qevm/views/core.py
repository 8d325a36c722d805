"""Guest-physical memory as an ELF64 core (like QEMU's ``dump-guest-memory``) or a raw image.

ELF layout: the ELF header, the program headers (one PT_NOTE, then one
PT_LOAD per guest-physical range with the address in ``p_paddr`` and
``p_vaddr``), the notes, then one area per RAM block that backs a range; each
PT_LOAD points into its block's area, so a block mapped twice (the ISA BIOS
alias) is stored once.  Zero pages are never written: the file is sparse.

From a file the layout is known before any byte is copied and only mapped
parts of blocks are written (vectored copies from the mapped input).  From a
pipe, every block is written to its area as its pages go by (QEMU may send a
page again), since the layout depends on device state that comes after RAM;
the headers are written at the end into a reserved first MiB.

The CPU notes, the ELF machine and the byte order are those QEMU writes
(see :mod:`.notes`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import UsageError
from ..fileio import copy_file_sparse
from ..ramio import Piece, Placement, copy_block_range
from ..ramsink import StreamingSink
from ..writebehind import WriteBehind
from .memmap import MemoryMap, Range, layout
from .notes import Target, target_for

if TYPE_CHECKING:
    from ..migration import Migration

PT_LOAD, PT_NOTE = 1, 4
PN_XNUM = 0xFFFF
EHDR, PHDR, SHDR = 64, 56, 64
#: Header room reserved at the start of an ELF written from a pipe.
STREAM_HEADER_ROOM = 1 << 20
ALIGN = 1 << 16


def _align(x: int, a: int = ALIGN) -> int:
    return -(-x // a) * a


# -- the ELF file --------------------------------------------------------------------


def _block_extents(ranges: list[Range]) -> dict[str, list[tuple[int, int]]]:
    """Per block, the merged ``[start, end)`` offsets the ranges use."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for r in ranges:
        spans.setdefault(r.block, []).append((r.offset, r.offset + r.size))
    out = {}
    for b, lst in spans.items():
        lst.sort()
        merged = [lst[0]]
        for s, e in lst[1:]:
            if s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        out[b] = merged
    return out


def header_size(nranges: int, notes: int) -> int:
    """Bytes the ELF header, program headers (and a PN_XNUM section header) and notes take."""
    n = nranges + 1
    return EHDR + PHDR * n + (SHDR if n >= PN_XNUM else 0) + notes


def elf_headers(
    target: Target, ranges: list[Range], areas: dict[str, int], note_offset: int
) -> bytes:
    """ELF header + program headers (+ section header 0 when there are >= 0xffff)."""
    e = target.endian
    n = len(ranges) + 1
    shoff = EHDR + PHDR * n if n >= PN_XNUM else 0
    ident = b"\x7fELF" + bytes((2, 1 if e == "<" else 2, 1)) + bytes(9)
    out = ident + struct.pack(
        e + "HHIQQQIHHHHHH",
        4,  # ET_CORE
        target.machine,
        1,
        0,
        EHDR,
        shoff,
        0,
        EHDR,
        PHDR,
        min(n, PN_XNUM),
        SHDR,
        1 if shoff else 0,
        0,
    )
    out += struct.pack(
        e + "IIQQQQQQ", PT_NOTE, 0, note_offset, 0, 0, len(target.notes), len(target.notes), 0
    )
    for r in ranges:
        off = areas[r.block] + r.offset
        out += struct.pack(e + "IIQQQQQQ", PT_LOAD, 0, off, r.gpa, r.gpa, r.size, r.size, 0)
    if shoff:
        out += struct.pack(e + "IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, n, 0, 0)
    return out


@dataclass
class ElfPlan:
    """Where everything of an ELF core written from the page index goes."""

    #: ELF header and program headers, at offset 0
    headers: bytes
    notes: bytes
    note_offset: int
    #: block -> file offset of its area (the block's offset 0)
    areas: dict[str, int]
    #: block -> the merged ``[start, end)`` offsets of it the ranges use
    extents: dict[str, list[tuple[int, int]]]
    size: int


def elf_plan(mig: Migration, ranges: list[Range], target: Target) -> ElfPlan:
    """The layout :func:`write_core` gives an ELF of ``ranges`` read from the page index."""
    extents = _block_extents(ranges)
    pos = _align(header_size(len(ranges), len(target.notes)))
    areas = {}
    for b in extents:
        areas[b] = pos
        pos = _align(pos + mig_block_size(mig, b))
    note_off = header_size(len(ranges), 0)
    headers = elf_headers(target, ranges, areas, note_off)
    return ElfPlan(headers, target.notes, note_off, areas, extents, pos)


def core_target(
    mig: Migration, mm: MemoryMap, read: Any, scan: Any, vmcoreinfo: bool = True
) -> tuple[Target, Any, list[str]]:
    """ELF machine, byte order and notes: the CPUs' (:mod:`.notes`), then the kernel's VMCOREINFO.

    ``read(block, offset, length)`` reads RAM blocks, ``scan`` searches them
    (:mod:`qevm.export.scan`); ``vmcoreinfo=False`` leaves the note out.
    """
    target, warnings = target_for(mig)
    if not vmcoreinfo:
        return target, None, warnings
    from ..export.vmcoreinfo import recover

    info, more = recover(mig, mm, read, scan, target.endian)
    if info is not None:
        # dump.c writes the guest's note after every CPU note
        target = Target(target.machine, target.endian, target.notes + info.note)
    return target, info, warnings + more


@dataclass
class CoreResult:
    """What :func:`write_core` wrote."""

    memmap: MemoryMap
    format: str
    #: bytes of guest memory the ranges cover
    covered: int
    warnings: list[str]
    #: the kernel's VMCOREINFO written as a note (:class:`qevm.export.vmcoreinfo.VmcoreInfo`)
    vmcoreinfo: Any = None
    #: what the kdump writer counted (:class:`qevm.export.kdump.KdumpResult`)
    kdump: Any = None


def _copy_ranges(mig: Migration, fd: int, jobs: Iterator[tuple[str, int, int, int]]) -> None:
    index = mig.page_index
    wb = WriteBehind()
    try:
        for block, start, length, dest in jobs:
            copy_block_range(index, block, start, length, fd, dest, wb)
        wb.close()
    finally:
        wb.abort()


def write_core(
    source: Migration | str | os.PathLike[str] | BinaryIO,
    path: str | os.PathLike[str],
    fmt: str = "elf",
    *,
    overrides: Any = None,
    open_args: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    vmcoreinfo: bool = True,
) -> CoreResult:
    """Write the guest-physical memory of a stream to ``path`` as ``elf``, ``raw`` or ``kdump-*``.

    ``source`` is an open :class:`~qevm.migration.Migration` (with
    ``index_ram=True``) or anything :func:`qevm.open` takes; a pipe is
    written as it is read.  ``overrides`` are ``--map`` items.  The ELF
    and kdump formats carry the kernel's VMCOREINFO when it is found and
    checked (:mod:`qevm.export.vmcoreinfo`), unless ``vmcoreinfo=False``.
    """
    from ..export.kdump import FORMATS

    if fmt not in ("elf", "raw", *FORMATS):
        raise UsageError(f"unknown core format {fmt!r} (elf, raw, {', '.join(FORMATS)})")
    from .. import open as qopen
    from ..migration import Migration
    from ..source import Source, open_source

    if isinstance(source, Migration):
        return _from_index(source, path, fmt, overrides, vmcoreinfo)
    args = dict(open_args or {})
    src = (
        source
        if isinstance(source, Source)
        else open_source(
            source, format=args.pop("format", "auto"), snapshot=args.pop("snapshot", None)
        )
    )
    if src.seekable:
        with qopen(src, index_ram=True, progress=progress, **args) as mig:
            return _from_index(mig, path, fmt, overrides, vmcoreinfo)
    return _from_pipe(src, path, fmt, overrides, args, progress, vmcoreinfo)


def _from_index(
    mig: Migration, path: Any, fmt: str, overrides: Any, vmcoreinfo: bool = True
) -> CoreResult:
    from ..export.ramread import read_range
    from ..export.scan import index_scanner

    mm = layout(mig, overrides)
    index = mig.page_index
    info = kd = None
    if fmt.startswith("kdump"):

        def read(block: str, offset: int, length: int) -> bytes:
            return read_range(index, block, offset, length)

        target, info, warnings = core_target(mig, mm, read, index_scanner(index), vmcoreinfo)
        kd = _write_kdump(path, fmt, mig, mm, target, info, read)
        return CoreResult(mm, fmt, sum(r.size for r in mm.ranges), warnings, info, kd)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if fmt == "raw":
            warnings: list[str] = []
            end = max((r.end for r in mm.ranges), default=0)
            os.ftruncate(fd, end)
            _copy_ranges(mig, fd, ((r.block, r.offset, r.size, r.gpa) for r in mm.ranges))
        else:
            target, info, warnings = core_target(
                mig, mm, index.read, index_scanner(index), vmcoreinfo
            )
            plan = elf_plan(mig, mm.ranges, target)
            os.ftruncate(fd, plan.size)
            os.pwrite(fd, plan.headers, 0)
            os.pwrite(fd, plan.notes, plan.note_offset)
            _copy_ranges(
                mig,
                fd,
                (
                    (b, s, e - s, plan.areas[b] + s)
                    for b, spans in plan.extents.items()
                    for s, e in spans
                ),
            )
    finally:
        os.close(fd)
    return CoreResult(mm, fmt, sum(r.size for r in mm.ranges), warnings, info)


def _write_kdump(
    path: Any, fmt: str, mig: Migration, mm: MemoryMap, target: Target, info: Any, read: Any
) -> Any:
    from ..export.guestmem import GuestMemory
    from ..export.kdump import write_kdump

    if target.machine == 3:  # EM_386: QEMU writes the 32-bit header layout
        raise UsageError("kdump output of a 32-bit x86 guest is not supported (use elf)")
    # the kernel's page size; without it QEMU's choice: the largest the
    # architecture has on aarch64 (64 KiB), the target page elsewhere
    ps = info.page_size if info is not None else 65536 if target.machine == 183 else mig.page_size
    if info is not None:
        phys_base = info.phys_base(target.machine)
    else:  # QEMU: aarch64's lowest RAM address, else 0
        ram = [r.gpa for r in mm.ranges if r.kind == "ram"]
        phys_base = min(ram) if target.machine == 183 and ram else 0
    mem = GuestMemory(mm, read)
    ncpus = len({c for c in _cpu_indexes(mig)}) or 1
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


def _cpu_indexes(mig: Migration) -> list[int]:
    return [d.instance_id for d in mig.devices("cpu")]


def mig_block_size(mig: Migration, name: str) -> int:
    for b in mig.ram_blocks:
        if b.name == name:
            return b.used_length
    raise KeyError(name)


class _Staged:
    """A stream read from a pipe with every RAM block kept in its own area of ``fd``."""

    def __init__(self, fd: int, start: int) -> None:
        self.fd = fd
        self.areas: dict[str, int] = {}
        self.cursor = start

    def place(self, block: Any) -> Placement:
        if block.name not in self.areas:
            self.areas[block.name] = self.cursor
            self.cursor = _align(self.cursor + block.used_length)
            os.ftruncate(self.fd, self.cursor)
        return Placement([Piece(0, block.used_length, self.fd, self.areas[block.name])])

    def read(self, block: str, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, self.areas[block] + offset)

    def open(self, src: Any, args: dict[str, Any], progress: Any) -> Migration:
        from .. import open as qopen

        sinks: list[StreamingSink] = []

        def consumer(ctx: Any, ps: int) -> StreamingSink:
            sinks.append(StreamingSink(ps, self.place))
            return sinks[-1]

        mig = qopen(src, ram_consumer=consumer, progress=progress, **args)
        try:
            for sink in sinks:
                sink.drain()  # the blocks are read back from fd
            for block in mig.ram_blocks:
                # a block no page record reached (all on extra channels): zeros
                self.place(block)
        except BaseException:
            mig.close()
            raise
        return mig


def layout_streamed(
    src: Any, overrides: Any = None, open_args: dict[str, Any] | None = None
) -> MemoryMap:
    """:func:`~qevm.views.memmap.layout` of a stream that cannot be indexed (a pipe).

    The RAM blocks are kept in an unlinked temporary file while it is read.
    """
    import tempfile

    with tempfile.TemporaryFile(prefix="qevm-blocks-") as tmp:
        staged = _Staged(tmp.fileno(), 0)
        with staged.open(src, dict(open_args or {}), None) as mig:
            return layout(mig, overrides, read=staged.read)


def _from_pipe(
    src: Any,
    path: Any,
    fmt: str,
    overrides: Any,
    args: dict[str, Any],
    progress: Callable[[int], None] | None,
    vmcoreinfo: bool = True,
) -> CoreResult:
    from ..export.scan import file_scanner

    # RAM comes before the device state the layout depends on: keep each block
    # in its own area (of the ELF itself, or of a staging file for raw and
    # kdump) and place it when the stream has been read.
    stage_path = os.fspath(path) + ".qevm-stage" if fmt != "elf" else os.fspath(path)
    fd = os.open(stage_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    staged = _Staged(fd, STREAM_HEADER_ROOM if fmt == "elf" else 0)
    info = kd = None
    try:
        with staged.open(src, args, progress) as mig:
            mm = layout(mig, overrides, read=staged.read)
            sizes = {b.name: b.used_length for b in mig.ram_blocks}
            scan = file_scanner(fd, staged.areas, sizes)
            if fmt.startswith("kdump"):
                target, info, warnings = core_target(mig, mm, staged.read, scan, vmcoreinfo)
                kd = _write_kdump(path, fmt, mig, mm, target, info, staged.read)
            elif fmt == "raw":
                warnings: list[str] = []
                out = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.ftruncate(out, max((r.end for r in mm.ranges), default=0))
                    for r in mm.ranges:
                        copy_file_sparse(fd, staged.areas[r.block] + r.offset, r.size, out, r.gpa)
                finally:
                    os.close(out)
            else:
                target, info, warnings = core_target(mig, mm, staged.read, scan, vmcoreinfo)
                hdr = header_size(len(mm.ranges), 0)
                if hdr > STREAM_HEADER_ROOM:
                    raise UsageError(f"{len(mm.ranges)} ranges do not fit the ELF header room")
                note_off = hdr if hdr + len(target.notes) <= STREAM_HEADER_ROOM else staged.cursor
                os.pwrite(fd, elf_headers(target, mm.ranges, staged.areas, note_off), 0)
                os.pwrite(fd, target.notes, note_off)
    finally:
        os.close(fd)
        if fmt != "elf":
            os.unlink(stage_path)
    return CoreResult(mm, fmt, sum(r.size for r in mm.ranges), warnings, info, kd)
