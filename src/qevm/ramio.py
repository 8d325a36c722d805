"""Copying guest RAM out of a stream: block files, placements, ranges.

Two ways, one result:

* :class:`~qevm.ramsink.StreamingSink` receives pages as the stream goes by
  and writes them where they belong at once; a page re-sent later overwrites,
  a page later sent as zero is zeroed.  This is how pipes are read, and files
  whose pages are all in the file: one pass over the input.
* With a page index (which knows where each page's latest bytes are, also in
  the recorded multifd channels), :func:`copy_block_range` writes runs of
  pages straight from the mapped input.

Either way runs of pages are gathered into large ranges and written on a
background thread (:mod:`qevm.writebehind`); zero pages stay holes in a sparse
output.

Where a block's bytes go is a :class:`Placement`: pieces of the block mapped
to (file, offset) — one piece per block file for ``extract``, one piece per
guest-physical range for ELF cores.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .fileio import pwrite_sparse
from .writebehind import WriteBehind

if TYPE_CHECKING:
    from .sections.ram.index import PageIndex


@dataclass
class Piece:
    """Bytes ``[start, start + length)`` of a block go to ``fd`` at ``dest``."""

    start: int
    length: int
    fd: int
    dest: int


@dataclass
class Placement:
    """Where the bytes of one RAM block are written."""

    pieces: list[Piece] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pieces.sort(key=lambda p: p.start)
        self._starts = [p.start for p in self.pieces]

    def locate(self, offset: int, length: int) -> list[tuple[int, int, int, int]]:
        """``(fd, dest, src_offset, n)`` for the parts of a range that are placed."""
        out = []
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        end = offset + length
        while i < len(self.pieces):
            p = self.pieces[i]
            if p.start >= end:
                break
            lo = max(offset, p.start)
            hi = min(end, p.start + p.length)
            if lo < hi:
                out.append((p.fd, p.dest + lo - p.start, lo, hi - lo))
            i += 1
        return out


# -- block names -> relative paths ------------------------------------------------


def block_path(name: str) -> tuple[str, bool]:
    """The relative path a block's file gets, and whether it had to be rewritten.

    Ordinary names map like analyze-migration.py's ``-x`` does (``pc.ram``,
    ``0000:00:02.0/vga.vram``, ``/rom@etc/acpi/tables`` -> ``rom@etc/acpi/tables``);
    components that would leave the output directory (``..``), empty names and
    control characters are rewritten.
    """
    parts = []
    rewritten = False
    for comp in name.split("/"):
        if comp in ("", "."):
            if comp == ".":
                rewritten = True
            continue
        clean = "".join(c if c.isprintable() and c != "\\" else f"%{ord(c):02X}" for c in comp)
        if clean == "..":
            clean = "%2E%2E"
        if clean != comp:
            rewritten = True
        parts.append(clean)
    if not parts:
        return "unnamed-block", True
    return "/".join(parts), rewritten


def block_paths(names: Iterable[str]) -> dict[str, tuple[str, str | None]]:
    """Relative path per block name, plus why it differs from the name (or None)."""
    out: dict[str, tuple[str, str | None]] = {}
    taken: set[str] = set()

    def clash(rel: str) -> bool:
        # the same file, or one block's file being another block's directory
        return rel in taken or any(
            t.startswith(rel + "/") or rel.startswith(t + "/") for t in taken
        )

    for name in names:
        rel, rewritten = block_path(name)
        note = "unsafe characters or components rewritten" if rewritten else None
        if clash(rel):
            flat = rel.replace("/", "%2F")
            rel, n = flat, 1
            while clash(rel):
                n += 1
                rel = f"{flat}~{n}"
            note = "name collides with another block's file"
        taken.add(rel)
        out[name] = (rel, note)
    return out


def create_block_file(root: str, rel: str, size: int) -> int:
    """Create ``root/rel`` as a sparse file of ``size`` bytes; return its fd."""
    path = os.path.join(root, rel)
    real_root = os.path.realpath(root)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    if os.path.commonpath([real_root, os.path.realpath(parent)]) != real_root:
        raise UsageError(f"refusing to write {rel!r} outside {root!r}")
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o644)
    os.ftruncate(fd, size)
    return fd


# -- gathering pages into ranges ------------------------------------------------------


def write_strided(
    wb: WriteBehind,
    fd: int,
    dest: int,
    buf: Any,
    off: int,
    stride: int,
    count: int,
    ps: int,
    release: Callable[[int, int], None] | None = None,
) -> None:
    """Queue ``count`` pages found every ``stride`` bytes from ``buf[off:]`` as one range.

    Pages separated by record headers are gathered into pool buffers first:
    the kernel writes one large range much faster than thousands of 4 KiB
    pieces.  ``release(lo, hi)`` is told when input bytes are no longer needed.
    """
    import numpy as np

    if stride == ps:
        step = wb.buffer_size
        view = memoryview(buf)
        for lo in range(off, off + count * ps, step):
            hi = min(lo + step, off + count * ps)
            after = (lambda lo=lo, hi=hi: release(lo, hi)) if release else None
            wb.write(fd, view[lo:hi], dest + lo - off, after=after)
        return
    per = max(1, wb.buffer_size // ps)
    for i0 in range(0, count, per):
        k = min(per, count - i0)
        lo = off + i0 * stride
        out = wb.buffer()[: k * ps]
        np.copyto(out.reshape(k, ps), np.ndarray((k, ps), np.uint8, buf, lo, (stride, 1)))
        wb.write(fd, out, dest + i0 * ps, recycle=out.base)
        if release is not None:
            release(lo, lo + k * stride)


def write_source_strided(
    wb: WriteBehind,
    fd: int,
    dest: int,
    source: Any,
    off: int,
    stride: int,
    count: int,
    ps: int,
) -> None:
    """:func:`write_strided` from a source: its mapping, or 4 MiB reads where it has none."""
    view = source.view()
    if view is not None:
        write_strided(wb, fd, dest, view, off, stride, count, ps, source.release)
        return
    per = max(1, wb.buffer_size // stride)
    for i0 in range(0, count, per):
        k = min(per, count - i0)
        data = source.read_at(off + i0 * stride, (k - 1) * stride + ps)
        write_strided(wb, fd, dest + i0 * ps, data, 0, stride, k, ps)


# -- copying from the page index ------------------------------------------------------


def copy_block_range(
    index: PageIndex,
    name: str,
    start: int,
    length: int,
    fd: int,
    dest: int,
    wb: WriteBehind | None = None,
) -> int:
    """Write bytes ``[start, start+length)`` of block ``name`` to ``fd`` at ``dest``.

    Zero and absent pages are not written (the output must already read as
    zeros there, e.g. a freshly truncated file).  Writes go through ``wb``
    (the caller drains it) or, without one, are finished on return.
    Returns the bytes written.
    """
    if wb is None:
        wb = WriteBehind()
        try:
            return copy_block_range(index, name, start, length, fd, dest, wb)
        finally:
            wb.close()
    ps = index.page_size
    if start % ps or length % ps:
        wb.drain()
        return _copy_unaligned(index, name, start, length, fd, dest)
    from .sections.ram.index import ABSENT_RUN, DATA_RUN, ZERO_RUN

    first, last = start // ps, (start + length) // ps
    written = 0
    for run in index.runs(name):
        lo, hi = max(run.first, first), min(run.first + run.count, last)
        if lo >= hi or run.kind in (ABSENT_RUN, ZERO_RUN):
            continue
        out = dest + (lo - first) * ps
        if run.kind == DATA_RUN:
            soff = run.offset + (lo - run.first) * run.stride
            src = index.inputs[run.input]
            write_source_strided(wb, fd, out, src, soff, run.stride, hi - lo, ps)
        else:
            for page in range(lo, hi):
                wb.write(fd, index.read_page(name, page), out + (page - lo) * ps)
        written += (hi - lo) * ps
    return written


def _copy_unaligned(
    index: PageIndex, name: str, start: int, length: int, fd: int, dest: int
) -> int:
    """Byte-granular copy for ranges that do not start or end on a page."""
    step = 1 << 20
    pos = 0
    while pos < length:
        n = min(step, length - pos)
        pwrite_sparse(fd, index.read(name, start + pos, n), dest + pos)
        pos += n
    return length
