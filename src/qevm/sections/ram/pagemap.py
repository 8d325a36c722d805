"""Per-page arrays allocated as pages arrive, and pages qevm had to compute.

:class:`PageMap` keeps one value per page of a RAM block in chunks of
:data:`CHUNK` pages (1 GiB of 4 KiB pages), allocated when a page in them is
first set, so what a block claims to be (a length field in the stream) costs
nothing until pages arrive.  :class:`ScratchPages` keeps the pages the page
index computed (XBZRLE results) in a temporary file.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

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
