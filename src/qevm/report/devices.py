"""Devices: the PCI functions and virtio devices as tables, then every device section
with its decoded views (``qevm devices``) and its fields."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..render.native import node_json
from .fields import fields_table
from .html import esc, hexa, human, table

if TYPE_CHECKING:
    from ..migration import Device
    from .gather import ReportData


def _anchor(section_id: int) -> str:
    return f"dev-{section_id}"


def render_devices(data: ReportData) -> str:
    mig = data.mig
    devices = mig.devices()
    ids = {(d.name, d.instance_id): d.section_id for d in devices}
    parts = []
    rep = data.devices
    if data.devices_error:
        parts.append(f'<p class="warn">device views not decoded: {esc(data.devices_error)}</p>')
    if rep is not None:
        j = data.devices_json
        if j.get("pci"):
            parts.append("<h3>PCI</h3>" + _pci_table(j["pci"], ids))
        if j.get("virtio"):
            parts.append("<h3>virtio</h3>" + "".join(_virtio(v, ids) for v in j["virtio"]))
        for note in rep.notes:
            parts.append(f'<p class="note">{esc(note)}</p>')
        for w in rep.warnings:
            parts.append(f'<p class="warn">{esc(w)}</p>')
    parts.append(
        f'<h3>Device sections <span class="muted">({len(devices)})</span></h3>'
        '<div class="dev-tools"><input id="dev-filter" placeholder="filter by name" '
        'spellcheck="false" autocomplete="off"> <button id="dev-open" type="button">'
        'open all</button> <button id="dev-close" type="button">close all</button></div>'
    )
    parts.append('<div id="device-list">')
    for dev in devices:
        parts.append(_section(dev, rep))
    parts.append("</div>")
    return "".join(parts)


def _link(section: str, instance: int, ids: dict[tuple[str, int], int]) -> str:
    sid = ids.get((section, instance))
    if sid is None:
        return esc(section)
    return f'<a href="#{_anchor(sid)}">{esc(section)}</a>'


def _pci_table(functions: list[dict[str, Any]], ids: dict[tuple[str, int], int]) -> str:
    rows = []
    for f in functions:
        bus = f.get("bus")
        addr = (
            f"{bus:02x}:{f['slot']:02x}.{f['function']}"
            if bus is not None
            else f"??:{f['slot']:02x}.{f['function']}"
        )
        ident = f"{f['vendor_id']:04x}:{f['device_id']:04x}"
        name = " ".join(x for x in (f.get("vendor"), f.get("device")) if x)
        cls = f.get("class_name") or ""
        bars = []
        for b in f.get("bars") or []:
            size = f" [{human(b['size'])}]" if b.get("size") else ""
            what = "I/O" if b["kind"] == "io" else b["kind"]
            mapped = "" if b.get("mapped") else " (not mapped)"
            bars.append(f"BAR{b['index']} {what} {hexa(b['address'])}{size}{mapped}")
        rom = f.get("rom")
        if rom:
            state = "enabled" if rom.get("enabled") else "disabled"
            size = f" [{human(rom['size'])}]" if rom.get("size") else ""
            bars.append(f"ROM {hexa(rom['address'])}{size} {state}")
        irq = f"pin {f['pin']} IRQ {f['irq']}" if f.get("pin") else ""
        caps = ", ".join(dict.fromkeys(c.get("name", "?") for c in f.get("capabilities") or []))
        rows.append(
            [
                f'<code data-pci="{esc(f.get("path", ""))}">{esc(addr)}</code>',
                _link(f["section"], f.get("instance_id", 0), ids),
                f"<code>{esc(ident)}</code> {esc(name)}",
                esc(cls),
                esc(irq),
                "<br>".join(esc(b) for b in bars),
                esc(caps),
            ]
        )
    return table(
        ["address", "section", "vendor:device", "class", "interrupt", "BARs", "capabilities"],
        rows,
        class_="grid pci",
        id="pci-table",
    )


def _virtio(v: dict[str, Any], ids: dict[tuple[str, int], int]) -> str:
    status = " ".join(s.removeprefix("VIRTIO_CONFIG_S_") for s in v.get("status", []))
    where = v.get("pci_address") or v.get("transport", "")
    head = (
        f'<div class="virtio"><h4>{esc(v.get("type", "virtio"))} '
        f"{_link(v['section'], v.get('instance_id', 0), ids)} "
        f'<span class="muted">{esc(v.get("transport", ""))} {esc(where)}</span></h4>'
        f"<p>status <code>{esc(status)}</code> "
        f"({hexa(v.get('status_value'))}) &middot; "
        f"features {esc(' '.join(v.get('guest_features', [])))}</p>"
    )
    rows = []
    for q in v.get("queues", []):
        rows.append(
            [
                str(q.get("index")),
                str(q.get("num")),
                hexa(q.get("desc")),
                hexa(q.get("avail")),
                hexa(q.get("used")),
                str(q.get("last_avail_idx")),
                _opt(q.get("used_idx")),
                _opt(q.get("avail_idx")),
                _opt(q.get("inuse")),
                str(q.get("vector")) if q.get("vector") is not None else "",
            ]
        )
    queues = table(
        [
            "queue",
            "num",
            "desc",
            "avail",
            "used",
            "last_avail",
            "used_idx",
            "avail_idx",
            "inuse",
            "vector",
        ],
        rows,
        class_="grid queues",
    )
    warns = "".join(f'<p class="warn">{esc(w)}</p>' for w in v.get("warnings", []))
    return head + queues + warns + "</div>"


def _opt(v: Any) -> str:
    return "" if v is None else esc(v)


def _section(dev: Device, rep: Any) -> str:
    rec = dev.record
    state = dev.state
    vmsd = state.vmsd_name if state is not None else None
    decoded = []
    if rep is not None:
        decoded = [
            (kind, it)
            for kind, it in rep.for_section(dev.name)
            if getattr(it, "instance_id", dev.instance_id) == dev.instance_id
        ]
    badges = "".join(
        f'<span class="badge">{esc(k)}</span>' for k in dict.fromkeys(k for k, _ in decoded)
    )
    err = dev.error
    summary = (
        f'<summary><span class="dev-name">{esc(dev.name)}</span>'
        + (f' <span class="muted">#{dev.instance_id}</span>' if dev.instance_id else "")
        + f' <span class="muted">{esc(vmsd or "")} v{dev.version} &middot; '
        f"{rec.body_size} bytes at {hexa(rec.body_offset)}</span> {badges}"
        + (' <span class="badge bad">error</span>' if err is not None else "")
        + "</summary>"
    )
    body = []
    if err is not None:
        body.append(f'<p class="err">{esc(err)}</p>')
    for kind, it in decoded:
        body.append(
            f'<div class="decoded"><h5>{esc(kind)}</h5><pre>'
            + esc("\n".join(it.format()).replace("\t", "    "))
            + "</pre></div>"
        )
    if state is not None:
        body.append(fields_table(node_json(state)))
    elif err is None:
        body.append(
            '<p class="muted">no description covers this section: its bytes are not decoded '
            "(give one with --desc)</p>"
        )
    return (
        f'<details class="dev" id="{_anchor(dev.section_id)}" data-name="{esc(dev.name)}" '
        f'data-instance="{dev.instance_id}">{summary}{"".join(body)}</details>'
    )
