"""The facts of an open stream as JSON, shared by ``qevm info``, ``qevm state``, ``qevm ram``,
``qevm mount`` (``devices.json``) and ``qevm report``.

:func:`info_json` is what ``qevm info`` shows (the container, machine, page
size, capabilities, description, commands, sections with their records, RAM
blocks, kernels found, what could not be read); :func:`state_json` the
decoded devices and live sections of ``qevm state --json``; :func:`ram_json`
the pages of each RAM block by what they finally are.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from .errors import QevmError
from .export.vmcoreinfo import quick_look
from .format import SECTION_FULL
from .migration import Migration
from .render import native
from .stream import BrokenRecord, DescriptionRecord, SectionRecord, TrailingRecord


def error_json(e: QevmError) -> dict[str, Any]:
    """An error as JSON: where, and the whole message."""
    out: dict[str, Any] = {"offset": e.offset}
    if e.section:
        out["section"] = e.section
    if e.field:
        out["field"] = e.field
    out["message"] = str(e)
    return out


def info_json(mig: Migration, kernels: bool = True) -> dict[str, Any]:
    """Everything ``qevm info`` reports, as JSON (``kernels=False``: without searching
    the file for a Linux kernel's VMCOREINFO)."""
    src = mig.source
    out: dict[str, Any] = {
        "file": src.name,
        "container": src.container,
    }
    if src.info:
        out["container_info"] = src.info
    out.update(
        machine=mig.machine,
        page_size=mig.page_size,
        capabilities=sorted(mig.capabilities),
        section_footers=mig.footers,
    )
    desc_rec = next((r for r in mig.records if isinstance(r, DescriptionRecord)), None)
    if desc_rec is not None:
        out["description"] = {
            "present": True,
            "offset": desc_rec.offset,
            "length": desc_rec.length,
        }
        if desc_rec.error is not None:
            out["description"]["error"] = str(desc_rec.error)
    else:
        out["description"] = {
            "present": False,
            "supplied": mig.description is not None,
        }
    out["commands"] = [
        {"offset": c.offset, "name": c.name, **({"info": c.info} if c.info else {})}
        for c in mig.commands()
    ]
    sections = []
    for entry in mig.entries.values():
        recs = []
        for r in entry.records:
            d = {"type": r.type_name, "offset": r.offset, "length": r.end - r.offset}
            if r.error is not None:
                d["error"] = str(r.error)
            recs.append(d)
        section = {
            "section_id": entry.section_id,
            "name": entry.idstr,
            "instance_id": entry.instance_id,
            "version": entry.version,
            "kind": entry.handler.title if entry.handler else "device",
            "offset": entry.records[0].offset,
            "length": sum(r["length"] for r in recs),
            "records": recs,
        }
        errors = [r["error"] for r in recs if "error" in r]
        if errors:
            section["error"] = errors[0]
        sections.append(section)
    out["sections"] = sections
    out["unreadable"] = [
        {"offset": r.offset, "length": r.end - r.offset, "error": str(r.error)}
        for r in mig.all_records()
        if isinstance(r, BrokenRecord)
    ]
    out["ram_blocks"] = [ram_block_json(b) for b in mig.ram_blocks]
    out["kernels"] = quick_look(src) if kernels else []
    trailing = [r for r in mig.records if isinstance(r, TrailingRecord)]
    if trailing:
        out["trailing"] = {
            "offset": trailing[0].offset,
            "length": trailing[0].end - trailing[0].offset,
        }
    out["warnings"] = mig.warnings
    out["errors"] = [error_json(e) for e in mig.errors]
    return out


def record_kinds(section: dict[str, Any]) -> dict[str, int]:
    """How many records of each type (``START``, ``PART``, ``END``, ``FULL``) a section of
    :func:`info_json` has, in the order they first come."""
    kinds: dict[str, int] = {}
    for r in section["records"]:
        kinds[r["type"]] = kinds.get(r["type"], 0) + 1
    return kinds


def ram_block_json(b: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"name": b.name, "size": b.used_length, "offset": b.offset}
    if b.page_size is not None:
        d["host_page_size"] = b.page_size
    if b.mr_addr is not None:
        d["mr_addr"] = b.mr_addr
    if b.mapped is not None:
        d["mapped_ram"] = {
            "bitmap_offset": b.mapped.bitmap_offset,
            "pages_offset": b.mapped.pages_offset,
        }
    d["in_stream"] = b.in_stream
    d["pages"] = dict(b.records)
    return d


def device_json(dev: Any) -> dict[str, Any]:
    rec: SectionRecord = dev.record
    out: dict[str, Any] = {
        "name": dev.name,
        "instance_id": dev.instance_id,
        "section_id": dev.section_id,
        "version": dev.version,
    }
    st = dev.state
    if st is not None and st.vmsd_name:
        out["vmsd_name"] = st.vmsd_name
    out["offset"] = rec.body_offset
    out["size"] = rec.body_size
    if st is not None:
        body = native.node_json(st)
        out["fields"] = {k: v for k, v in body.items() if k != "subsections"}
        if "subsections" in body:
            out["subsections"] = body["subsections"]
    if rec.content is not None and st is not rec.content:
        out["decoded"] = rec.content
    if rec.error is not None:
        out["error"] = str(rec.error)
    elif st is None and rec.content is None:
        out["opaque"] = True
    return out


def state_json(mig: Migration, pattern: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": mig.machine, "page_size": mig.page_size}
    out["devices"] = [device_json(d) for d in mig.devices(pattern)]
    live = []
    for entry in live_entries(mig, pattern):
        live.append(
            {
                "name": entry.idstr,
                "instance_id": entry.instance_id,
                "section_id": entry.section_id,
                "version": entry.version,
                "kind": entry.handler.title,
                "records": [_live_record_json(entry, r) for r in entry.records],
            }
        )
    out["live_sections"] = live
    out["errors"] = [error_json(e) for e in mig.errors]
    return out


def _live_record_json(entry: Any, rec: SectionRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"type": rec.type_name, "offset": rec.body_offset, "size": rec.body_size}
    if rec.error is not None:
        out["error"] = str(rec.error)
    else:
        out["content"] = entry.handler.to_json(entry, rec)
    return out


def live_entries(mig: Migration, pattern: str | None = None) -> list[Any]:
    """The live sections (RAM, block, ...: a handler's START/PART/END), by name glob."""
    return [
        entry
        for entry in mig.entries.values()
        if entry.handler is not None
        and not all(r.type == SECTION_FULL for r in entry.records)
        and (not pattern or _match(entry.idstr, pattern))
    ]


def _match(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)


def ram_json(mig: Migration) -> dict[str, Any]:
    """Per block: size, records by kind, and what each page finally is."""
    index = mig.page_index
    blocks = []
    missing = mig.missing_pages()
    for b in mig.ram_blocks:
        counts = index.encoding_counts(b.name)
        d: dict[str, Any] = {
            "name": b.name,
            "size": b.used_length,
            "in_stream": b.in_stream,
            "records": dict(b.records),
            "pages": {k: v for k, v in counts.items() if v},
        }
        if b.name in missing:
            d["missing_pages"] = missing[b.name]
            ps = index.page_size
            d["missing_ranges"] = [
                [first * ps, count * ps] for first, count in index.absent_ranges(b.name)
            ]
        blocks.append(d)
    return {
        "page_size": mig.page_size,
        "blocks": blocks,
        "channels": [c.to_json() for c in mig.channels],
    }
