"""One-pass RAM output: pages written where they belong as the stream is read.

:class:`StreamingSink` is the page consumer ``extract`` uses for pipes and
for files whose pages are all in the file, and ELF cores use for pipes.  It
keeps a byte per page (:class:`PageStates`: unseen, zero or data) so that a
page later sent as zero is cleared and pages no record gave can be counted.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .errors import FormatError, UsageError
from .fileio import IOV_MAX
from .ramio import Placement, write_source_strided, write_strided
from .sections.ram import xbzrle
from .sections.ram.consumer import PageConsumer
from .writebehind import WriteBehind

if TYPE_CHECKING:
    import numpy as np

    from .sections.ram.blocks import RamBlock
    from .wire import Reader

#: What a page last was, for :class:`PageStates`.
UNSEEN, ZERO, DATA = 0, 1, 2


class PageStates:
    """A byte per page of a block: unseen, zero or data (allocated 1 Mi pages at a time)."""

    SHIFT = 20

    def __init__(self, npages: int) -> None:
        self.npages = npages
        self._chunks: dict[int, np.ndarray] = {}

    def _chunk(self, c: int) -> np.ndarray:
        chunk = self._chunks.get(c)
        if chunk is None:
            import numpy as np

            chunk = self._chunks[c] = np.zeros(1 << self.SHIFT, dtype=np.uint8)
        return chunk

    def get(self, page: int) -> int:
        chunk = self._chunks.get(page >> self.SHIFT)
        return 0 if chunk is None else int(chunk[page & ((1 << self.SHIFT) - 1)])

    def set(self, page: int, state: int) -> int:
        """Set a page's state; return the previous one."""
        chunk = self._chunk(page >> self.SHIFT)
        i = page & ((1 << self.SHIFT) - 1)
        was = int(chunk[i])
        chunk[i] = state
        return was

    def set_many(self, pages: np.ndarray, state: int) -> np.ndarray:
        """Set the state of many pages; return their previous states."""
        import numpy as np

        pages = pages.astype(np.int64, copy=False)
        mask = (1 << self.SHIFT) - 1
        c0, c1 = int(pages.min()) >> self.SHIFT, int(pages.max()) >> self.SHIFT
        if c0 == c1:
            chunk, idx = self._chunk(c0), pages & mask
            was = chunk[idx]
            chunk[idx] = state
            return was
        was = np.empty(len(pages), dtype=np.uint8)
        which = pages >> self.SHIFT
        for c in np.unique(which).tolist():
            sel = which == c
            chunk, idx = self._chunk(c), pages[sel] & mask
            was[sel] = chunk[idx]
            chunk[idx] = state
        return was

    def set_range(self, first: int, count: int, state: int) -> None:
        """Set pages ``[first, first + count)`` to one state."""
        step = 1 << self.SHIFT
        page, end = first, first + count
        while page < end:
            c, i = page >> self.SHIFT, page & (step - 1)
            n = min(step - i, end - page)
            self._chunk(c)[i : i + n] = state
            page += n

    def unseen(self) -> int:
        """How many pages no record has given."""
        import numpy as np

        seen = 0
        for c, chunk in self._chunks.items():
            valid = max(0, min(1 << self.SHIFT, self.npages - (c << self.SHIFT)))
            seen += int(np.count_nonzero(chunk[:valid]))
        return self.npages - seen


class StreamingSink(PageConsumer):
    """Writes pages to their placement in one pass as the stream is read.

    Used for pipes, and for files whose pages are all in the file: each page
    goes out as soon as its record is read (on a writer thread); a page re-sent
    later is written again, a page later sent as zero is zeroed.
    """

    streaming = True
    uses_numpy = True
    tracks_pages = True

    def __init__(
        self,
        page_size: int,
        place: Callable[[RamBlock], Placement | None],
        source: Any = None,
    ) -> None:
        super().__init__(page_size)
        self._place = place
        #: The main input, for mapped-ram pages read from a seekable file.
        self._source = source
        self.placements: dict[str, Placement] = {}
        self._states: dict[str, PageStates] = {}
        self._zero = bytes(page_size)
        self._shift = page_size.bit_length() - 1
        self._wb = WriteBehind()
        # consecutive single pages not yet queued: block, first address, buffers
        self._run: tuple[str, int, list[Any]] | None = None

    def add_block(self, block: RamBlock) -> None:
        if block.name in self._states:
            return
        placement = self._place(block)
        if placement is not None:
            self.placements[block.name] = placement
            self._states[block.name] = PageStates(-(-block.used_length // self.page_size))

    def absent_pages(self, name: str) -> int | None:
        states = self._states.get(name)
        return None if states is None else states.unseen()

    # -- output ---------------------------------------------------------------------
    def _put(self, name: str, addr: int, data: Any) -> None:
        for fd, dest, src, n in self.placements[name].locate(addr, len(data)):
            part = data if n == len(data) else memoryview(data)[src - addr : src - addr + n]
            self._wb.write(fd, part, dest)

    def _put_run(self, name: str, addr: int, bufs: list[Any]) -> None:
        size = len(bufs) * self.page_size
        pieces = self.placements[name].locate(addr, size)
        if len(pieces) == 1 and pieces[0][3] == size:
            self._wb.write(pieces[0][0], bufs, pieces[0][1])
        else:
            self._put(name, addr, b"".join(bytes(b) for b in bufs))

    def _put_strided(
        self, name: str, addr: int, buf: Any, off: int, stride: int, n: int, source: Any = None
    ) -> None:
        """Queue ``n`` pages every ``stride`` bytes from ``off`` of ``buf`` (or of ``source``)."""
        ps = self.page_size
        for fd, dest, src, size in self.placements[name].locate(addr, n * ps):
            at = off + (src - addr) // ps * stride
            if source is not None:
                write_source_strided(self._wb, fd, dest, source, at, stride, size // ps, ps)
            else:
                write_strided(self._wb, fd, dest, buf, at, stride, size // ps, ps)

    def flush(self) -> None:
        """Queue the single pages gathered so far."""
        if self._run is not None:
            name, addr, bufs = self._run
            self._run = None
            self._put_run(name, addr, bufs)

    def drain(self) -> None:
        """Wait until everything read so far is in the output files."""
        self.flush()
        self._wb.drain()

    def close(self) -> None:
        self.flush()
        self._wb.close()

    def abort(self) -> None:
        """Stop writing (after an error)."""
        self._run = None
        self._wb.abort()

    # -- records ----------------------------------------------------------------------
    def zero(self, block: RamBlock, addr: int, fill: int = 0) -> None:
        name = block.name
        if name not in self.placements:
            return
        self.flush()
        page = addr >> self._shift
        if fill:
            self._put(name, addr, bytes((fill,)) * self.page_size)
            self._states[name].set(page, DATA)
        elif self._states[name].set(page, ZERO) == DATA:
            self._put(name, addr, self._zero)

    def zero_run(self, block: RamBlock, addrs: np.ndarray) -> None:
        name = block.name
        if name not in self.placements:
            return
        was = self._states[name].set_many(addrs >> self._shift, ZERO)
        cleared = addrs[was == DATA]
        if len(cleared):
            self.flush()
            for a in cleared.tolist():
                self._put(name, a, self._zero)

    def page(self, block: RamBlock, addr: int, offset: int, r: Reader, src: int = 0) -> None:
        name = block.name
        if name not in self.placements:
            return
        i = offset - r.base
        # A view keeps the reader's old window alive after a refill, so pages
        # can be gathered and written together.
        data = memoryview(r.buf)[i : i + self.page_size]
        self._states[name].set(addr >> self._shift, DATA)
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
        import numpy as np

        name = block.name
        if name not in self.placements:
            return
        self.flush()
        ps = self.page_size
        self._states[name].set_many(addrs >> self._shift, DATA)
        n = len(addrs)
        stride = int(offsets[1] - offsets[0]) if n > 1 else ps
        # pieces of the run whose pages follow each other in the block (and
        # lie at one distance from each other in the input)
        if n > 1:
            apart = (np.diff(addrs) != ps) | (np.diff(offsets) != stride)
            breaks = (np.flatnonzero(apart) + 1).tolist()
        else:
            breaks = []
        for i, j in zip([0, *breaks], [*breaks, n]):
            off = int(offsets[i]) - r.base
            self._put_strided(name, int(addrs[i]), r.buf, off, stride, j - i)

    def _current(self, name: str, addr: int) -> bytes:
        if self._states[name].get(addr >> self._shift) != DATA:
            return self._zero
        self.drain()
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
            self._states[block.name].set(addr >> self._shift, DATA)

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

    # -- mapped-ram ---------------------------------------------------------------------
    def mapped(self, block: RamBlock, bitmap: bytes, pages_offset: int) -> None:
        name = block.name
        if name not in self.placements:
            return
        if self._source is None:
            raise UsageError("a mapped-ram file needs its source given to the sink")
        self.flush()
        ps = self.page_size
        states = self._states[name]
        states.set_range(0, states.npages, ZERO)
        for first, count in _bit_runs(bitmap, states.npages):
            states.set_range(first, count, DATA)
            off = pages_offset + first * ps
            self._put_strided(name, first * ps, None, off, ps, count, self._source)

    def mapped_stream(self, block: RamBlock, bitmap: bytes, r: Reader) -> None:
        self.flush()
        name = block.name
        ps = self.page_size
        npages = block.used_length // ps
        states = self._states.get(name)
        if states is not None:
            states.set_range(0, npages, ZERO)
        done = 0
        step = max(1, self._wb.buffer_size // ps)
        for first, count in _bit_runs(bitmap, npages):
            r.skip((first - done) * ps)
            if states is None:
                r.skip(count * ps)
            else:
                states.set_range(first, count, DATA)
                for k in range(0, count, step):
                    self._put(name, (first + k) * ps, r.bytes(min(step, count - k) * ps))
            done = first + count
        r.skip((npages - done) * ps)


def _bit_runs(bitmap: bytes, npages: int, step: int = 1 << 20) -> Iterator[tuple[int, int]]:
    """(first, count) of each run of set bits among the first ``npages`` (little-endian).

    The bitmap is unpacked ``step`` bytes at a time, so a bitmap of a large
    guest does not become a byte per page all at once.
    """
    import numpy as np

    npages = min(npages, len(bitmap) * 8)
    open_at: int | None = None  # a run still going at the end of the previous step
    for lo in range(0, -(-npages // 8), step):
        part = np.frombuffer(bitmap, dtype=np.uint8, count=min(step, len(bitmap) - lo), offset=lo)
        bits = np.unpackbits(part, bitorder="little")[: npages - lo * 8].astype(np.int8)
        edges = np.flatnonzero(np.diff(bits, prepend=0, append=0)) + lo * 8
        starts, ends = edges[0::2].tolist(), edges[1::2].tolist()
        if open_at is not None:
            if starts and starts[0] == lo * 8:
                starts[0] = open_at
            else:
                yield open_at, lo * 8 - open_at
        open_at = None
        last = lo * 8 + len(bits)
        if ends and ends[-1] == last and last < npages:
            open_at = starts.pop()
            ends.pop()
        yield from ((a, b - a) for a, b in zip(starts, ends))
    if open_at is not None:
        yield open_at, npages - open_at
