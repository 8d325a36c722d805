"""Comparing two inputs' RAM pages, whatever each was read from.

Two files are compared byte for byte through their page indexes: pages zero
(or never sent) on both sides are equal without a read, every other pair is
read and compared (``memcmp``, faster than hashing), and what was read is let
go of as the comparison moves on, so memory stays bounded whatever the guest.
When an input came through a pipe or a decompressor its pages were reduced
to digests as they passed (:mod:`.pages`); then both sides compare digests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..sections.ram.index import ABSENT, KIND_SHIFT, MAX_INPUTS, OFFSET_MASK, ZERO
from .pages import Digests, differing_runs, from_index

if TYPE_CHECKING:
    from ..migration import Migration

#: Pages compared between two lets-go of the inputs' mapped pages.
RELEASE_EVERY = 2048


class IndexPages:
    """A file's RAM through its page index."""

    def __init__(self, mig: Migration) -> None:
        self.mig = mig
        self.index = mig.page_index
        self.page_size = self.index.page_size
        self.npages = {name: loc.npages for name, loc in self.index.loc.items()}
        self._zero: dict[str, np.ndarray] = {}
        self._digests: Digests | None = None
        self.absent = {}
        for name, loc in self.index.loc.items():
            n = loc.unset() + sum(int((arr == ABSENT).sum()) for _, arr in loc.items())
            self.absent[name] = n
        # mapped input ranges read since they were last let go of, per input
        self._touched: dict[int, list[int]] = {}
        self._since_release = 0

    def read(self, name: str, offset: int, length: int) -> bytes:
        """Block bytes, for :func:`~qevm.views.memmap.layout`."""
        return self.index.read(name, offset, length)

    def zero_mask(self, name: str) -> np.ndarray:
        """Per page: True where it is zero or was never sent."""
        mask = self._zero.get(name)
        if mask is None:
            loc = self.index.loc[name]
            mask = np.ones(loc.npages, dtype=bool)
            for first, arr in loc.items():
                mask[first : first + len(arr)] = (arr == ZERO) | (arr == ABSENT)
            self._zero[name] = mask
        return mask

    def page(self, name: str, i: int) -> bytes:
        code = int(self.index.loc[name][i])
        kind = code >> KIND_SHIFT
        if kind < MAX_INPUTS:
            off = code & OFFSET_MASK
            span = self._touched.setdefault(kind, [off, off])
            span[0], span[1] = min(span[0], off), max(span[1], off + self.page_size)
        return self.index.read_page(name, i)

    def let_go(self) -> None:
        """Drop the mapped pages read so far from this process's memory."""
        for kind, (lo, hi) in self._touched.items():
            self.index.inputs[kind].release(lo, hi)
        self._touched.clear()

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
    za = _slice(a.zero_mask(na) if na in a.npages else None, fa, n, True)
    zb = _slice(b.zero_mask(nb) if nb in b.npages else None, fb, n, True)
    zero = bytes(a.page_size)
    hits: list[int] = []
    work = np.flatnonzero(~(za & zb)).tolist()
    for k, i in enumerate(work):
        pa = zero if za[i] else a.page(na, fa + i)
        pb = zero if zb[i] else b.page(nb, fb + i)
        if pa != pb:
            hits.append(i)
        if k % RELEASE_EVERY == RELEASE_EVERY - 1:
            a.let_go()
            b.let_go()
    a.let_go()
    b.let_go()
    if not hits:
        return []
    arr = np.array(hits)
    breaks = np.flatnonzero(np.diff(arr) != 1) + 1
    return [(int(r[0]), len(r)) for r in np.split(arr, breaks)]
