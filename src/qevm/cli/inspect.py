"""``qevm info``, ``qevm state`` and ``qevm desc``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import DescriptionError, QevmError
from ..export.vmcoreinfo import quick_look
from ..format import SECTION_FULL
from ..migration import Migration
from ..render import compat, jsonout, native, text
from ..stream import BrokenRecord, DescriptionRecord, SectionRecord, TrailingRecord
from . import add_input, command, no_match, open_stream, outcome


def error_json(e: QevmError) -> dict[str, Any]:
    """An error as JSON: where, and the whole message."""
    out: dict[str, Any] = {"offset": e.offset}
    if e.section:
        out["section"] = e.section
    if e.field:
        out["field"] = e.field
    out["message"] = str(e)
    return out


def info_json(mig: Migration) -> dict[str, Any]:
    """Everything ``qevm info`` reports, as JSON."""
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
    out["kernels"] = quick_look(src)
    trailing = [r for r in mig.records if isinstance(r, TrailingRecord)]
    if trailing:
        out["trailing"] = {
            "offset": trailing[0].offset,
            "length": trailing[0].end - trailing[0].offset,
        }
    out["warnings"] = mig.warnings
    out["errors"] = [error_json(e) for e in mig.errors]
    return out


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


def _print_info(mig: Migration, out: Any) -> None:
    j = info_json(mig)
    w = out.write
    w(f"file          {j['file']} ({j['container']})\n")
    for k, v in j.get("container_info", {}).items():
        # Multi-line values (a libvirt image's domain XML) are in --json and their own commands.
        if v is not None and not isinstance(v, (dict, list)) and "\n" not in str(v):
            w(f"  {k:12}{v}\n")
    w(f"machine       {j['machine'] or '(no configuration section)'}\n")
    w(f"page size     {j['page_size']}\n")
    w(f"capabilities  {', '.join(j['capabilities']) or '(none)'}\n")
    w(f"footers       {'yes' if j['section_footers'] else 'no'}\n")
    d = j["description"]
    if d["present"] and "error" in d:
        w(f"description   at {d['offset']:#x}, unreadable (see the error below)\n")
    elif d["present"]:
        w(f"description   yes, {d['length']} bytes at {d['offset']:#x}\n")
    else:
        w(
            "description   none in the stream"
            + (" (one was supplied)" if d["supplied"] else "")
            + "\n"
        )
    if j["commands"]:
        w("commands\n")
        for c in j["commands"]:
            extra = f"  {text.inline(c['info'])}" if "info" in c else ""
            w(f"  {c['offset']:#12x}  {c['name']}{extra}\n")
    w("sections\n")
    w(f"  {'id':>4}  {'name':40} {'inst':>4} {'ver':>4} {'offset':>12} {'length':>12}  records\n")
    for s in j["sections"]:
        kinds: dict[str, int] = {}
        for r in s["records"]:
            kinds[r["type"]] = kinds.get(r["type"], 0) + 1
        recs = " ".join(f"{k}" if n == 1 else f"{k}x{n}" for k, n in kinds.items())
        if "error" in s:
            recs += "  ERROR (see below)"
        w(
            f"  {s['section_id']:>4}  {s['name']:40} {s['instance_id']:>4} {s['version']:>4} "
            f"{s['offset']:#12x} {s['length']:>12}  {recs}\n"
        )
    if j["ram_blocks"]:
        w("RAM blocks\n")
        w(f"  {'name':40} {'size':>12}  pages\n")
        for b in j["ram_blocks"]:
            pages = ", ".join(f"{k} {v}" for k, v in sorted(b["pages"].items()))
            if not b["in_stream"]:
                pages = "not migrated (x-ignore-shared)"
            elif not pages:
                # a complete stream sends every page of a block it migrates
                pages = "none in this stream (multifd or postcopy-preempt channels carry them)"
            extra = f"  mr_addr {b['mr_addr']:#x}" if "mr_addr" in b else ""
            w(f"  {b['name']:40} {b['size']:#12x}  {pages}{extra}\n")
    for k in j["kernels"]:
        kaslr = f", KASLR offset {k['kernel_offset']:#x}" if k["kernel_offset"] is not None else ""
        w(f"kernel        Linux {k['release']}{kaslr} (VMCOREINFO in RAM, banner agrees)\n")
    if "trailing" in j:
        t = j["trailing"]
        w(f"trailing      {t['length']} bytes at {t['offset']:#x} after the stream\n")
    for u in j["unreadable"]:
        w(f"unreadable    {u['length']} bytes at {u['offset']:#x}, skipped to the next record\n")
    for msg in j["warnings"]:
        w(f"warning       {msg}\n")
    for e in j["errors"]:
        w(f"error         {e['message']}\n")


def _setup_info(p: argparse.ArgumentParser) -> None:
    add_input(p)
    p.add_argument("--json", action="store_true", help="print JSON")


@command("info", "machine, capabilities, sections and RAM blocks of a stream", _setup_info)
def run_info(args: argparse.Namespace) -> int:
    with open_stream(args, decode_devices=False) as mig:
        if args.json:
            jsonout.dump(info_json(mig), sys.stdout, indent=2)
        else:
            _print_info(mig, sys.stdout)
        return outcome(mig)


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
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)


def _setup_state(p: argparse.ArgumentParser) -> None:
    add_input(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="print JSON")
    g.add_argument(
        "--compat",
        action="store_true",
        help="print exactly what QEMU's analyze-migration.py -d state prints",
    )
    p.add_argument("--device", metavar="GLOB", help="only sections whose name matches GLOB")
    p.add_argument(
        "--decode",
        action="store_true",
        help="also show what the state means (the views of `qevm devices`) under each section",
    )


@command("state", "decoded device state", _setup_state)
def run_state(args: argparse.Namespace) -> int:
    from . import devices

    with devices.open_for_state(args) if args.decode else open_stream(args) as mig:
        if args.device and not mig.devices(args.device) and not live_entries(mig, args.device):
            return no_match("no section", args.device)
        report = devices.report_for_state(args, mig) if args.decode else None
        if args.compat:
            data = compat.state_compat(mig)
            if args.device:
                data = {k: v for k, v in data.items() if _match(k.rsplit(" (", 1)[0], args.device)}
            jsonout.dump(data, sys.stdout, indent=4)
        elif args.json:
            data = state_json(mig, args.device)
            devices.attach_decoded(data, report)
            jsonout.dump(data, sys.stdout, indent=2)
        else:
            _print_state(mig, args.device, sys.stdout, report)
        return outcome(mig)


def _print_state(mig: Migration, pattern: str | None, out: Any, report: Any = None) -> None:
    from . import devices

    for dev in mig.devices(pattern):
        text.write_device(dev, out)
        devices.write_decoded(report, dev, out)
    live = live_entries(mig, pattern)
    if live:
        out.write("live sections\n")
        for entry in live:
            text.write_live_section(entry, out)
    if mig.description is None:
        out.write(
            "note: the stream has no JSON description; device sections are shown "
            "as opaque bytes (use --desc FILE)\n"
        )


def _setup_desc(p: argparse.ArgumentParser) -> None:
    add_input(p, desc=False)
    p.add_argument(
        "--raw", action="store_true", help="write the JSON text exactly as stored in the stream"
    )


@command(
    "desc", "the JSON device description, as analyze-migration.py -d desc prints it", _setup_desc
)
def run_desc(args: argparse.Namespace) -> int:
    from .. import open as qopen

    # Only the description matters here: errors elsewhere in the stream are not reported.
    with qopen(
        args.file, format=args.format, snapshot=args.snapshot, decode_devices=False, strict=False
    ) as mig:
        rec = next((r for r in mig.records if isinstance(r, DescriptionRecord)), None)
        if rec is None or rec.description is None:
            if rec is not None and rec.error is not None:
                raise rec.error
            if mig.errors:  # reading stopped before the end
                last = mig.errors[-1]
                raise DescriptionError(
                    f"no JSON description found: reading stopped here ({last.message})",
                    offset=last.offset,
                    section=last.section,
                )
            raise DescriptionError(
                "the stream has no JSON description (postcopy streams have none)"
            )
        if args.raw:
            sys.stdout.flush()
            sys.stdout.buffer.write(rec.description.text)
        else:
            jsonout.dump(compat.desc_compat(mig), sys.stdout, indent=4)
    return 0
