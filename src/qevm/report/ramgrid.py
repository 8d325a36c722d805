"""The RAM map's contents: guest-physical space cut into cells, each cell's pages counted.

Guest-physical space is drawn as rows of :data:`COLUMNS` cells of one size
(a power of two, at least a page), chosen so that the whole map has at most
:data:`MAX_CELLS` cells; long stretches with nothing in them (the PCI hole
of a small guest, the space between RAM and 64-bit BARs) are left out of the
rows and shown as gaps.  RAM blocks the layout does not map into
guest-physical memory (option ROMs, firmware blobs) get rows of their own,
by block offset.

Every cell holds :data:`ZOOM` fine cells (at least a page each) for the
zoomed view.  Page kinds are counted per fine cell straight from the page
index with numpy: a mapped range's page kinds (one byte per page) are viewed
as a table of fine cells by pages and counted with one comparison per kind,
so a multi-GiB guest costs a few array passes, never a Python loop per page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..sections.ram.index import ENCODINGS

if TYPE_CHECKING:
    from ..sections.ram.index import PageIndex
    from ..sections.ram.records import RamBlock

#: What a cell can show, in class-number order (``c0`` .. ``c8`` in the page).
KINDS = ("hole", "absent", "zero", "data", "fill", "zlib", "xbzrle", "shared", "mmio")
HOLE, ABSENT, ZERO, DATA, FILL, ZLIB, XBZRLE, SHARED, MMIO = range(len(KINDS))
#: Kinds of pages that carry bytes (a cell with any of them is drawn as its main one).
CONTENT = (DATA, FILL, ZLIB, XBZRLE)
#: Kinds of RAM pages without bytes.
EMPTY = (ABSENT, ZERO, SHARED)
RAM_KINDS = (*EMPTY, *CONTENT)
#: Padding in page-kind arrays: no kind at all.
_NO_KIND = 255
#: The page index's encodings as map kinds.
_ENCODING_KIND = {
    "absent": ABSENT,
    "zero": ZERO,
    "page": DATA,
    "zlib": ZLIB,
    "xbzrle": XBZRLE,
    "fill": FILL,
}
_FROM_ENCODING = np.array([_ENCODING_KIND[e] for e in ENCODINGS], dtype=np.uint8)

COLUMNS = 64
#: 80 rows: room for firmware and ROM rows beside 64 rows of RAM.
MAX_CELLS = 5120
ZOOM = 64
#: Rows with nothing in them kept inside a segment (more are cut out as a gap).
GAP_ROWS = 4
#: Pages counted at a time (bounds the temporary arrays: a few MiB).
_STEP = 1 << 18
#: Largest cell tried (beyond it, scattered MMIO keeps rows apart whatever the size).
_MAX_CELL = 1 << 48


@dataclass(frozen=True)
class Piece:
    """``size`` bytes at ``addr`` of a segment's space are bytes ``offset..`` of ``block``."""

    addr: int
    size: int
    block: str
    offset: int
    kind: str = "ram"


@dataclass(frozen=True)
class Mmio:
    """A device's memory-mapped registers or memory at a guest-physical address."""

    addr: int
    #: None when the stream does not say (a BAR's size is not migrated).
    size: int | None
    label: str


@dataclass
class Segment:
    """Rows of cells over one stretch of an address space."""

    #: ``"gpa"`` (guest-physical) or ``"block"`` (one unmapped RAM block, by offset).
    space: str
    #: Address of the first row (a multiple of the row size).
    base: int
    rows: int
    #: Index of the segment's first cell in the whole map.
    first_cell: int = 0
    pieces: list[Piece] = field(default_factory=list)
    mmio: list[Mmio] = field(default_factory=list)
    #: The block, for ``"block"`` segments.
    block: str | None = None

    def end(self, cell: int) -> int:
        return self.base + self.rows * COLUMNS * cell


@dataclass
class MapGrid:
    """Cells and what their pages are."""

    page_size: int
    #: Bytes per cell and per fine cell.
    cell: int
    fine: int
    segments: list[Segment]
    #: Pages per kind, per fine cell (``(cells * zoom, len(KINDS))``).
    fine_counts: np.ndarray
    #: Per fine cell: 1 + the latest round any of its pages was written in (0: none).
    fine_rounds: np.ndarray
    #: Per fine cell: pages that differ in the compared input (None without a diff).
    fine_changed: np.ndarray | None = None

    @property
    def rounds(self) -> int:
        """1 + the latest round any page was written in (0: rounds not tracked)."""
        return int(self.fine_rounds.max()) if len(self.fine_rounds) else 0

    @property
    def zoom(self) -> int:
        return self.cell // self.fine

    @property
    def cells(self) -> int:
        return sum(s.rows for s in self.segments) * COLUMNS

    def counts(self) -> np.ndarray:
        """Pages per kind per cell."""
        return self.fine_counts.reshape(self.cells, self.zoom, len(KINDS)).sum(axis=1)

    def cell_rounds(self) -> np.ndarray:
        return self.fine_rounds.reshape(self.cells, self.zoom).max(axis=1)

    def cell_changed(self) -> np.ndarray | None:
        if self.fine_changed is None:
            return None
        return self.fine_changed.reshape(self.cells, self.zoom).sum(axis=1)

    def totals(self) -> dict[str, int]:
        """Pages of each kind over the whole map (gaps not counted)."""
        t = self.fine_counts.sum(axis=0)
        return {k: int(t[i]) for i, k in enumerate(KINDS)}


def classify(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cell (rows of ``counts``): the kind it is drawn as and a level 1..4.

    A cell with pages that carry bytes is drawn as the most common such kind,
    at a level by their share of its RAM pages (1: up to a quarter, ...,
    4: more than three quarters), so a lone data page among zero pages
    still shows.  Otherwise it is its most common RAM kind, else MMIO, else
    a hole (level 4 for all of these).
    """
    content = counts[:, CONTENT]
    ram = counts[:, RAM_KINDS].sum(axis=1)
    has_content = content.sum(axis=1)
    kind = np.full(len(counts), HOLE, dtype=np.uint8)
    level = np.full(len(counts), 4, dtype=np.uint8)
    empty_kind = np.array(EMPTY, dtype=np.uint8)[counts[:, EMPTY].argmax(axis=1)]
    content_kind = np.array(CONTENT, dtype=np.uint8)[content.argmax(axis=1)]
    kind[counts[:, MMIO] > 0] = MMIO
    kind[ram > 0] = empty_kind[ram > 0]
    sel = has_content > 0
    kind[sel] = content_kind[sel]
    share = np.where(ram > 0, has_content / np.maximum(ram, 1), 0)
    level[sel] = np.clip(np.ceil(share[sel] * 4), 1, 4).astype(np.uint8)
    return kind, level


# -- geometry -------------------------------------------------------------------------


def _row_spans(intervals: list[tuple[int, int]], row: int) -> list[tuple[int, int]]:
    """Rows ``[first, last]`` the intervals touch, runs closer than GAP_ROWS joined."""
    spans = sorted((lo // row, (hi - 1) // row) for lo, hi in intervals if hi > lo)
    out: list[list[int]] = []
    for first, last in spans:
        if out and first - out[-1][1] - 1 <= GAP_ROWS:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([first, last])
    return [(a, b) for a, b in out]


def _cell_count(intervals: list[tuple[int, int]], blocks: list[int], cell: int) -> int:
    row = cell * COLUMNS
    rows = sum(b - a + 1 for a, b in _row_spans(intervals, row))
    rows += sum(max(1, -(-size // row)) for size in blocks)
    return rows * COLUMNS


def choose_cell(intervals: list[tuple[int, int]], blocks: list[int], page_size: int) -> int:
    """The smallest power-of-two cell size (a page at least) giving at most MAX_CELLS."""
    total = sum(hi - lo for lo, hi in intervals) + sum(blocks)
    cell = page_size
    while cell * MAX_CELLS < total:
        cell *= 2
    best = cell
    while cell <= _MAX_CELL:
        n = _cell_count(intervals, blocks, cell)
        if n <= MAX_CELLS:
            return cell
        best = cell
        cell *= 2
    return best


def layout_segments(
    pieces: list[Piece],
    mmio: list[Mmio],
    unmapped: list[tuple[str, int]],
    page_size: int,
) -> tuple[int, list[Segment]]:
    """The cell size and the segments: guest-physical ones, then one per unmapped block."""
    intervals = [(p.addr, p.addr + p.size) for p in pieces]
    intervals += [(m.addr, m.addr + (m.size or page_size)) for m in mmio]
    cell = choose_cell(intervals, [size for _, size in unmapped], page_size)
    row = cell * COLUMNS
    segments = []
    for first, last in _row_spans(intervals, row):
        lo, hi = first * row, (last + 1) * row
        segments.append(
            Segment(
                "gpa",
                lo,
                last - first + 1,
                pieces=[p for p in pieces if p.addr < hi and p.addr + p.size > lo],
                mmio=[m for m in mmio if m.addr < hi and m.addr + (m.size or page_size) > lo],
            )
        )
    for name, size in unmapped:
        segments.append(
            Segment(
                "block",
                0,
                max(1, -(-size // row)),
                pieces=[Piece(0, size, name, 0)],
                block=name,
            )
        )
    first = 0
    for s in segments:
        s.first_cell = first
        first += s.rows * COLUMNS
    return cell, segments


# -- contents -------------------------------------------------------------------------


def build_grid(
    index: PageIndex | None,
    blocks: dict[str, RamBlock],
    pieces: list[Piece],
    mmio: list[Mmio],
    unmapped: list[tuple[str, int]],
    page_size: int,
) -> MapGrid:
    """Count what every fine cell's pages are.

    ``index`` is the page index (None: every RAM page counts as absent);
    ``blocks`` the RAM blocks by name (x-ignore-shared ones count as shared).
    """
    cell, segments = layout_segments(pieces, mmio, unmapped, page_size)
    fine = max(page_size, cell // ZOOM)
    zoom = cell // fine
    ncells = sum(s.rows for s in segments) * COLUMNS
    nfine = ncells * zoom
    counts = np.zeros((nfine, len(KINDS)), dtype=np.int32)
    latest = np.zeros(nfine, dtype=np.uint16)
    ps = page_size
    per_fine = fine // ps
    # pages read at a time: whole fine cells, about a GiB of 4 KiB pages
    step = per_fine * max(1, _STEP // per_fine)
    for seg in segments:
        seg_fine0 = seg.first_cell * zoom
        for p in seg.pieces:
            first_page = p.offset // ps
            n = -(-(p.offset + p.size) // ps) - first_page
            start = (p.addr - seg.base) // ps
            done = 0
            while done < n:
                pos = start + done
                take = min(n - done, step - pos % step)
                kinds, rounds = _pages(index, blocks.get(p.block), p.block, first_page + done, take)
                _count(counts, latest, kinds, rounds, seg_fine0, pos, per_fine)
                done += take
        for m in seg.mmio:
            _add_mmio(counts, seg, m, zoom, fine, ps)
    return MapGrid(ps, cell, fine, segments, counts, latest)


def _count(
    counts: np.ndarray,
    latest: np.ndarray,
    kinds: np.ndarray,
    rounds: np.ndarray | None,
    seg_fine0: int,
    pos: int,
    per_fine: int,
) -> None:
    """Add pages ``pos ..`` of a segment (their kinds and rounds) to their fine cells.

    The pages are padded out to whole fine cells (the padding is no kind) so
    that a fine cell is a row: counting is one comparison per kind.
    """
    n = len(kinds)
    head = pos % per_fine
    rows = -(-(head + n) // per_fine)
    padded = np.full(rows * per_fine, _NO_KIND, dtype=np.uint8)
    padded[head : head + n] = kinds
    table = padded.reshape(rows, per_fine)
    lo = seg_fine0 + pos // per_fine
    for k in np.unique(kinds).tolist():
        counts[lo : lo + rows, k] += np.count_nonzero(table == k, axis=1)
    if rounds is not None:
        padded_rounds = np.zeros(rows * per_fine, dtype=np.uint16)
        padded_rounds[head : head + n] = rounds
        peak = padded_rounds.reshape(rows, per_fine).max(axis=1)
        np.maximum(latest[lo : lo + rows], peak, out=latest[lo : lo + rows])


def _pages(
    index: PageIndex | None, block: RamBlock | None, name: str, first: int, n: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Map kinds of ``n`` pages of a block from ``first``, and 1 + their round (0: unsent)."""
    if block is not None and not block.in_stream:
        return np.full(n, SHARED, dtype=np.uint8), None
    if index is None or name not in index.loc:
        return np.full(n, ABSENT, dtype=np.uint8), None
    npages = index.loc[name].npages
    take = max(0, min(n, npages - first))
    kinds = np.full(n, ABSENT, dtype=np.uint8)
    kinds[:take] = _FROM_ENCODING[index.kinds(name, first, take)]
    rounds = index.rounds(name, first, take)
    if rounds is None:
        return kinds, None
    latest = np.zeros(n, dtype=np.uint16)
    latest[:take] = np.where(kinds[:take] == ABSENT, 0, np.minimum(rounds, 0xFFFE) + 1)
    return kinds, latest


def _add_mmio(counts: np.ndarray, seg: Segment, m: Mmio, zoom: int, fine: int, ps: int) -> None:
    """Count the MMIO item's pages (one page when its size is not known) in its fine cells."""
    lo = max(m.addr, seg.base) - seg.base
    hi = min(m.addr + (m.size or ps), seg.end(fine * zoom)) - seg.base
    if hi <= lo:
        return
    rel = np.arange(lo // fine, (hi - 1) // fine + 1, dtype=np.int64)
    starts = np.maximum(rel * fine, lo)
    ends = np.minimum((rel + 1) * fine, hi)
    counts[seg.first_cell * zoom + rel, MMIO] += -(-(ends - starts) // ps)


def changed_per_fine_cell(
    grid: MapGrid,
    gpa_ranges: list[tuple[int, int]],
    block_ranges: dict[str, list[tuple[int, int]]],
) -> np.ndarray:
    """Pages per fine cell inside the given ranges: guest-physical ``(addr, length)`` for
    the guest-physical segments, per block ``(offset, length)`` for the others."""
    zoom, fine = grid.zoom, grid.fine
    out = np.zeros(grid.cells * zoom, dtype=np.int64)
    for seg in grid.segments:
        ranges = gpa_ranges if seg.space == "gpa" else block_ranges.get(seg.block or "", [])
        n = seg.rows * COLUMNS * zoom
        span = n * fine
        rel = []
        for addr, length in ranges:
            lo, hi = max(addr - seg.base, 0), min(addr + length - seg.base, span)
            if lo < hi:
                rel.append((lo, hi - lo))
        if not rel:
            continue
        covered = _covered_below(rel, np.arange(n + 1, dtype=np.int64) * fine)
        f0 = seg.first_cell * zoom
        out[f0 : f0 + n] = -(-np.diff(covered) // grid.page_size)
    return out


def _covered_below(ranges: list[tuple[int, int]], edges: np.ndarray) -> np.ndarray:
    """For each edge: how many bytes of the (disjoint) ``(start, length)`` ranges lie below."""
    rs = sorted(ranges)
    starts = np.array([a for a, _ in rs], dtype=np.int64)
    lens = np.array([n for _, n in rs], dtype=np.int64)
    before = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(lens)])
    k = np.searchsorted(starts, edges, side="right")  # ranges starting at or below the edge
    last = np.maximum(k - 1, 0)
    inside = np.minimum(np.maximum(edges - starts[last], 0), lens[last])
    return np.where(k > 0, before[last] + inside, 0)
