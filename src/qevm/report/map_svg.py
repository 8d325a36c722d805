"""The RAM map as inline SVG (element ``ram-map``), its legend and the data its script reads.

Each cell is a ``rect`` whose classes say what it is drawn as in each view:
``cK`` its kind (:data:`~.ramgrid.KINDS`), ``lN`` the share of pages that carry
bytes (1: a quarter or less, 2, 3; none: more than three quarters), ``rN`` the
bucket of the latest round that wrote it, ``d`` when a compared input differs
there.  The page's script switches views by a class on the SVG, shows what a
cell holds on hover and zooms into a row; the cells are in the document
whatever the script does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .html import b64, esc, hexa, human, json_island
from .ramgrid import COLUMNS, KINDS, Segment, classify

if TYPE_CHECKING:
    from .gather import ReportData

PITCH = 11  # pixels from one cell to the next
CELL = 10
LABELS = 136  # left column: row addresses
HEAD = 18  # segment heading
GAP = 24  # a cut-out stretch of address space
LANE = 6  # block brackets, one lane each
TEXT = 12  # line height of block labels
ROUND_BUCKETS = 8

#: What each kind is called in the legend and tooltips.
KIND_TEXT = {
    "hole": "nothing mapped",
    "absent": "absent: no record gave the page",
    "zero": "zero page",
    "data": "data page",
    "fill": "filled with one non-zero byte",
    "zlib": "compressed (zlib)",
    "xbzrle": "rebuilt by qevm (XBZRLE delta, compressed multifd page)",
    "shared": "not in the stream (x-ignore-shared)",
    "mmio": "device memory (MMIO)",
}


@dataclass
class _Run:
    """Consecutive ranges of one block, for a label beside the rows."""

    block: str
    lo: int
    hi: int
    detail: str


def round_bucket(latest: np.ndarray, rounds: int) -> np.ndarray:
    """Colour bucket (0..ROUND_BUCKETS-1) of ``latest`` (1 + round; 0 never given)."""
    r = latest.astype(np.int64) - 1
    if rounds <= ROUND_BUCKETS:
        return np.maximum(r, 0)
    return np.clip(r * ROUND_BUCKETS // rounds, 0, ROUND_BUCKETS - 1)


def bucket_rounds(rounds: int) -> list[tuple[int, int]]:
    """``(first, last)`` round of each colour bucket."""
    if rounds <= ROUND_BUCKETS:
        return [(r, r) for r in range(rounds)]
    out = []
    for b in range(ROUND_BUCKETS):
        first = -(-b * rounds // ROUND_BUCKETS)
        last = -(-(b + 1) * rounds // ROUND_BUCKETS) - 1
        out.append((first, last))
    return out


def render_map(data: ReportData) -> str:
    """The SVG, then the data island for the page's script."""
    drawing = _Drawing(data)
    svg = drawing.svg()
    return svg + json_island("map-data", _island(data, drawing))


class _Drawing:
    """Lays out and writes the SVG: segments of rows, gaps between them, block labels."""

    def __init__(self, data: ReportData) -> None:
        self.data = data
        grid = self.grid = data.grid
        self.counts = grid.counts()
        self.kind, self.level = classify(self.counts)
        self.latest = grid.cell_rounds()
        self.bucket = round_bucket(self.latest, grid.rounds)
        self.changed = grid.cell_changed()
        self.row_bytes = grid.cell * COLUMNS
        self.runs = [_runs(s) for s in grid.segments]
        lanes = max((len(_lanes(r)) for r in self.runs if r), default=0)
        self.grid_right = LABELS + COLUMNS * PITCH + 4
        self.label_x = self.grid_right + lanes * LANE + 6
        longest = max((len(r.block) for runs in self.runs for r in runs), default=0)
        self.width = self.label_x + min(longest, 48) * 7 + 8
        #: y of each segment's first row
        self.seg_y: list[int] = []
        self.parts: list[str] = []

    def svg(self) -> str:
        grid = self.grid
        y = 0
        for i, seg in enumerate(grid.segments):
            if i:
                y = self._gap(grid.segments[i - 1], seg, y)
            y = self._segment(seg, self.runs[i], y)
        mode = "m-diff" if self.changed is not None else "m-kind"
        return (
            f'<svg id="ram-map" class="ram-map {mode}" xmlns="http://www.w3.org/2000/svg" '
            f'width="{self.width}" height="{y + 4}" viewBox="0 0 {self.width} {y + 4}" '
            f'data-cell="{hexa(grid.cell)}" data-fine="{hexa(grid.fine)}" '
            f'data-columns="{COLUMNS}" role="img" aria-label="guest-physical RAM map">'
            + "".join(self.parts)
            + '<rect id="map-select" class="select" x="0" y="0" width="0" height="0"/></svg>'
        )

    def _gap(self, prev: Segment, seg: Segment, y: int) -> int:
        """A band saying what lies between two segments."""
        if seg.space == "gpa":
            lo, hi = prev.end(self.grid.cell), seg.base
            text = (
                f"\u22ee  {hexa(lo, 16)} \u2013 {hexa(hi - 1, 16)}: {human(hi - lo)} "
                "with no RAM and no device memory the stream places (not drawn)"
            )
        elif prev.space == "gpa":
            text = "RAM blocks not mapped into guest-physical memory (by block offset)"
        else:
            return y + 4
        mid = y + GAP // 2
        self.parts.append(
            f'<g class="gap"><line x1="0" x2="{self.width}" y1="{mid}" y2="{mid}"/>'
            f'<text x="16" y="{mid + 4}">{esc(text)}</text></g>'
        )
        return y + GAP

    def _segment(self, seg: Segment, runs: list[_Run], y: int) -> int:
        """The rows of one segment (a heading first for guest-physical ones)."""
        attrs = f'data-space="{esc(seg.space)}" data-base="{hexa(seg.base)}" data-rows="{seg.rows}"'
        if seg.block is not None:
            attrs += f' data-block="{esc(seg.block)}"'
        self.parts.append(f'<g class="seg" {attrs}>')
        if seg.space == "gpa":
            last = seg.end(self.grid.cell) - 1
            head = f"guest-physical {hexa(seg.base, 16)} \u2013 {hexa(last, 16)}"
            self.parts.append(f'<text class="seg-head" x="0" y="{y + 13}">{esc(head)}</text>')
            y += HEAD
        self.seg_y.append(y)
        # an unmapped block's cells stop at its end
        limit = seg.rows * COLUMNS
        if seg.space == "block":
            size = seg.pieces[0].size if seg.pieces else 0
            limit = max(1, -(-size // self.grid.cell))
        prefix = "" if seg.space == "gpa" else "+"
        for row in range(seg.rows):
            ry = y + row * PITCH
            self.parts.append(
                f'<text class="row-addr" x="{LABELS - 8}" y="{ry + 9}">'
                f"{prefix}{hexa(seg.base + row * self.row_bytes, 16)}</text>"
            )
            cols = min(COLUMNS, limit - row * COLUMNS)
            first = seg.first_cell + row * COLUMNS
            self.parts.append("".join(self._cell(first + col, col, ry) for col in range(cols)))
        bottom = max(y + seg.rows * PITCH, self._labels(seg, runs, y))
        self.parts.append("</g>")
        return bottom + 6

    def _cell(self, c: int, col: int, y: int) -> str:
        cls = f"c{self.kind[c]}"
        if self.level[c] < 4:
            cls += f" l{self.level[c]}"
        if self.latest[c]:
            cls += f" r{self.bucket[c]}"
        if self.changed is not None and self.changed[c]:
            cls += " d"
        return (
            f'<rect class="{cls}" x="{LABELS + col * PITCH}" y="{y}" '
            f'width="{CELL}" height="{CELL}"/>'
        )

    def _labels(self, seg: Segment, runs: list[_Run], top: int) -> int:
        """Brackets beside the rows of each run of a block, and its name; the lowest y."""

        def row_y(addr: int) -> int:
            return top + (addr - seg.base) // self.row_bytes * PITCH

        for lane_no, lane in enumerate(_lanes(runs)):
            x = self.grid_right + lane_no * LANE
            for r in lane:
                y0, y1 = row_y(r.lo), row_y(r.hi - 1) + PITCH - 1
                self.parts.append(
                    f'<path class="bracket" d="M{x} {y0}h3V{y1}h-3">'
                    f"<title>{esc(r.detail)}</title></path>"
                )
        free_y = lowest = top
        for r in sorted(runs, key=lambda r: r.lo):
            ty = max(row_y(r.lo), free_y) + 9
            name = r.block if len(r.block) <= 48 else r.block[:47] + "\u2026"
            self.parts.append(
                f'<text class="block-label" x="{self.label_x}" y="{ty}">{esc(name)}'
                f"<title>{esc(r.detail)}</title></text>"
            )
            free_y = ty + TEXT - 9
            lowest = max(lowest, free_y)
        return lowest


def _runs(seg: Segment) -> list[_Run]:
    """The segment's pieces, consecutive ones of one block joined."""
    runs: list[_Run] = []
    for p in sorted(seg.pieces, key=lambda p: p.addr):
        detail = f"{hexa(p.addr)}-{hexa(p.addr + p.size - 1)}: {p.block} +{hexa(p.offset)} {p.kind}"
        if runs and runs[-1].block == p.block and runs[-1].hi == p.addr:
            runs[-1].hi = p.addr + p.size
            runs[-1].detail += "\n" + detail
        else:
            runs.append(_Run(p.block, p.addr, p.addr + p.size, detail))
    return runs


def _lanes(runs: list[_Run]) -> list[list[_Run]]:
    """Runs in lanes so that no two in a lane overlap in rows (greedy, by start)."""
    lanes: list[list[_Run]] = []
    for r in runs:
        for lane in lanes:
            if lane[-1].hi <= r.lo:
                lane.append(r)
                break
        else:
            lanes.append([r])
    return lanes


def _island(data: ReportData, drawing: _Drawing) -> dict[str, Any]:
    """What the script needs for hover and zoom (addresses as hex strings: JavaScript
    numbers lose 64-bit addresses)."""
    grid = data.grid
    seg_y, changed = drawing.seg_y, drawing.changed
    fine_kind, fine_level = classify(grid.fine_counts)
    fine_bucket = round_bucket(grid.fine_rounds, grid.rounds)
    fine = fine_kind | ((fine_level.astype(np.uint8) - 1) << 4)
    if grid.fine_changed is not None:
        fine = fine | ((grid.fine_changed > 0).astype(np.uint8) << 7)
    fine_round = np.where(grid.fine_rounds > 0, fine_bucket + 1, 0).astype(np.uint8)
    return {
        "pageSize": grid.page_size,
        "cell": hexa(grid.cell),
        "fine": hexa(grid.fine),
        "zoom": grid.zoom,
        "columns": COLUMNS,
        "geometry": {"pitch": PITCH, "cell": CELL, "labels": LABELS},
        "kinds": list(KINDS),
        "kindText": [KIND_TEXT[k] for k in KINDS],
        "segments": [
            {
                "space": s.space,
                "block": s.block,
                "base": hexa(s.base),
                "rows": s.rows,
                "firstCell": s.first_cell,
                "y": seg_y[i],
            }
            for i, s in enumerate(grid.segments)
        ],
        "ranges": [
            {
                "seg": i,
                "addr": hexa(p.addr),
                "size": hexa(p.size),
                "block": p.block,
                "offset": hexa(p.offset),
                "kind": p.kind,
            }
            for i, s in enumerate(grid.segments)
            for p in s.pieces
        ],
        "mmio": [
            {"addr": hexa(m.addr), "size": hexa(m.size) if m.size else None, "label": m.label}
            for m in data.mmio
        ],
        "counts": drawing.counts.ravel().tolist(),
        "latest": drawing.latest.tolist(),
        "changed": changed.tolist() if changed is not None else None,
        "rounds": grid.rounds,
        "roundLabels": data.round_labels,
        "buckets": bucket_rounds(grid.rounds),
        "fineCells": packed(fine.astype(np.uint8)),
        "fineRounds": packed(fine_round),
    }


def packed(a: np.ndarray) -> dict[str, str]:
    """A byte array for the script: run-length pairs ``(value, length - 1)`` when that is
    shorter (most of a map is long runs), else the bytes; base64 either way."""
    if len(a) == 0:
        return {"raw": ""}
    starts = np.flatnonzero(np.concatenate([[True], a[1:] != a[:-1]]))
    lengths = np.diff(np.append(starts, len(a)))
    pieces = (lengths + 255) // 256  # runs longer than 256 in pieces of 256
    values = np.repeat(a[starts], pieces)
    counts = np.full(len(values), 256, dtype=np.int64)
    counts[np.cumsum(pieces) - 1] = lengths - (pieces - 1) * 256
    if 2 * len(values) >= len(a):
        return {"raw": b64(a.tobytes())}
    pairs = np.empty(2 * len(values), dtype=np.uint8)
    pairs[0::2] = values
    pairs[1::2] = counts - 1
    return {"rle": b64(pairs.tobytes())}


def legend(data: ReportData) -> str:
    """Swatches with page totals, and the view switch."""
    grid = data.grid
    totals = grid.totals()
    ps = grid.page_size
    items = []
    for i, k in enumerate(KINDS):
        n = totals[k]
        if k == "hole":
            continue
        if not n and k not in ("zero", "data"):
            continue
        amount = f"{n} pages, {human(n * ps)}" if k != "mmio" else f"{len(data.mmio)} ranges"
        items.append(
            f'<li><svg class="sw" width="12" height="12"><rect class="c{i}" width="12" '
            f'height="12"/></svg>{esc(KIND_TEXT[k])} <span class="muted">({amount})</span></li>'
        )
    views = ['<label><input type="radio" name="view" value="kind"> page kinds</label>']
    if grid.rounds:
        views.append(
            '<label><input type="radio" name="view" value="round"> round last written</label>'
        )
    if grid.fine_changed is not None:
        views.append('<label><input type="radio" name="view" value="diff"> changed pages</label>')
    rounds = ""
    if grid.rounds:
        labels = data.round_labels
        sw = []
        for b, (first, last) in enumerate(bucket_rounds(grid.rounds)):
            name = f"round {first}" if first == last else f"rounds {first}\u2013{last}"
            if first == last and first < len(labels):
                name += f" ({labels[first]})"
            sw.append(
                f'<li><svg class="sw" width="12" height="12"><rect class="rs{b}" width="12" '
                f'height="12"/></svg>{esc(name)}</li>'
            )
        what = (
            "a round is one record of the RAM section (START, PART, END)"
            if labels
            else "a round ends at each multifd sync point"
        )
        rounds = (
            '<ul class="legend rounds-legend">' + "".join(sw) + "</ul>"
            f'<p class="muted rounds-legend">The round that last wrote any page of the cell; '
            f"{esc(what)}.</p>"
        )
    diff = ""
    if grid.fine_changed is not None:
        n = int(grid.fine_changed.sum())
        diff = (
            '<ul class="legend diff-legend"><li><svg class="sw" width="12" height="12">'
            '<rect class="dsw" width="12" height="12"/></svg>'
            f"pages that differ in {esc(data.diff.b if data.diff else '')} "
            f'<span class="muted">({n} pages, {human(n * ps)})</span></li></ul>'
        )
    return (
        '<div class="map-tools"><form class="views" id="map-views">'
        + "".join(views)
        + '</form><form class="goto" id="map-goto"><label>address '
        '<input id="goto-addr" name="addr" placeholder="0x..." size="20" '
        'spellcheck="false" autocomplete="off"></label> <button>show</button></form></div>'
        f'<ul class="legend kind-legend">{"".join(items)}</ul>'
        + rounds
        + diff
        + f'<p class="muted">One cell is {hexa(grid.cell)} bytes ({human(grid.cell)}, '
        f"{grid.cell // ps} pages), a row {hexa(grid.cell * COLUMNS)} "
        f"({human(grid.cell * COLUMNS)}); a faint cell holds data in only part of its pages. "
        "Hover for what a cell holds; click a row to zoom in "
        f"({grid.zoom}\u00d7, {human(grid.fine)} per cell).</p>"
    )
