"""The page index: where the latest content of every RAM page lives.

One ``uint64`` per target page and block (0.2% of guest RAM): the absolute
offset of the page's bytes in one of the inputs (the main stream, or an extra
multifd channel), or a code for "zero", "not in the stream", a zlib page, a
page rebuilt from XBZRLE deltas (kept in a scratch file), or a page QEMU
filled with a non-zero byte.  Records are applied in stream order, so the
last copy of a page wins, zero pages included.

The per-block arrays are allocated in chunks of 1 GiB of guest RAM when a
page in them is first recorded, so what a block claims to be (a length field
in the stream) costs nothing until pages arrive.
"""

from __future__ import annotations

import tempfile
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ...errors import FormatError
from . import xbzrle
from .consumer import PageConsumer

if TYPE_CHECKING:
    from ...source.base import Source
    from ...wire import Reader
    from .blocks import RamBlock

ABSENT = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
ZERO = np.uint64(0xFFFF_FFFF_FFFF_FFFE)
KIND_SHIFT = 56
OFFSET_MASK = (1 << KIND_SHIFT) - 1
#: Kinds (top byte): below KIND_ZLIB, the number of the input holding the raw page.
KIND_ZLIB = 0xF0
KIND_SCRATCH = 0xF1
KIND_FILL = 0xF2
MAX_INPUTS = KIND_ZLIB

#: Names of what a page can be, for statistics and ``iter_pages``.
ENCODINGS = ("absent", "zero", "page", "zlib", "xbzrle", "fill")

#: The kinds of :class:`PageRun`.
ABSENT_RUN, ZERO_RUN, DATA_RUN, COMPUTED_RUN = "absent", "zero", "data", "computed"
_ABSENT, _ZERO, _DATA, _COMPUTED = range(4)
_RUN_KINDS = (ABSENT_RUN, ZERO_RUN, DATA_RUN, COMPUTED_RUN)


class PageRun(NamedTuple):
    """Consecutive pages of a block that are alike (see :meth:`PageIndex.runs`)."""

    first: int
    count: int
    kind: str
    #: ``data`` runs: the input holding the bytes, where the first page's
    #: bytes are, and the bytes from one page's bytes to the next.
    input: int = 0
    offset: int = 0
    stride: int = 0


#: ENCODINGS position of each page code's top byte (ZERO and ABSENT are told apart whole).
_KIND_ENCODING = np.full(256, ENCODINGS.index("page"), dtype=np.uint8)
_KIND_ENCODING[KIND_ZLIB] = ENCODINGS.index("zlib")
_KIND_ENCODING[KIND_SCRATCH] = ENCODINGS.index("xbzrle")
_KIND_ENCODING[KIND_FILL] = ENCODINGS.index("fill")


def _code(kind: int, offset: int) -> int:
    return (kind << KIND_SHIFT) | offset


CHUNK_SHIFT = 18
CHUNK = 1 << CHUNK_SHIFT
_CHUNK_MASK = CHUNK - 1


class PageMap:
    """A per-page array allocated lazily in chunks; unset pages read as ``fill``."""

    def __init__(self, npages: int, fill: Any, dtype: Any) -> None:
        self.npages = npages
        self.fill = fill
        self.dtype = dtype
        self.chunks: dict[int, np.ndarray] = {}

    def chunk(self, c: int) -> np.ndarray:
        arr = self.chunks.get(c)
        if arr is None:
            n = min(CHUNK, self.npages - (c << CHUNK_SHIFT))
            arr = self.chunks[c] = np.full(n, self.fill, dtype=self.dtype)
        return arr

    def __getitem__(self, page: int) -> Any:
        arr = self.chunks.get(page >> CHUNK_SHIFT)
        return self.fill if arr is None else arr[page & _CHUNK_MASK]

    def __setitem__(self, page: int, value: Any) -> None:
        self.chunk(page >> CHUNK_SHIFT)[page & _CHUNK_MASK] = value

    def set_many(self, pages: np.ndarray, values: Any) -> None:
        """Set many pages (an array of page numbers) to values (array or scalar)."""
        lo, hi = int(pages.min()) >> CHUNK_SHIFT, int(pages.max()) >> CHUNK_SHIFT
        if lo == hi:
            self.chunk(lo)[pages & np.uint64(_CHUNK_MASK)] = values
            return
        cs = pages >> np.uint64(CHUNK_SHIFT)
        for c in np.unique(cs).tolist():
            m = cs == c
            self.chunk(c)[pages[m] & np.uint64(_CHUNK_MASK)] = (
                values[m] if isinstance(values, np.ndarray) else values
            )

    def take(self, first: int, count: int) -> np.ndarray:
        """Pages ``first .. first + count - 1`` as one array (``fill`` where never set)."""
        out = np.full(count, self.fill, dtype=self.dtype)
        end = first + count
        for c in range(first >> CHUNK_SHIFT, ((end - 1) >> CHUNK_SHIFT) + 1 if count else 0):
            arr = self.chunks.get(c)
            if arr is None:
                continue
            base = c << CHUNK_SHIFT
            lo, hi = max(first, base), min(end, base + len(arr))
            if lo < hi:
                out[lo - first : hi - first] = arr[lo - base : hi - base]
        return out

    def items(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first page, array)`` of the allocated chunks, in page order."""
        for c in sorted(self.chunks):
            yield c << CHUNK_SHIFT, self.chunks[c]

    def unset(self) -> int:
        """Pages in chunks never allocated."""
        return self.npages - sum(len(a) for a in self.chunks.values())


class ScratchPages:
    """Pages qevm had to compute (XBZRLE results), kept in a temporary file."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self._file = tempfile.TemporaryFile(prefix="qevm-pages-")
        self._count = 0

    def put(self, slot: int | None, data: bytes) -> int:
        """Store ``data`` in ``slot`` (or a new one); return the slot."""
        if slot is None:
            slot = self._count
            self._count += 1
        self._file.seek(slot * self.page_size)
        self._file.write(data)
        return slot

    def get(self, slot: int) -> bytes:
        self._file.seek(slot * self.page_size)
        return self._file.read(self.page_size)

    def close(self) -> None:
        self._file.close()


class PageIndex(PageConsumer):
    """Page locations per RAM block, built while the stream is read."""

    uses_numpy = True
    tracks_pages = True

    def __init__(self, page_size: int, inputs: list[Source]) -> None:
        super().__init__(page_size)
        self.shift = page_size.bit_length() - 1
        #: inputs[0] is the main stream; further ones are multifd channels.
        self.inputs = inputs
        self.loc: dict[str, PageMap] = {}
        self._scratch: ScratchPages | None = None
        #: Round in which each page was last set (only with extra channels).
        self.epochs: dict[str, PageMap] | None = None

    def track_epochs(self) -> None:
        """Remember per page the round it came in, to merge multifd channels."""
        self.epochs = {}

    # -- building -------------------------------------------------------------
    def add_block(self, block: RamBlock) -> None:
        npages = -(-block.used_length // self.page_size)
        old = self.loc.get(block.name)
        if old is not None and old.npages == npages:
            return
        self.loc[block.name] = PageMap(npages, ABSENT, np.uint64)
        if self.epochs is not None:
            self.epochs[block.name] = PageMap(npages, 0, np.uint16)

    def _stamp(self, name: str, page: int) -> None:
        if self.epochs is not None:
            self.epochs[name][page] = min(self.epoch, 0xFFFF)

    def _stamp_many(self, name: str, pages: np.ndarray) -> None:
        if self.epochs is not None:
            self.epochs[name].set_many(pages, min(self.epoch, 0xFFFF))

    def zero(self, block: RamBlock, addr: int, fill: int = 0) -> None:
        i = addr >> self.shift
        self.loc[block.name][i] = ZERO if fill == 0 else _code(KIND_FILL, fill)
        self._stamp(block.name, i)

    def zero_run(self, block: RamBlock, addrs: np.ndarray) -> None:
        pages = addrs >> np.uint64(self.shift)
        self.loc[block.name].set_many(pages, ZERO)
        self._stamp_many(block.name, pages)

    def page(
        self, block: RamBlock, addr: int, offset: int, r: Reader | None = None, src: int = 0
    ) -> None:
        i = addr >> self.shift
        self.loc[block.name][i] = _code(src, offset)
        self._stamp(block.name, i)

    def page_run(
        self,
        block: RamBlock,
        addrs: np.ndarray,
        offsets: np.ndarray,
        r: Reader | None = None,
        src: int = 0,
    ) -> None:
        codes = offsets if src == 0 else offsets | np.uint64(src << KIND_SHIFT)
        pages = addrs >> np.uint64(self.shift)
        self.loc[block.name].set_many(pages, codes)
        self._stamp_many(block.name, pages)

    def zlib_page(self, block: RamBlock, addr: int, offset: int) -> None:
        """A zlib stream whose u32 length is at ``offset``, data right after it."""
        i = addr >> self.shift
        self.loc[block.name][i] = _code(KIND_ZLIB, offset)
        self._stamp(block.name, i)

    def computed(self, block: RamBlock, addr: int, data: bytes) -> None:
        """A page whose content qevm computed (XBZRLE, multifd compression)."""
        if self._scratch is None:
            self._scratch = ScratchPages(self.page_size)
        loc = self.loc[block.name]
        i = addr >> self.shift
        cur = int(loc[i])
        reuse = cur >> KIND_SHIFT == KIND_SCRATCH and cur not in (int(ABSENT), int(ZERO))
        slot = cur & OFFSET_MASK if reuse else None
        loc[i] = _code(KIND_SCRATCH, self._scratch.put(slot, data))
        self._stamp(block.name, i)

    def xbzrle(self, block: RamBlock, addr: int, delta: bytes, offset: int) -> None:
        page = bytearray(self.read_page(block.name, addr >> self.shift))
        try:
            xbzrle.decode(delta, page)
        except xbzrle.XbzrleError as e:
            raise FormatError(f"XBZRLE delta does not decode: {e}", offset=offset) from None
        self.computed(block, addr, bytes(page))

    def mapped(self, block: RamBlock, bitmap: bytes, pages_offset: int, src: int = 0) -> None:
        """A mapped-ram block: set bits are pages at their slot, clear bits are zero."""
        loc = self.loc[block.name]
        n = loc.npages
        bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")[:n]
        ps = np.uint64(self.page_size)
        for c in range(0, n, CHUNK):
            m = min(CHUNK, n - c)
            slots = np.arange(c, c + m, dtype=np.uint64) * ps + np.uint64(pages_offset)
            if src:
                slots |= np.uint64(src << KIND_SHIFT)
            loc.chunk(c >> CHUNK_SHIFT)[:] = np.where(bits[c : c + m].astype(bool), slots, ZERO)

    # -- extra connections --------------------------------------------------------
    def _newer(self, name: str, page: int, epoch: int) -> bool:
        """Whether a channel page of round ``epoch`` replaces what the page holds."""
        if self.epochs is None:
            return True
        ep = self.epochs[name]
        if ep[page] > epoch and self.loc[name][page] != ABSENT:
            return False
        ep[page] = min(epoch, 0xFFFF)
        return True

    def channel_page(self, block: RamBlock, addr: int, src: int, offset: int, epoch: int) -> None:
        i = addr >> self.shift
        if self._newer(block.name, i, epoch):
            self.loc[block.name][i] = _code(src, offset)

    def channel_zero(self, block: RamBlock, addr: int, epoch: int) -> None:
        i = addr >> self.shift
        if self._newer(block.name, i, epoch):
            self.loc[block.name][i] = ZERO

    def channel_computed(self, block: RamBlock, addr: int, data: bytes, epoch: int) -> None:
        i = addr >> self.shift
        if self._newer(block.name, i, epoch):
            saved, self.epochs = self.epochs, None
            self.computed(block, addr, data)
            self.epochs = saved

    # -- reading ----------------------------------------------------------------
    def read_page(self, name: str, page: int) -> bytes:
        """The current content of one page."""
        code = int(self.loc[name][page])
        ps = self.page_size
        if code in (int(ABSENT), int(ZERO)):
            return bytes(ps)
        kind, off = code >> KIND_SHIFT, code & OFFSET_MASK
        if kind < MAX_INPUTS:
            return bytes(self.inputs[kind].read_at(off, ps))
        if kind == KIND_SCRATCH:
            assert self._scratch is not None
            return self._scratch.get(off)
        if kind == KIND_FILL:
            return bytes((off,)) * ps
        if kind == KIND_ZLIB:
            src = self.inputs[0]
            length = int.from_bytes(src.read_at(off, 4), "big")
            try:
                data = zlib.decompress(bytes(src.read_at(off + 4, length)))
            except zlib.error as e:
                raise FormatError(
                    f"compressed page does not inflate: {e}", offset=off + 4
                ) from None
            if len(data) != ps:
                raise FormatError(
                    f"compressed page inflates to {len(data)} bytes",
                    offset=off + 4,
                    expected=f"{ps}",
                )
            return data
        raise AssertionError(f"bad page code {code:#x}")

    def read(self, name: str, offset: int, length: int) -> bytes:
        """``length`` bytes of block ``name`` from ``offset`` (absent pages read as zeros)."""
        ps = self.page_size
        out = bytearray()
        end = offset + length
        pos = offset
        while pos < end:
            page, inpage = divmod(pos, ps)
            take = min(ps - inpage, end - pos)
            out += self.read_page(name, page)[inpage : inpage + take]
            pos += take
        return bytes(out)

    def encoding_counts(self, name: str) -> dict[str, int]:
        """How many pages of the block are of each kind in :data:`ENCODINGS`."""
        counts = dict.fromkeys(ENCODINGS, 0)
        loc = self.loc[name]
        counts["absent"] = loc.unset()
        for _, arr in loc.items():
            kinds = arr >> np.uint64(KIND_SHIFT)
            zero = int((arr == ZERO).sum())
            absent = int((arr == ABSENT).sum())
            counts["zero"] += zero
            counts["absent"] += absent
            counts["zlib"] += int((kinds == KIND_ZLIB).sum())
            counts["xbzrle"] += int((kinds == KIND_SCRATCH).sum())
            counts["fill"] += int((kinds == KIND_FILL).sum())
            counts["page"] += int((kinds < MAX_INPUTS).sum())
        return counts

    def kinds(self, name: str, first: int, count: int) -> np.ndarray:
        """What pages ``first .. first + count - 1`` of block ``name`` are, as ``uint8``
        positions in :data:`ENCODINGS` (0 absent, 1 zero, 2 page, 3 zlib, 4 xbzrle, 5 fill)."""
        codes = self.loc[name].take(first, count)
        out = _KIND_ENCODING[codes >> np.uint64(KIND_SHIFT)]
        out[codes == ZERO] = ENCODINGS.index("zero")
        out[codes == ABSENT] = ENCODINGS.index("absent")
        return out

    def rounds(self, name: str, first: int, count: int) -> np.ndarray | None:
        """The round in which each page was last written (``uint16``; 0 also for pages
        never written), or None unless rounds were tracked (:meth:`track_epochs`).

        A round ends at each EOS of the RAM section (each START, PART and END
        record is one round) or, with multifd, at each sync point.
        """
        if self.epochs is None:
            return None
        return self.epochs[name].take(first, count)

    def absent_pages(self, name: str) -> int | None:
        return self.encoding_counts(name)["absent"] if name in self.loc else None

    def absent_ranges(self, name: str, limit: int = 16) -> list[tuple[int, int]]:
        """Up to ``limit`` runs ``(first page, count)`` of pages no record gave."""
        loc = self.loc[name]
        out: list[tuple[int, int]] = []
        pos = 0
        for first, arr in [*loc.items(), (loc.npages, None)]:
            if first > pos:
                out.append((pos, first - pos))  # a chunk never allocated
            if arr is None:
                break
            absent = np.flatnonzero(arr == ABSENT)
            if len(absent):
                breaks = np.flatnonzero(np.diff(absent) != 1) + 1
                for run in np.split(absent, breaks):
                    out.append((first + int(run[0]), len(run)))
            pos = first + len(arr)
        merged: list[tuple[int, int]] = []
        for start, n in out:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((start, n))
        return merged[:limit]

    def runs(self, name: str) -> Iterator[PageRun]:
        """Every page of block ``name`` in order, as runs of pages that are alike.

        A run is ``absent``, ``zero``, ``computed`` (zlib, XBZRLE or filled
        pages, read with :meth:`read_page`) or ``data``: pages stored raw in
        one input at a constant stride (the page size for mapped-ram, header
        plus page otherwise), which can be copied with one vectored write.
        """
        loc = self.loc[name]
        pos = 0
        for first, arr in loc.items():
            if first > pos:
                yield PageRun(pos, first - pos, ABSENT_RUN)  # chunks never allocated
            yield from self._chunk_runs(first, arr)
            pos = first + len(arr)
        if loc.npages > pos:
            yield PageRun(pos, loc.npages - pos, ABSENT_RUN)

    def data_runs(self, name: str) -> Iterator[PageRun]:
        """The ``data`` runs of :meth:`runs`."""
        return (run for run in self.runs(name) if run.kind == DATA_RUN)

    def _chunk_runs(self, first: int, arr: np.ndarray) -> Iterator[PageRun]:
        kinds = arr >> np.uint64(KIND_SHIFT)
        cls = np.full(len(arr), _COMPUTED, dtype=np.int8)
        cls[kinds < np.uint64(MAX_INPUTS)] = _DATA
        cls[arr == ZERO] = _ZERO
        cls[arr == ABSENT] = _ABSENT
        offs = (arr & np.uint64(OFFSET_MASK)).astype(np.int64)
        # A run breaks where the class changes; a data run also where the
        # input changes, where offsets do not grow, or where the stride changes.
        br = np.ones(len(arr), dtype=bool)
        if len(arr) > 1:
            strides = np.diff(offs)
            data = (cls[1:] == _DATA) & (cls[:-1] == _DATA)
            same = (cls[1:] == cls[:-1]) & (~data | ((kinds[1:] == kinds[:-1]) & (strides > 0)))
            br[1:] = ~same
            br[2:] |= data[1:] & data[:-1] & (strides[1:] != strides[:-1])
        starts = np.flatnonzero(br).tolist()
        ends = [*starts[1:], len(arr)]
        for s, e in zip(starts, ends):
            c = int(cls[s])
            if c != _DATA:
                yield PageRun(first + s, e - s, _RUN_KINDS[c])
                continue
            off = int(offs[s])
            stride = int(offs[s + 1]) - off if e - s > 1 else self.page_size
            yield PageRun(first + s, e - s, DATA_RUN, int(kinds[s]), off, stride)

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.close()
