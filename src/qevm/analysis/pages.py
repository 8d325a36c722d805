"""One digest per RAM page, to compare guests of any size in bounded memory.

Each page's final content is reduced to a 64-bit BLAKE2b digest (8 bytes
per page: 16 MiB for an 8 GiB guest), from a file through its page index
(where each page's latest bytes are: every encoding, XBZRLE included), or
from a pipe or compressed input as the pages go by (:class:`PageDigests`).
Two streams' pages then compare digest against digest.  A page no record
gave reads as zeros, as it would in the destination's fresh RAM.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FormatError, UnsupportedError
from ..sections.ram.consumer import PageConsumer
from ..sections.ram.index import ABSENT_RUN, COMPUTED_RUN, DATA_RUN

if TYPE_CHECKING:
    from ..migration import Migration
    from ..sections.ram.blocks import RamBlock
    from ..sections.ram.index import PageIndex
    from ..wire import Reader

#: Bytes read from an input at a time when hashing pages from the page index.
CHUNK = 4 << 20
#: Blocks whose bytes are kept while digesting a stream (the layout reads them).
KEEP_BLOCKS = frozenset({"/rom@etc/acpi/tables"})
#: Largest kept block.
MAX_KEPT = 16 << 20


def digest(page: bytes | memoryview) -> int:
    """The 64-bit digest of one page."""
    return int.from_bytes(hashlib.blake2b(page, digest_size=8).digest(), "little")


class Digests:
    """Per block, a ``uint64`` digest per page (and which pages no record gave)."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.zero = digest(bytes(page_size))
        self.blocks: dict[str, np.ndarray] = {}
        self.absent: dict[str, int] = {}
        #: Bytes of the blocks in KEEP_BLOCKS (for the memory layout).
        self.kept: dict[str, bytearray] = {}

    def read(self, name: str, offset: int, length: int) -> bytes:
        """Bytes of a kept block (zeros elsewhere), for :func:`~qevm.views.memmap.layout`."""
        data = self.kept.get(name)
        if data is None:
            return bytes(length)
        return bytes(data[offset : offset + length]).ljust(length, b"\0")


def from_index(mig: Migration, index: PageIndex) -> Digests:
    """Digests of every page of ``mig``'s blocks, read through its page index."""
    ps = index.page_size
    out = Digests(ps)
    for block in mig.ram_blocks:
        name = block.name
        if name not in index.loc:
            continue
        arr = np.full(index.loc[name].npages, out.zero, dtype=np.uint64)
        absent = 0
        for run in index.runs(name):
            if run.kind == ABSENT_RUN:
                absent += run.count
            elif run.kind == COMPUTED_RUN:
                for page in range(run.first, run.first + run.count):
                    arr[page] = digest(index.read_page(name, page))
            elif run.kind == DATA_RUN:
                source, stride = index.inputs[run.input], run.stride
                first, count = run.first, run.count
                per = max(1, CHUNK // stride)
                for k in range(0, count, per):
                    n = min(per, count - k)
                    at = run.offset + k * stride
                    view = memoryview(source.read_at(at, (n - 1) * stride + ps))
                    for j in range(n):
                        arr[first + k + j] = digest(view[j * stride : j * stride + ps])
                    view.release()
                    # what was hashed need not stay in this process's memory
                    source.release(at, at + (n - 1) * stride + ps)
        out.blocks[name] = arr
        out.absent[name] = absent
        if name in KEEP_BLOCKS and block.used_length <= MAX_KEPT:
            out.kept[name] = bytearray(index.read(name, 0, block.used_length))
    return out


class PageDigests(PageConsumer):
    """A page consumer that digests pages as the stream goes by (pipes, compressed files)."""

    streaming = True
    uses_numpy = True
    tracks_pages = True

    def __init__(self, page_size: int, source: Any = None) -> None:
        super().__init__(page_size)
        self.digests = Digests(page_size)
        self._source = source
        self._shift = page_size.bit_length() - 1
        self._seen: dict[str, np.ndarray] = {}

    def add_block(self, block: RamBlock) -> None:
        if block.name in self.digests.blocks:
            return
        n = -(-block.used_length // self.page_size)
        self.digests.blocks[block.name] = np.full(n, self.digests.zero, dtype=np.uint64)
        self._seen[block.name] = np.zeros(n, dtype=bool)
        if block.name in KEEP_BLOCKS and block.used_length <= MAX_KEPT:
            self.digests.kept[block.name] = bytearray(block.used_length)

    def absent_pages(self, name: str) -> int | None:
        seen = self._seen.get(name)
        return None if seen is None else int((~seen).sum())

    def finish(self) -> Digests:
        for name, seen in self._seen.items():
            self.digests.absent[name] = int((~seen).sum())
        return self.digests

    def _set(self, name: str, addr: int, data: Any) -> None:
        i = addr >> self._shift
        self.digests.blocks[name][i] = digest(data)
        self._seen[name][i] = True
        kept = self.digests.kept.get(name)
        if kept is not None:
            kept[addr : addr + self.page_size] = data

    def zero(self, block: RamBlock, addr: int, fill: int = 0) -> None:
        if fill:
            self._set(block.name, addr, bytes((fill,)) * self.page_size)
            return
        i = addr >> self._shift
        self.digests.blocks[block.name][i] = self.digests.zero
        self._seen[block.name][i] = True
        kept = self.digests.kept.get(block.name)
        if kept is not None:
            kept[addr : addr + self.page_size] = bytes(self.page_size)

    def zero_run(self, block: RamBlock, addrs: np.ndarray) -> None:
        pages = addrs >> np.uint64(self._shift)
        self.digests.blocks[block.name][pages] = self.digests.zero
        self._seen[block.name][pages] = True
        kept = self.digests.kept.get(block.name)
        if kept is not None:
            for a in addrs.tolist():
                kept[a : a + self.page_size] = bytes(self.page_size)

    def page(self, block: RamBlock, addr: int, offset: int, r: Reader, src: int = 0) -> None:
        i = offset - r.base
        self._set(block.name, addr, memoryview(r.buf)[i : i + self.page_size])

    def page_run(
        self, block: RamBlock, addrs: np.ndarray, offsets: np.ndarray, r: Reader, src: int = 0
    ) -> None:
        view = memoryview(r.buf)
        ps = self.page_size
        for a, o in zip(addrs.tolist(), offsets.tolist()):
            i = o - r.base
            self._set(block.name, a, view[i : i + ps])

    def computed(self, block: RamBlock, addr: int, data: bytes) -> None:
        self._set(block.name, addr, data)

    def zlib_data(self, block: RamBlock, addr: int, data: bytes, offset: int) -> None:
        try:
            page = zlib.decompress(data)
        except zlib.error as e:
            raise FormatError(f"compressed page does not inflate: {e}", offset=offset) from None
        if len(page) != self.page_size:
            raise FormatError(f"compressed page inflates to {len(page)} bytes", offset=offset)
        self._set(block.name, addr, page)

    def xbzrle(self, block: RamBlock, addr: int, delta: bytes, offset: int) -> None:
        raise UnsupportedError(
            "XBZRLE pages need the page's earlier content: compare streams read from files",
            offset=offset,
        )

    def mapped_stream(self, block: RamBlock, bitmap: bytes, r: Reader) -> None:
        ps = self.page_size
        npages = block.used_length // ps
        bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")[:npages]
        self._seen[block.name][:npages] = True
        for i in range(npages):
            if bits[i]:
                self._set(block.name, i * ps, r.bytes(ps))
            else:
                r.skip(ps)


def differing_runs(a: np.ndarray, b: np.ndarray, zero: int) -> list[tuple[int, int]]:
    """``(first page, count)`` runs where two blocks differ (a shorter one reads as zeros)."""
    n = max(len(a), len(b))
    if len(a) < n:
        a = np.concatenate([a, np.full(n - len(a), zero, dtype=np.uint64)])
    if len(b) < n:
        b = np.concatenate([b, np.full(n - len(b), zero, dtype=np.uint64)])
    diff = np.flatnonzero(a != b)
    if not len(diff):
        return []
    breaks = np.flatnonzero(np.diff(diff) != 1) + 1
    return [(int(run[0]), len(run)) for run in np.split(diff, breaks)]


__all__ = ["Digests", "PageDigests", "differing_runs", "digest", "from_index"]
