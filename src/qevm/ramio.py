"""Copying guest RAM out of a stream: block files, ranges, streaming sinks.

Two ways, one result:

* From a seekable input, the page index says where each page's latest bytes
  are; :func:`copy_block_range` writes runs of pages with vectored writes
  straight from the mapped input (zero pages stay holes in a sparse output).
* From a pipe, :class:`StreamingSink` receives pages as the stream goes by and
  writes them where they belong at once; a page re-sent later overwrites, a
  page later sent as zero is zeroed.

Where a block's bytes go is a :class:`Placement`: pieces of the block mapped
to (file, offset) — one piece per block file for ``extract``, one piece per
guest-physical range for ELF cores.
"""

from __future__ import annotations

import bisect
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import FormatError, UsageError
from .sections.ram import xbzrle
from .sections.ram.consumer import PageConsumer

if TYPE_CHECKING:
    import numpy as np

    from .sections.ram.index import PageIndex
    from .sections.ram.records import RamBlock
    from .wire import Reader

#: Most buffers one pwritev call takes (Linux IOV_MAX).
IOV_MAX = 1024
#: Input bytes copied between hints that they can leave memory.
COPY_STEP = 16 << 20


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


# -- copying from the page index ------------------------------------------------------


def _pwritev_all(fd: int, bufs: list[Any], dest: int) -> None:
    for i in range(0, len(bufs), IOV_MAX):
        chunk = bufs[i : i + IOV_MAX]
        want = sum(len(b) for b in chunk)
        done = os.pwritev(fd, chunk, dest)
        if done != want:  # short write: finish it plainly
            data = b"".join(bytes(b) for b in chunk)
            os.pwrite(fd, data[done:], dest + done)
        dest += want


def copy_block_range(
    index: PageIndex,
    name: str,
    start: int,
    length: int,
    fd: int,
    dest: int,
) -> int:
    """Write bytes ``[start, start+length)`` of block ``name`` to ``fd`` at ``dest``.

    Zero and absent pages are not written (the output must already read as
    zeros there, e.g. a freshly truncated file).  Returns the bytes written.
    """
    ps = index.page_size
    if start % ps or length % ps:
        return _copy_unaligned(index, name, start, length, fd, dest)
    first, last = start // ps, (start + length) // ps
    written = 0
    for page, count, src, off, stride in index.data_runs(name):
        lo, hi = max(page, first), min(page + count, last)
        if lo >= hi:
            continue
        soff = off + (lo - page) * stride
        n = hi - lo
        out = dest + (lo - first) * ps
        source = index.inputs[src]
        view = source.view()
        if view is None:
            for i in range(n):
                os.pwrite(fd, source.read_at(soff + i * stride, ps), out + i * ps)
            written += n * ps
            continue
        _copy_strided(view, soff, stride, n, ps, fd, out, source)
        written += n * ps
    for page in index.computed_pages(name):
        if first <= page < last:
            os.pwrite(fd, index.read_page(name, page), dest + (page - first) * ps)
            written += ps
    return written


def _copy_strided(
    view: Any, soff: int, stride: int, n: int, ps: int, fd: int, out: int, source: Any
) -> None:
    """Write ``n`` pages found every ``stride`` bytes from ``soff`` as one range.

    Pages separated by record headers are gathered into a buffer first: the
    kernel writes one large range much faster than thousands of 4 KiB pieces.
    Each step's input is dropped from memory once written.
    """
    import numpy as np

    step = max(1, COPY_STEP // stride)
    buf = np.empty(min(step, n) * ps, dtype=np.uint8) if stride != ps else None
    for i0 in range(0, n, step):
        k = min(step, n - i0)
        lo = soff + i0 * stride
        if buf is None:
            data: Any = view[lo : lo + k * ps]
        else:
            pages = np.ndarray((k, ps), np.uint8, view, lo, (stride, 1))
            np.copyto(buf[: k * ps].reshape(k, ps), pages)
            data = memoryview(buf)[: k * ps]
        _pwrite_all(fd, data, out + i0 * ps)
        source.release(lo, lo + k * stride)


def _pwrite_all(fd: int, data: Any, dest: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, dest)
        view = view[done:]
        dest += done


def _copy_unaligned(
    index: PageIndex, name: str, start: int, length: int, fd: int, dest: int
) -> int:
    """Byte-granular copy for ranges that do not start or end on a page."""
    step = 1 << 20
    pos = 0
    while pos < length:
        n = min(step, length - pos)
        data = index.read(name, start + pos, n)
        if data.count(0) != len(data):
            os.pwrite(fd, data, dest + pos)
        pos += n
    return length


# -- streaming ------------------------------------------------------------------------


class _Bits:
    """A bit per page, allocated 1 Mi pages at a time as pages are marked."""

    SHIFT = 20

    def __init__(self) -> None:
        self._chunks: dict[int, bytearray] = {}

    def any_in(self, pages: np.ndarray) -> bool:
        """Whether a chunk holding any of ``pages`` has ever been marked."""
        if not self._chunks:
            return False
        return any(c in self._chunks for c in set((pages >> self.SHIFT).tolist()))

    def get(self, page: int) -> bool:
        chunk = self._chunks.get(page >> self.SHIFT)
        i = page & ((1 << self.SHIFT) - 1)
        return bool(chunk and chunk[i >> 3] & (1 << (i & 7)))

    def set(self, page: int, on: bool) -> bool:
        """Set or clear a page's bit; return what it was."""
        c = page >> self.SHIFT
        chunk = self._chunks.get(c)
        if chunk is None:
            if not on:
                return False
            chunk = self._chunks[c] = bytearray(1 << (self.SHIFT - 3))
        i = page & ((1 << self.SHIFT) - 1)
        mask = 1 << (i & 7)
        was = bool(chunk[i >> 3] & mask)
        if on:
            chunk[i >> 3] |= mask
        else:
            chunk[i >> 3] &= ~mask & 0xFF
        return was


class StreamingSink(PageConsumer):
    """Writes pages to their placement as a (non-seekable) stream is read."""

    streaming = True

    def __init__(self, page_size: int, place: Callable[[RamBlock], Placement | None]) -> None:
        super().__init__(page_size)
        self._place = place
        self.placements: dict[str, Placement] = {}
        # pages written with data so far, per block (a later ZERO must clear them)
        self._written: dict[str, _Bits] = {}
        self._zero = bytes(page_size)
        # consecutive pages not yet written: block, first address, buffers
        self._run: tuple[str, int, list[Any]] | None = None

    def add_block(self, block: RamBlock) -> None:
        if block.name in self._written:
            return
        placement = self._place(block)
        if placement is not None:
            self.placements[block.name] = placement
            self._written[block.name] = _Bits()

    def _mark(self, name: str, page: int, on: bool) -> bool:
        return self._written[name].set(page, on)

    def _put(self, name: str, addr: int, data: Any) -> None:
        for fd, dest, _src, _n in self.placements[name].locate(addr, len(data)):
            os.pwrite(fd, data, dest)

    def flush(self) -> None:
        """Write the pages gathered so far."""
        if self._run is not None:
            name, addr, bufs = self._run
            self._run = None
            self._flush(name, addr, bufs)

    def zero(self, block: RamBlock, addr: int, fill: int = 0) -> None:
        name = block.name
        if name not in self.placements:
            return
        self.flush()
        page = addr // self.page_size
        if fill:
            self._put(name, addr, bytes((fill,)) * self.page_size)
            self._mark(name, page, True)
        elif self._mark(name, page, False):
            self._put(name, addr, self._zero)

    def zero_run(self, block: RamBlock, addrs: np.ndarray) -> None:
        bits = self._written.get(block.name)
        if bits is None or not bits.any_in(addrs // self.page_size):
            return  # none of these pages holds data yet: nothing to clear
        for a in addrs.tolist():
            self.zero(block, a)

    def page(self, block: RamBlock, addr: int, offset: int, r: Reader, src: int = 0) -> None:
        name = block.name
        if name not in self.placements:
            return
        i = offset - r.base
        # A view keeps the reader's old window alive after a refill, so pages
        # can be gathered and written together.
        data = memoryview(r.buf)[i : i + self.page_size]
        self._mark(name, addr // self.page_size, True)
        run = self._run
        if run is not None and run[0] == name and len(run[2]) < IOV_MAX:
            if run[1] + len(run[2]) * self.page_size == addr:
                run[2].append(data)
                return
        self.flush()
        self._run = (name, addr, [data])

    def page_run(
        self, block: RamBlock, addrs: np.ndarray, offsets: np.ndarray, r: Reader, src: int = 0
    ) -> None:
        name = block.name
        if name not in self.placements:
            return
        self.flush()
        ps = self.page_size
        base = r.base
        buf = r.buf
        run_addr = None
        bufs: list[Any] = []
        for a, o in zip(addrs.tolist(), offsets.tolist()):
            self._mark(name, a // ps, True)
            if run_addr is not None and a == run_addr + len(bufs) * ps and len(bufs) < IOV_MAX:
                bufs.append(buf[o - base : o - base + ps])
                continue
            if bufs:
                self._flush(name, run_addr, bufs)  # type: ignore[arg-type]
            run_addr, bufs = a, [buf[o - base : o - base + ps]]
        if bufs:
            self._flush(name, run_addr, bufs)  # type: ignore[arg-type]

    def _flush(self, name: str, addr: int, bufs: list[Any]) -> None:
        size = len(bufs) * self.page_size
        pieces = self.placements[name].locate(addr, size)
        if len(pieces) == 1 and pieces[0][3] == size:
            _pwritev_all(pieces[0][0], bufs, pieces[0][1])
        else:
            self._put(name, addr, b"".join(bytes(b) for b in bufs))

    def _current(self, name: str, addr: int) -> bytes:
        if not self._written[name].get(addr // self.page_size):
            return self._zero
        fd, dest, _s, _n = self.placements[name].locate(addr, self.page_size)[0]
        return os.pread(fd, self.page_size, dest)

    def xbzrle(self, block: RamBlock, addr: int, delta: bytes, offset: int) -> None:
        name = block.name
        if name not in self.placements:
            return
        self.flush()
        page = bytearray(self._current(name, addr))
        try:
            xbzrle.decode(delta, page)
        except xbzrle.XbzrleError as e:
            raise FormatError(f"XBZRLE delta does not decode: {e}", offset=offset) from None
        self.computed(block, addr, bytes(page))

    def computed(self, block: RamBlock, addr: int, data: bytes) -> None:
        if block.name in self.placements:
            self.flush()
            self._put(block.name, addr, data)
            self._mark(block.name, addr // self.page_size, True)

    def zlib_data(self, block: RamBlock, addr: int, data: bytes, offset: int) -> None:
        if block.name not in self.placements:
            return
        try:
            page = zlib.decompress(data)
        except zlib.error as e:
            raise FormatError(f"compressed page does not inflate: {e}", offset=offset) from None
        if len(page) != self.page_size:
            raise FormatError(
                f"compressed page inflates to {len(page)} bytes",
                offset=offset,
                expected=f"{self.page_size}",
            )
        self.computed(block, addr, page)

    def mapped_stream(self, block: RamBlock, bitmap: bytes, r: Reader) -> None:
        self.flush()
        name = block.name
        ps = self.page_size
        npages = block.used_length // ps
        bits = int.from_bytes(bitmap, "little")
        for page in range(npages):
            if name in self.placements and bits >> page & 1:
                r.ensure(ps)
                self._put(name, page * ps, r.buf[r.pos : r.pos + ps])
                self._mark(name, page, True)
            r.skip(ps)
