"""A page index for inputs read once (pipes, compressed files): what is kept is spooled.

:class:`~qevm.sections.ram.index.PageIndex` remembers where each page's
latest bytes are in the input and reads them back later; a pipe cannot be
read back.  :class:`SpoolingIndex` records the same page kinds (so statistics
are those of a file) and copies the bytes of the pages it is asked to keep
(one range of one block, for ``qevm ram --offset``) into an unlinked
temporary file as they pass, which then serves as the index's input.  Pages
not kept cost nothing but their entry; XBZRLE deltas are applied to kept
pages only (a page the delta applies to is kept whenever the result is).
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

import numpy as np

from .sections.ram.index import KIND_SCRATCH, KIND_ZLIB, ZERO, PageIndex, _code

if TYPE_CHECKING:
    from .sections.ram.records import RamBlock
    from .wire import Reader


class SpoolFile:
    """An unlinked temporary file written at its end and read at any offset."""

    seekable = True

    def __init__(self) -> None:
        self._f = tempfile.TemporaryFile(prefix="qevm-spool-")
        self.size = 0

    def append(self, data: Any) -> int:
        """Write ``data`` at the end; return where it starts."""
        at = self.size
        os.pwrite(self._f.fileno(), data, at)
        self.size += len(data)
        return at

    def read_at(self, offset: int, n: int) -> bytes:
        return os.pread(self._f.fileno(), n, offset)

    def close(self) -> None:
        self._f.close()


class SpoolingIndex(PageIndex):
    """A page index over a stream read once; keeps the bytes of ``[start, end)`` of a block.

    ``block`` None keeps from the first block announced; ``end`` None keeps
    nothing (statistics only).
    """

    streaming = True

    def __init__(
        self, page_size: int, block: str | None = None, start: int = 0, end: int | None = None
    ) -> None:
        self.spool = SpoolFile()
        super().__init__(page_size, [self.spool])  # type: ignore[list-item]
        self._keep_block = block
        self._keep = (start // page_size, -(-end // page_size)) if end is not None else (0, 0)
        self._first = True

    def add_block(self, block: RamBlock) -> None:
        if self._keep_block is None and self._first:
            self._keep_block = block.name
        self._first = False
        super().add_block(block)

    def _kept(self, name: str, page: int) -> bool:
        lo, hi = self._keep
        return name == self._keep_block and lo <= page < hi

    def page(self, block: RamBlock, addr: int, offset: int, r: Reader, src: int = 0) -> None:
        page = addr >> self.shift
        at = 0
        if self._kept(block.name, page):
            i = offset - r.base
            at = self.spool.append(memoryview(r.buf)[i : i + self.page_size])
        super().page(block, addr, at)

    def page_run(
        self, block: RamBlock, addrs: np.ndarray, offsets: np.ndarray, r: Reader, src: int = 0
    ) -> None:
        pages = addrs >> np.uint64(self.shift)
        codes = np.zeros(len(addrs), dtype=np.uint64)
        lo, hi = self._keep
        if block.name == self._keep_block and hi > lo:
            keep = np.flatnonzero((pages >= lo) & (pages < hi))
            buf = memoryview(r.buf)
            ps = self.page_size
            for k in keep.tolist():
                i = int(offsets[k]) - r.base
                codes[k] = self.spool.append(buf[i : i + ps])
        super().page_run(block, addrs, codes)

    def zlib_data(self, block: RamBlock, addr: int, data: bytes, offset: int) -> None:
        page = addr >> self.shift
        at = 0
        if self._kept(block.name, page):
            at = self.spool.append(len(data).to_bytes(4, "big") + data)
        self.loc[block.name][page] = _code(KIND_ZLIB, at)
        self._stamp(block.name, page)

    def xbzrle(self, block: RamBlock, addr: int, delta: bytes, offset: int) -> None:
        page = addr >> self.shift
        if self._kept(block.name, page):
            super().xbzrle(block, addr, delta, offset)
        else:
            self.loc[block.name][page] = _code(KIND_SCRATCH, 0)
            self._stamp(block.name, page)

    def computed(self, block: RamBlock, addr: int, data: bytes) -> None:
        if self._kept(block.name, addr >> self.shift):
            super().computed(block, addr, data)
        else:
            self.loc[block.name][addr >> self.shift] = _code(KIND_SCRATCH, 0)

    def mapped_stream(self, block: RamBlock, bitmap: bytes, r: Reader) -> None:
        """Set bits are pages (in order after the bitmap), clear bits zero pages."""
        from .ramsink import _bit_runs

        loc = self.loc[block.name]
        ps = self.page_size
        npages = block.used_length // ps
        pages = np.arange(npages, dtype=np.uint64)
        if npages:
            loc.set_many(pages, ZERO)
        lo, hi = self._keep if block.name == self._keep_block else (0, 0)
        done = 0
        for first, count in _bit_runs(bitmap, npages):
            r.skip((first - done) * ps)
            end = first + count
            codes = np.zeros(count, dtype=np.uint64)
            k0, k1 = max(first, lo), min(end, hi)
            if k0 < k1:
                r.skip((k0 - first) * ps)
                at = self.spool.size
                for p in range(k0, k1, 1024):
                    self.spool.append(r.bytes(min(1024, k1 - p) * ps))
                kept = np.arange(k1 - k0, dtype=np.uint64) * np.uint64(ps) + np.uint64(at)
                codes[k0 - first : k1 - first] = kept
                r.skip((end - k1) * ps)
            else:
                r.skip(count * ps)
            loc.set_many(pages[first:end], codes)
            done = end
        r.skip((npages - done) * ps)

    def close(self) -> None:
        self.spool.close()
        super().close()
