"""``--diff B`` and ``--against DEST``: what differs, and whether the stream would load.

The contents come from :mod:`qevm.analysis` (a :class:`~qevm.analysis.diff.DiffReport`,
a check :class:`~qevm.analysis.problems.Report`); here they are only laid out.
Long lists stop at :data:`MAX_ROWS` rows and say how many more there are.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any

from .cpus import register_text
from .html import esc, hexa, human, table

if TYPE_CHECKING:
    from ..analysis.diff import DiffReport
    from ..analysis.problems import Report
    from .gather import ReportData

MAX_ROWS = 2000


def _more(n: int, what: str) -> str:
    if n <= MAX_ROWS:
        return ""
    return (
        f'<p class="muted">&hellip; and {n - MAX_ROWS} more {esc(what)} '
        "(<code>qevm diff --json</code> lists them all)</p>"
    )


def _val(v: Any) -> str:
    if isinstance(v, (int, bytes, bytearray)) and not isinstance(v, bool):
        text = register_text(v)
    elif isinstance(v, (list, tuple)):
        text = "[" + ", ".join(register_text(e) for e in v) + "]"
    else:
        text = "" if v is None else str(v)
    if len(text) > 80:
        return f'<code title="{esc(text)}">{esc(text[:77])}&hellip;</code>'
    return f"<code>{esc(text)}</code>"


def render_diff(data: ReportData) -> str:
    rep: DiffReport | None = data.diff
    if rep is None:
        return ""
    ps = data.grid.page_size
    changed = sum(m["length"] for m in rep.memory)
    verdict = "equal" if rep.equal else "differ"
    parts = [
        f'<p class="verdict {"good" if rep.equal else "bad"}" id="diff-verdict">'
        f"{esc(rep.a)} and {esc(rep.b)} {verdict}</p>",
        '<ul class="facts">'
        f"<li>{rep.pages_differing} of {rep.pages} pages differ ({human(rep.pages_differing * ps)})"
        f"</li><li>{len(rep.memory)} guest-physical ranges, {human(changed)}</li>"
        f"<li>{len(rep.devices)} device fields</li><li>{len(rep.cpus)} CPU registers</li>"
        f"<li>{len(rep.configuration)} configuration items, {len(rep.description)} description "
        "changes</li></ul>",
    ]
    if rep.memory:
        rows = []
        for m in rep.memory[:MAX_ROWS]:
            lo, n = m["gpa"], m["length"]
            rows.append(
                [
                    f'<a class="gpa" href="#addr={hexa(lo)}">{hexa(lo, 16)}</a>',
                    f"<code>{hexa(lo + n - 1, 16)}</code>",
                    f'<code>{hexa(n)}</code> <span class="muted">{human(n)}</span>',
                    esc(_backing(data, lo)),
                ]
            )
        parts.append(
            "<h3>Changed guest-physical memory</h3>"
            + '<div class="scroll">'
            + table(
                ["first", "last", "length", "block at first"],
                rows,
                class_="grid",
                id="changed-ranges",
            )
            + "</div>"
            + _more(len(rep.memory), "ranges")
        )
    if rep.ram:
        rows = [
            [
                esc(r["block"]),
                f"<code>{hexa(r['offset'])}</code>",
                f"<code>{hexa(r['length'])}</code>",
                esc(f"only in {r['only_in']}" if r.get("only_in") else ""),
            ]
            for r in rep.ram[:MAX_ROWS]
        ]
        parts.append(
            "<details><summary>Changed RAM by block</summary>"
            + table(["block", "offset", "length", ""], rows, class_="grid", id="changed-blocks")
            + _more(len(rep.ram), "block ranges")
            + "</details>"
        )
    if rep.cpus:
        rows = [
            [
                str(c["index"]),
                esc(c["register"] if c["register"] is not None else "(CPU only in one input)"),
                _val(c["a"]),
                _val(c["b"]),
            ]
            for c in rep.cpus[:MAX_ROWS]
        ]
        parts.append(
            "<h3>CPU registers</h3>"
            + table(["CPU", "register", "a", "b"], rows, class_="grid", id="changed-registers")
            + _more(len(rep.cpus), "registers")
        )
    if rep.devices:
        rows = [
            [
                esc(d["name"])
                + (
                    f' <span class="muted">#{d["instance_id"]}</span>'
                    if d.get("instance_id")
                    else ""
                ),
                f"<code>{esc(d['field'])}</code>",
                _val(d.get("a")),
                _val(d.get("b")),
            ]
            for d in rep.devices[:MAX_ROWS]
        ]
        parts.append(
            "<h3>Device fields</h3>"
            + '<div class="scroll">'
            + table(["section", "field", "a", "b"], rows, class_="grid", id="changed-fields")
            + "</div>"
            + _more(len(rep.devices), "fields")
        )
    if rep.configuration or rep.description:
        rows = [
            [esc("configuration"), esc(c["field"]), _val(c["a"]), _val(c["b"])]
            for c in rep.configuration
        ]
        rows += [
            [
                esc(d["name"]),
                esc(f"{d.get('change', '')} {d.get('path') or ''}"),
                _val(d.get("a")),
                _val(d.get("b")),
            ]
            for d in rep.description[:MAX_ROWS]
        ]
        parts.append(
            "<h3>Configuration and description</h3>"
            + table(["section", "what", "a", "b"], rows, class_="grid")
        )
    parts += [f'<p class="warn">{esc(w)}</p>' for w in rep.warnings]
    return "".join(parts)


def _backing(data: ReportData, gpa: int) -> str:
    """Which block and offset back ``gpa`` in the report's layout."""
    if data.memmap is None:
        return ""
    ranges = data.memmap.ranges
    i = bisect.bisect_right([r.gpa for r in ranges], gpa) - 1
    if i >= 0 and ranges[i].gpa <= gpa < ranges[i].end:
        r = ranges[i]
        return f"{r.block} +{hexa(r.offset + gpa - r.gpa)}"
    return ""


VERDICTS = {
    True: ("good", "loads: no load-time check fails"),
    False: ("bad", "does not load: QEMU stops at the first problem below"),
    None: ("unsure", "cannot tell: qevm cannot decide what is listed below"),
}


def render_check(data: ReportData) -> str:
    rep: Report | None = data.check
    if rep is None:
        return ""
    loads = rep.loads
    cls, text = VERDICTS[loads]
    if loads is None and not rep.problems:
        text = (
            "cannot tell: nothing fails in what the destination is known by, but that is not "
            "all QEMU checks"
        )
    kinds = " + ".join(rep.destination_kinds) or "?"
    parts = [
        f'<p class="verdict {cls}" id="check-verdict" data-loads="{esc(loads)}">{esc(text)}</p>',
        f"<p>source {esc(rep.source)} &rarr; destination {esc(rep.destination)} "
        f'<span class="muted">({esc(kinds)})</span></p>',
    ]
    if rep.problems:
        items = []
        for p in rep.problems:
            where = (p.section or "") + (f" #{p.instance_id}" if p.instance_id else "")
            extra = "".join(f"<li>{esc(d)}</li>" for d in p.details)
            items.append(
                f'<li class="problem{"" if p.certain else " uncertain"}" data-kind="{esc(p.kind)}">'
                f'<div><strong>{esc(where)}</strong> <span class="badge">{esc(p.kind)}</span>'
                + ("" if p.certain else ' <span class="badge">not certain</span>')
                + (
                    f' <span class="muted">at {hexa(p.offset)}</span>'
                    if p.offset is not None
                    else ""
                )
                + f"</div><div>{esc(p.message)}</div>"
                + (f'<ul class="details">{extra}</ul>' if extra else "")
                + (f'<div class="qemu">QEMU: <code>{esc(p.qemu)}</code></div>' if p.qemu else "")
                + "</li>"
            )
        parts.append(f'<ol class="problems" id="check-problems">{"".join(items)}</ol>')
    if rep.warnings:
        parts.append(
            "<h4>Notes</h4><ul>" + "".join(f"<li>{esc(w)}</li>" for w in rep.warnings) + "</ul>"
        )
    return "".join(parts)
