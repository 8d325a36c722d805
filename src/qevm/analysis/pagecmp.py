"""Comparing two inputs' RAM pages, whatever each was read from.

Two files are compared byte for byte through their page indexes: pages zero
(or never sent) on both sides are equal without a read; around the others a
window of pages is read from each side (runs of pages at once, see
:meth:`~qevm.sections.ram.index.PageIndex.read_pages`) and compared as rows,
and what was read is let go of as the comparison moves on, so memory stays
bounded whatever the guest.
When an input came through a pipe or a decompressor its pages were reduced
to digests as they passed (:mod:`.pages`); then both sides compare digests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..sections.ram.index import ENCODINGS
from .pages import Digests, differing_runs, from_index

if TYPE_CHECKING:
    from ..migration import Migration

#: Pages compared at once (read from both inputs, then compared as rows).
WINDOW = 1024
#: :meth:`~qevm.sections.ram.index.PageIndex.kinds` of pages that read as zeros.
_BLANK_KINDS = (ENCODINGS.index("absent"), ENCODINGS.index("zero"))


class IndexPages:
    """A file's RAM through its page index."""

    def __init__(self, mig: Migration) -> None:
        self.mig = mig
        self.index = mig.page_index
        self.page_size = self.index.page_size
        self.npages = {name: self.index.npages(name) for name in self.index.names()}
        self.absent = {name: self.index.encoding_counts(name)["absent"] for name in self.npages}
        self._blank: dict[str, np.ndarray] = {}
        self._digests: Digests | None = None

    def read(self, name: str, offset: int, length: int) -> bytes:
        """Block bytes, for :func:`~qevm.views.memmap.layout`."""
        return self.index.read(name, offset, length)

    def blank_mask(self, name: str) -> np.ndarray:
        """Per page: True where it is zero or was never sent."""
        mask = self._blank.get(name)
        if mask is None:
            mask = np.isin(self.index.kinds(name, 0, self.npages[name]), _BLANK_KINDS)
            self._blank[name] = mask
        return mask

    def pages(self, name: str, first: int, count: int) -> np.ndarray:
        """``count`` pages from ``first`` as rows (zeros past the block's end or for a block
        this input does not have)."""
        ps = self.page_size
        out = np.zeros((count, ps), dtype=np.uint8)
        have = max(0, min(count, self.npages.get(name, 0) - first))
        if have:
            data = self.index.read_pages(name, first, have)
            out[:have] = np.frombuffer(data, dtype=np.uint8).reshape(have, ps)
        return out

    def digests(self) -> Digests:
        if self._digests is None:
            self._digests = from_index(self.mig, self.index)
        return self._digests


Pages = IndexPages | Digests


def block_sizes(p: Pages) -> dict[str, int]:
    """Pages per block."""
    if isinstance(p, IndexPages):
        return dict(p.npages)
    return {name: len(arr) for name, arr in p.blocks.items()}


def zero_digest(p: Pages) -> int:
    return p.digests().zero if isinstance(p, IndexPages) else p.zero


def differing(
    a: Pages, na: str, fa: int, b: Pages, nb: str, fb: int, n: int
) -> list[tuple[int, int]]:
    """``(first, count)`` runs among ``n`` pages (from page ``fa`` of block ``na`` in
    ``a`` and page ``fb`` of ``nb`` in ``b``) whose contents differ."""
    if isinstance(a, IndexPages) and isinstance(b, IndexPages):
        return _direct(a, na, fa, b, nb, fb, n)
    da = a.digests() if isinstance(a, IndexPages) else a
    db = b.digests() if isinstance(b, IndexPages) else b
    zero = da.zero
    return differing_runs(
        _slice(da.blocks.get(na), fa, n, zero), _slice(db.blocks.get(nb), fb, n, zero), zero
    )


def _slice(arr: np.ndarray | None, first: int, n: int, fill: object) -> np.ndarray:
    """``n`` entries from ``first`` (``fill`` past the end or for a missing block)."""
    dtype = np.uint64 if not isinstance(fill, bool) else bool
    if arr is None:
        return np.full(n, fill, dtype=dtype)
    part = arr[first : first + n]
    if len(part) < n:
        part = np.concatenate([part, np.full(n - len(part), fill, dtype=dtype)])
    return part


def _direct(
    a: IndexPages, na: str, fa: int, b: IndexPages, nb: str, fb: int, n: int
) -> list[tuple[int, int]]:
    """Compare the pages that are not zero on both sides, a window of pages at a time
    (the page index reads runs of them at once and lets go of what it read)."""
    za = _slice(a.blank_mask(na) if na in a.npages else None, fa, n, True)
    zb = _slice(b.blank_mask(nb) if nb in b.npages else None, fb, n, True)
    work = np.flatnonzero(~(za & zb))
    hits: list[np.ndarray] = []
    i = 0
    while i < len(work):
        lo = int(work[i])
        j = int(np.searchsorted(work, lo + WINDOW))
        hi = int(work[j - 1]) + 1
        # (pages zero on both sides in between read as zeros on both: equal)
        pa = a.pages(na, fa + lo, hi - lo).view(np.uint64)
        pb = b.pages(nb, fb + lo, hi - lo).view(np.uint64)
        hits.append(np.flatnonzero((pa != pb).any(axis=1)) + lo)
        del pa, pb
        i = j
    if not hits:
        return []
    arr = np.concatenate(hits)
    if not len(arr):
        return []
    breaks = np.flatnonzero(np.diff(arr) != 1) + 1
    return [(int(r[0]), len(r)) for r in np.split(arr, breaks)]
