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

import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ...errors import FormatError, UsageError
from . import xbzrle
from .consumer import PageConsumer
from .pagemap import CHUNK, CHUNK_SHIFT, PageMap, ScratchPages

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

#: What a page can be, in this order (the kinds of :class:`PageRun`, the values of
#: :meth:`PageIndex.kinds`): no record gave it, zero, raw bytes in an input, a zlib
#: page, rebuilt from XBZRLE deltas (or a compressed multifd page), filled with a byte.
ENCODINGS = ("absent", "zero", "page", "zlib", "xbzrle", "fill")
_ABSENT, _ZERO, _PAGE = 0, 1, 2


class PageRun(NamedTuple):
    """Consecutive pages of a block that are alike (see :meth:`PageIndex.runs`)."""

    first: int
    count: int
    #: What the pages are: one of :data:`ENCODINGS`.
    kind: str
    #: ``page`` runs: the input holding the bytes, where the first page's
    #: bytes are, and the bytes from one page's bytes to the next.
    input: int = 0
    offset: int = 0
    stride: int = 0

    @property
    def end(self) -> int:
        """The page after the run."""
        return self.first + self.count

    @property
    def stored(self) -> bool:
        """Whether the pages are bytes in an input as they are (``page``): copy them."""
        return self.kind == "page"

    @property
    def blank(self) -> bool:
        """Whether the pages read as zeros (``absent`` or ``zero``): nothing to copy."""
        return self.kind in ("absent", "zero")


#: ENCODINGS position of each page code's top byte (ZERO and ABSENT are told apart whole).
_KIND_ENCODING = np.full(256, _PAGE, dtype=np.uint8)
_KIND_ENCODING[KIND_ZLIB] = ENCODINGS.index("zlib")
_KIND_ENCODING[KIND_SCRATCH] = ENCODINGS.index("xbzrle")
_KIND_ENCODING[KIND_FILL] = ENCODINGS.index("fill")


def _code(kind: int, offset: int) -> int:
    return (kind << KIND_SHIFT) | offset


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
    def names(self) -> list[str]:
        """The blocks indexed, in the order the stream announced them."""
        return list(self.loc)

    def __contains__(self, name: object) -> bool:
        return name in self.loc

    def npages(self, name: str) -> int:
        """Pages of block ``name``."""
        return self.loc[name].npages

    def runs(self, name: str, first: int = 0, count: int | None = None) -> Iterator[PageRun]:
        """Pages ``first .. first + count - 1`` of block ``name`` (all of it by default),
        in order, as runs of pages that are alike.

        Every reader of the index reads through here: ``page`` runs are
        pages stored raw in one input at a constant stride (the page size for
        mapped-ram, record header plus page otherwise), to be copied with one
        strided copy; ``absent`` and ``zero`` runs read as zeros; the other
        kinds (``zlib``, ``xbzrle``, ``fill``) are read with :meth:`read_page`.
        """
        loc = self.loc[name]
        end = loc.npages if count is None else min(first + count, loc.npages)
        pending: PageRun | None = None
        for run in self._runs(loc, first, end):
            if pending is not None and _joins(pending, run):
                pending = pending._replace(count=pending.count + run.count)
                continue
            if pending is not None:
                yield pending
            pending = run
        if pending is not None:
            yield pending

    def _runs(self, loc: PageMap, first: int, end: int) -> Iterator[PageRun]:
        """The runs of each allocated chunk (and of the chunks never allocated) in range."""
        pos = first
        while pos < end:
            c = pos >> CHUNK_SHIFT
            base = c << CHUNK_SHIFT
            stop = min(end, base + CHUNK)
            arr = loc.chunks.get(c)
            if arr is None:
                yield PageRun(pos, stop - pos, "absent")  # no page of the chunk was recorded
            else:
                yield from self._chunk_runs(pos, arr[pos - base : stop - base])
            pos = stop

    def _chunk_runs(self, first: int, arr: np.ndarray) -> Iterator[PageRun]:
        kinds = arr >> np.uint64(KIND_SHIFT)
        cls = _KIND_ENCODING[kinds]
        cls[arr == ZERO] = _ZERO
        cls[arr == ABSENT] = _ABSENT
        offs = (arr & np.uint64(OFFSET_MASK)).astype(np.int64)
        # A run breaks where the kind changes; a page run also where the input
        # changes, where offsets do not grow, or where the stride changes.
        br = np.ones(len(arr), dtype=bool)
        if len(arr) > 1:
            strides = np.diff(offs)
            data = (cls[1:] == _PAGE) & (cls[:-1] == _PAGE)
            same = (cls[1:] == cls[:-1]) & (~data | ((kinds[1:] == kinds[:-1]) & (strides > 0)))
            br[1:] = ~same
            br[2:] |= data[1:] & data[:-1] & (strides[1:] != strides[:-1])
        starts = np.flatnonzero(br).tolist()
        ends = [*starts[1:], len(arr)]
        for s, e in zip(starts, ends):
            c = int(cls[s])
            if c != _PAGE:
                yield PageRun(first + s, e - s, ENCODINGS[c])
                continue
            off = int(offs[s])
            stride = int(offs[s + 1]) - off if e - s > 1 else self.page_size
            yield PageRun(first + s, e - s, "page", int(kinds[s]), off, stride)

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

    def read_pages(self, name: str, first: int, count: int) -> bytearray:
        """Pages ``first .. first + count - 1`` of block ``name`` (zeros where none was sent).

        A run of stored pages is one read and one strided copy; what was
        copied from a mapped input is let go of (it stays in the page cache).
        """
        ps = self.page_size
        out = bytearray(count * ps)
        view = np.frombuffer(out, dtype=np.uint8).reshape(count, ps) if count else None
        for run in self.runs(name, first, count):
            at = run.first - first
            if run.stored:
                source = self.inputs[run.input]
                span = (run.count - 1) * run.stride + ps
                if run.count == 1 or run.stride == ps:  # one contiguous piece of the input
                    out[at * ps : (at + run.count) * ps] = source.read_at(run.offset, span)
                else:
                    data = np.frombuffer(source.read_at(run.offset, span), dtype=np.uint8)
                    rows = np.lib.stride_tricks.as_strided(
                        data, shape=(run.count, ps), strides=(run.stride, 1)
                    )
                    view[at : at + run.count] = rows  # type: ignore[index]
                    del data, rows
                source.release(run.offset, run.offset + span)
            elif not run.blank:
                for page in range(run.first, run.end):
                    out[(page - first) * ps : (page - first + 1) * ps] = self.read_page(name, page)
        return out

    def read(self, name: str, offset: int, length: int) -> bytes:
        """``length`` bytes of block ``name`` from ``offset`` (pages no record gave read as
        zeros), a run of pages at a time (see :meth:`read_pages`)."""
        if length <= 0:
            return b""
        ps = self.page_size
        first = offset // ps
        last = -(-(offset + length) // ps)
        if offset < 0 or last > self.npages(name):
            raise UsageError(
                f"{length:#x} bytes at {offset:#x} are outside RAM block {name!r} "
                f"({self.npages(name) * ps:#x} bytes)"
            )
        data = self.read_pages(name, first, last - first)
        skip = offset - first * ps
        if skip == 0 and len(data) == length:
            return bytes(data)
        return bytes(memoryview(data)[skip : skip + length])

    def encoding_counts(self, name: str) -> dict[str, int]:
        """How many pages of the block are of each kind in :data:`ENCODINGS`."""
        counts = np.zeros(len(ENCODINGS), dtype=np.int64)
        npages = self.npages(name)
        for first in range(0, npages, CHUNK):
            n = min(CHUNK, npages - first)
            counts += np.bincount(self.kinds(name, first, n), minlength=len(ENCODINGS))
        return dict(zip(ENCODINGS, counts.tolist()))

    def kinds(self, name: str, first: int, count: int) -> np.ndarray:
        """What pages ``first .. first + count - 1`` of block ``name`` are, one ``uint8``
        per page: the position of its kind in :data:`ENCODINGS` (0 absent, 1 zero,
        2 page, 3 zlib, 4 xbzrle, 5 fill) — :meth:`runs` as an array, for counting."""
        codes = self.loc[name].take(first, count)
        out = _KIND_ENCODING[codes >> np.uint64(KIND_SHIFT)]
        out[codes == ZERO] = _ZERO
        out[codes == ABSENT] = _ABSENT
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
        out = []
        for run in self.runs(name):
            if run.kind == "absent":
                out.append((run.first, run.count))
                if len(out) == limit:
                    break
        return out

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.close()


def _joins(a: PageRun, b: PageRun) -> bool:
    """Whether run ``b`` continues run ``a`` (where the runs of two chunks meet)."""
    if a.kind != b.kind or a.end != b.first:
        return False
    if a.kind != "page":
        return True
    return a.input == b.input and a.stride == b.stride and b.offset == a.offset + a.count * a.stride
