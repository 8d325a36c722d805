"""``qevm info``, ``qevm state`` and ``qevm desc``."""

from __future__ import annotations

import argparse
import fnmatch
import sys
from typing import TYPE_CHECKING, Any

from . import add_input, add_json, command, no_match, open_stream, outcome

if TYPE_CHECKING:
    from ..migration import Migration


def _print_info(mig: Migration, out: Any) -> None:
    from ..render import text
    from ..summary import info_json, record_kinds

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
        kinds = record_kinds(s)
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
    add_json(p)


@command("info", "machine, capabilities, sections and RAM blocks of a stream", _setup_info)
def run_info(args: argparse.Namespace) -> int:
    from ..render import jsonout
    from ..summary import info_json

    with open_stream(args, decode_devices=False) as mig:
        if args.json:
            jsonout.dump(info_json(mig), sys.stdout, indent=2)
        else:
            _print_info(mig, sys.stdout)
        return outcome(mig)


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
    from ..render import compat, jsonout
    from ..summary import live_entries, state_json
    from . import devices

    with devices.open_for_state(args) if args.decode else open_stream(args) as mig:
        if args.device and not mig.devices(args.device) and not live_entries(mig, args.device):
            return no_match("no section", args.device)
        report = devices.report_for_state(args, mig) if args.decode else None
        if args.compat:
            data = compat.state_compat(mig)
            if args.device:
                data = {
                    k: v
                    for k, v in data.items()
                    if fnmatch.fnmatchcase(k.rsplit(" (", 1)[0], args.device)
                }
            jsonout.dump(data, sys.stdout, indent=4)
        elif args.json:
            data = state_json(mig, args.device)
            devices.attach_decoded(data, report)
            jsonout.dump(data, sys.stdout, indent=2)
        else:
            _print_state(mig, args.device, sys.stdout, report)
        return outcome(mig)


def _print_state(mig: Migration, pattern: str | None, out: Any, report: Any = None) -> None:
    from ..render import text
    from ..summary import live_entries
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
    from ..errors import DescriptionError
    from ..render import compat, jsonout
    from ..stream import DescriptionRecord

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
