"""The overview (machine, what the stream says of its QEMU, sizes, warnings and errors)
and the RAM block table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .html import esc, hexa, human, size_text, table
from .ramgrid import KINDS

if TYPE_CHECKING:
    from .gather import ReportData


def _dl(items: list[tuple[str, str]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def render_overview(data: ReportData) -> str:
    o = data.overview
    items: list[tuple[str, str]] = [
        ("file", f'<code>{esc(o["file"])}</code> <span class="muted">{esc(o["container"])}</span>'),
    ]
    for k, v in o["container_info"].items():
        items.append((esc(k), esc(v)))
    machine = esc(o["machine"] or "(no configuration section)")
    if o["family"]:
        machine += f' <span class="muted">({esc(o["family"])} layout)</span>'
    items += [
        ("machine", f'<strong id="machine">{machine}</strong>'),
        ("page size", esc(o["page_size"])),
        ("capabilities", esc(", ".join(o["capabilities"]) or "(none)")),
        ("stream", size_text(o["stream_bytes"])),
        ("RAM", f"{size_text(o['ram_bytes'])} in {o['ram_blocks']} blocks"),
        ("device state", f"{size_text(o['device_bytes'])} in {o['device_sections']} sections"),
    ]
    if o["uuid"]:
        items.append(("UUID", f"<code>{esc(o['uuid'])}</code>"))
    desc = o["description"]
    if desc is not None:
        offset, length, error = desc
        text = f"{length} bytes at {hexa(offset)}"
        if error is not None:
            text += f' <span class="err">unreadable: {esc(error)}</span>'
        items.append(("description", text))
    else:
        items.append(
            (
                "description",
                "none in the stream" + (" (one was given)" if o["description_supplied"] else ""),
            )
        )
    if data.cpus:
        arches = ", ".join(dict.fromkeys(c.arch for c in data.cpus))
        items.append(("CPUs", f"{len(data.cpus)} ({esc(arches)})"))
    parts = [_dl(items)]
    rows = [[esc(evidence), esc(conclusion)] for evidence, conclusion in o["provenance"]]
    parts.append(
        "<h3>What the stream says about the QEMU that wrote it</h3>"
        + table(["in the stream", "means"], rows, class_="grid", id="provenance")
    )
    if o["commands"]:
        rows = [
            [f"<code>{hexa(off)}</code>", esc(name), esc(_info(info))]
            for off, name, info in o["commands"]
        ]
        parts.append("<h3>Commands</h3>" + table(["offset", "command", ""], rows, class_="grid"))
    parts.append(_problems(data))
    parts.append(_sections(o["sections"]))
    return "".join(parts)


def _info(info: Any) -> str:
    if not info:
        return ""
    if isinstance(info, dict):
        return ", ".join(f"{k} {v}" for k, v in info.items())
    return str(info)


def _problems(data: ReportData) -> str:
    o = data.overview
    lines = []
    for _offset, _section, msg in o["errors"]:
        lines.append(f'<li class="err">error: {esc(msg)}</li>')
    for off, n in o["unreadable"]:
        lines.append(
            f'<li class="err">{n} bytes at {hexa(off)} could not be read; reading went on at '
            "the next record</li>"
        )
    for off, n in o["trailing"]:
        lines.append(f'<li class="warn">{n} bytes at {hexa(off)} after the stream</li>')
    for w in o["warnings"]:
        lines.append(f'<li class="warn">warning: {esc(w)}</li>')
    if data.memmap is not None:
        lines += [f'<li class="note">layout: {esc(n)}</li>' for n in data.memmap.notes]
    if data.memmap_error:
        lines.append(f'<li class="warn">layout: {esc(data.memmap_error)}</li>')
    if not lines:
        return '<p class="good" id="problems">read completely: no errors, no warnings</p>'
    return (
        '<h3>Errors and warnings</h3><ul class="problems-list" id="problems">'
        + "".join(lines)
        + "</ul>"
    )


def _sections(sections: list[dict[str, Any]]) -> str:
    rows = []
    for s in sections:
        rows.append(
            [
                str(s["id"]),
                esc(s["name"]),
                str(s["instance_id"]),
                str(s["version"]),
                esc(s["kind"]),
                f"<code>{hexa(s['offset'])}</code>",
                str(s["length"]),
                esc(s["records"])
                + (f' <span class="err">{esc(s["error"])}</span>' if s["error"] else ""),
            ]
        )
    return (
        f"<details><summary>Sections ({len(sections)})</summary>"
        + table(
            ["id", "name", "inst", "ver", "kind", "offset", "length", "records"],
            rows,
            class_="grid",
            id="sections",
        )
        + "</details>"
    )


def render_blocks(data: ReportData) -> str:
    """Every RAM block: size, where it is mapped, what its pages are."""
    mig = data.mig
    index = None
    try:
        index = mig.page_index
    except Exception:  # noqa: BLE001 - not indexed: no page counts
        index = None
    where: dict[str, list[str]] = {}
    if data.memmap is not None:
        for r in data.memmap.ranges:
            where.setdefault(r.block, []).append(
                f"{hexa(r.gpa, 16)}\u2013{hexa(r.end - 1, 16)}"
                + (f" (+{hexa(r.offset)})" if r.offset else "")
            )
    rows = []
    for b in mig.ram_blocks:
        counts = index.encoding_counts(b.name) if index is not None and b.name in index.loc else {}
        ps = mig.page_size or 4096
        npages = -(-b.used_length // ps)
        rows.append(
            [
                f'<span class="block-name">{esc(b.name)}</span>',
                f'<code>{hexa(b.used_length)}</code> <span class="muted">'
                f"{human(b.used_length)}</span>",
                "<br>".join(esc(w) for w in where.get(b.name, []))
                or '<span class="muted">not mapped</span>',
                _bar(counts, npages, b.in_stream),
                esc(", ".join(f"{k} {v}" for k, v in counts.items() if v))
                if b.in_stream
                else "not in the stream (x-ignore-shared)",
            ]
        )
    return table(
        ["block", "size", "guest-physical", "pages", ""], rows, class_="grid", id="ram-blocks"
    )


#: The page index's encodings as map kinds (for the bar colours).
_KIND_OF = {
    "absent": "absent",
    "zero": "zero",
    "page": "data",
    "zlib": "zlib",
    "xbzrle": "xbzrle",
    "fill": "fill",
}


def _bar(counts: dict[str, int], npages: int, in_stream: bool) -> str:
    """A stacked bar of the block's pages by kind."""
    width = 160
    if not in_stream:
        counts = {"shared": npages}
    total = max(sum(counts.values()), 1)
    x = 0.0
    rects = []
    for k, n in counts.items():
        if not n:
            continue
        w = width * n / total
        cls = KINDS.index(_KIND_OF.get(k, k))
        rects.append(f'<rect class="c{cls}" x="{x:.1f}" y="0" width="{w:.1f}" height="10"/>')
        x += w
    return f'<svg class="bar" width="{width}" height="10">{"".join(rects)}</svg>'
