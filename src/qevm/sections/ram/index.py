"""The page index: where the latest content of every RAM page lives.

One ``uint64`` per target page and block (0.2% of guest RAM): the absolute
offset of the page's bytes in one of the inputs (the main stream, or an extra
multifd channel), or a code for "zero", "not in the stream", a zlib page, a
page rebuilt from XBZRLE deltas (kept in a scratch file), or a page QEMU
filled with a non-zero byte.  Records are applied in stream order, so the
last copy of a page wins, zero pages included.
"""

from __future__ import annotations

import tempfile
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import FormatError
from . import xbzrle
from .consumer import PageConsumer

if TYPE_CHECKING:
    from ...source.base import Source
    from ...wire import Reader
    from .records import RamBlock

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


def _code(kind: int, offset: int) -> int:
    return (kind << KIND_SHIFT) | offset


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

    def __init__(self, page_size: int, inputs: list[Source]) -> None:
        super().__init__(page_size)
        self.shift = page_size.bit_length() - 1
        #: inputs[0] is the main stream; further ones are multifd channels.
        self.inputs = inputs
        self.loc: dict[str, np.ndarray] = {}
        self._scratch: ScratchPages | None = None
        #: Round in which each page was last set (only with extra channels).
        self.epochs: dict[str, np.ndarray] | None = None

    def track_epochs(self) -> None:
        """Remember per page the round it came in, to merge multifd channels."""
        self.epochs = {}

    # -- building -------------------------------------------------------------
    def add_block(self, block: RamBlock) -> None:
        npages = -(-block.used_length // self.page_size)
        old = self.loc.get(block.name)
        if old is not None and len(old) == npages:
            return
        arr = np.full(npages, ABSENT, dtype=np.uint64)
        if old is not None:
            n = min(len(old), npages)
            arr[:n] = old[:n]
        self.loc[block.name] = arr
        if self.epochs is not None:
            self.epochs[block.name] = np.zeros(npages, dtype=np.uint32)

    def _stamp(self, name: str, pages: Any) -> None:
        if self.epochs is not None:
            self.epochs[name][pages] = self.epoch

    def zero(self, block: RamBlock, addr: int, fill: int = 0) -> None:
        i = addr >> self.shift
        self.loc[block.name][i] = ZERO if fill == 0 else _code(KIND_FILL, fill)
        self._stamp(block.name, i)

    def zero_run(self, block: RamBlock, addrs: np.ndarray) -> None:
        pages = addrs >> np.uint64(self.shift)
        self.loc[block.name][pages] = ZERO
        self._stamp(block.name, pages)

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
        self.loc[block.name][pages] = codes
        self._stamp(block.name, pages)

    def zlib_page(self, block: RamBlock, addr: int, offset: int) -> None:
        """A zlib stream whose u32 length is at ``offset``, data right after it."""
        i = addr >> self.shift
        self.loc[block.name][i] = _code(KIND_ZLIB, offset)
        self._stamp(block.name, i)

    def computed(self, block: RamBlock, addr: int, data: bytes) -> None:
        """A page whose content qevm computed (XBZRLE, multifd compression)."""
        if self._scratch is None:
            self._scratch = ScratchPages(self.page_size)
        arr = self.loc[block.name]
        i = addr >> self.shift
        cur = int(arr[i])
        slot = (
            cur & OFFSET_MASK
            if cur >> KIND_SHIFT == KIND_SCRATCH and arr[i] not in (ABSENT, ZERO)
            else None
        )
        arr[i] = _code(KIND_SCRATCH, self._scratch.put(slot, data))
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
        arr = self.loc[block.name]
        n = len(arr)
        bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")[:n]
        slots = np.arange(n, dtype=np.uint64) * np.uint64(self.page_size) + np.uint64(pages_offset)
        if src:
            slots |= np.uint64(src << KIND_SHIFT)
        arr[:] = np.where(bits.astype(bool), slots, ZERO)

    # -- extra connections --------------------------------------------------------
    def _newer(self, name: str, page: int, epoch: int) -> bool:
        """Whether a channel page of round ``epoch`` replaces what the page holds."""
        if self.epochs is None:
            return True
        ep = self.epochs[name]
        if ep[page] > epoch and self.loc[name][page] != ABSENT:
            return False
        ep[page] = epoch
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

    def computed_pages(self, name: str) -> list[int]:
        """Pages whose bytes must be computed (zlib, XBZRLE, filled)."""
        kinds = self.loc[name] >> np.uint64(KIND_SHIFT)
        return np.flatnonzero((kinds >= KIND_ZLIB) & (kinds <= KIND_FILL)).tolist()

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

    def encodings(self, name: str) -> np.ndarray:
        """Per page: index into :data:`ENCODINGS`."""
        arr = self.loc[name]
        kinds = (arr >> np.uint64(KIND_SHIFT)).astype(np.uint16)
        out = np.full(len(arr), 2, dtype=np.uint8)  # raw page
        out[kinds == KIND_ZLIB] = 3
        out[kinds == KIND_SCRATCH] = 4
        out[kinds == KIND_FILL] = 5
        out[arr == ZERO] = 1
        out[arr == ABSENT] = 0
        return out

    def data_runs(self, name: str) -> Iterator[tuple[int, int, int, int]]:
        """Runs of pages stored raw: ``(first_page, count, input, first_offset, stride)``.

        Consecutive pages whose bytes sit at a constant stride in one input
        (stride = page size for mapped-ram, header + page otherwise) form one
        run, so they can be copied with one vectored write.
        """
        arr = self.loc[name]
        kinds = arr >> np.uint64(KIND_SHIFT)
        raw = np.flatnonzero(kinds < np.uint64(MAX_INPUTS))
        if not len(raw):
            return
        codes = arr[raw]
        offs = (codes & np.uint64(OFFSET_MASK)).astype(np.int64)
        # A run breaks where pages or inputs are not consecutive, or where
        # the stride between data offsets changes.
        br = np.ones(len(raw), dtype=bool)
        if len(raw) > 1:
            strides = np.diff(offs)
            cont = (np.diff(raw) == 1) & (np.diff(kinds[raw].astype(np.int64)) == 0) & (strides > 0)
            br[1:] = ~cont
            br[2:] |= strides[1:] != strides[:-1]
        starts = np.flatnonzero(br)
        ends = np.append(starts[1:], len(raw))
        for s, e in zip(starts.tolist(), ends.tolist()):
            first = int(codes[s])
            kind, off = first >> KIND_SHIFT, first & OFFSET_MASK
            stride = (
                int(codes[s + 1] & np.uint64(OFFSET_MASK)) - off if e - s > 1 else self.page_size
            )
            yield int(raw[s]), e - s, kind, off, stride

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.close()
