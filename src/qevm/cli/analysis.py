"""``qevm check``, ``qevm diff`` and ``qevm explain``: migration debugging."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import add_channel, add_input, add_json, command, emit


def _check_setup(p: argparse.ArgumentParser) -> None:
    add_input(p)
    p.add_argument(
        "--against",
        required=True,
        metavar="DEST",
        help="what the destination expects: a stream its configuration wrote (any input qevm "
        "reads), a description (qevm desc output) or its binary's -dump-vmstate JSON",
    )
    p.add_argument(
        "--against-snapshot", metavar="NAME|ID", help="qcow2 destination: the snapshot to read"
    )
    p.add_argument(
        "--schema",
        metavar="FILE",
        help="the destination binary's -dump-vmstate JSON, in addition to a stream or "
        "description (minimum versions, field versions, every subsection it knows)",
    )
    add_json(p)


@command(
    "check",
    "will SOURCE load into the destination? QEMU's load-time checks in QEMU's order",
    _check_setup,
)
def run_check(args: argparse.Namespace) -> int:
    from ..analysis import check

    report = check(
        args.file,
        args.against,
        schema=args.schema,
        source_desc=args.desc,
        source_format=args.format,
        source_snapshot=args.snapshot,
        destination_snapshot=args.against_snapshot,
    )
    emit(args, report, _print_report)
    return 0 if report.loads else 1


#: Problems printed as text (the first is where QEMU stops).
MAX_SHOWN = 8


def _print_report(report: Any, out: Any) -> None:
    kinds = " + ".join(report.destination_kinds) or "?"
    out.write(f"source       {report.source}\n")
    out.write(f"destination  {report.destination} ({kinds})\n")
    loads = report.loads
    if loads:
        out.write("verdict      loads: no load-time check fails\n")
    elif loads is None and not report.problems:
        out.write(
            "verdict      cannot tell: nothing fails in what the destination is known by, "
            "but that is not all QEMU checks\n"
        )
    elif loads is None:
        out.write("verdict      cannot tell: qevm cannot decide what is listed below\n")
    else:
        first = next(n for n, p in enumerate(report.problems, 1) if p.certain)
        if first == 1:
            out.write("verdict      does not load: QEMU stops at the first problem below\n")
        else:
            out.write(
                f"verdict      does not load: QEMU stops at problem {first} below, if not at "
                "one of the uncertain ones before it\n"
            )
    shown = report.problems[:MAX_SHOWN]
    for n, p in enumerate(shown, 1):
        where = p.section or ""
        if p.instance_id:
            where += f" #{p.instance_id}"
        mark = "" if p.certain else "  (not certain)"
        out.write(f"\n{n:3}. {where}  [{p.kind}]{mark}\n")
        out.write(f"     {p.message}\n")
        for line in p.details:
            out.write(f"     {line}\n")
        if p.qemu:
            out.write(f"     QEMU: {p.qemu}\n")
    if len(report.problems) > len(shown):
        out.write(f"\n     ... and {len(report.problems) - len(shown)} more (--json lists all)\n")
    if report.warnings:
        out.write("\nnotes\n")
        for w in report.warnings:
            out.write(f"  - {w}\n")


def _explain_setup(p: argparse.ArgumentParser) -> None:
    add_input(p)
    p.add_argument(
        "--section", metavar="GLOB", help="only sections whose idstr matches (default: all)"
    )
    p.add_argument("--all", action="store_true", help="also list sections that decode")
    add_json(p)


@command(
    "explain",
    "where a device section does not fit its description: fields with offsets, where the "
    "decode ran off, and what would make it end at its footer",
    _explain_setup,
)
def run_explain(args: argparse.Namespace) -> int:
    from .. import open as qopen
    from ..analysis.explain import explain

    # Not open_stream: the sections that do not read are what this explains.
    with qopen(
        args.file,
        desc=args.desc,
        format=args.format,
        snapshot=args.snapshot,
        decode_devices=False,
        strict=False,
    ) as mig:
        results = explain(mig, args.section)
    bad = [r for r in results if not r.fits]
    shown = results if args.all else bad
    if args.json:
        from ..render import jsonout

        jsonout.dump({"sections": [r.to_json() for r in shown]}, sys.stdout, indent=2)
    else:
        if not shown:
            sys.stdout.write(f"all {len(results)} device sections fit their description\n")
        for n, r in enumerate(shown):
            if n:
                sys.stdout.write("\n")
            for line in r.format():
                sys.stdout.write(line + "\n")
    return 1 if bad else 0


def _diff_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", help="the first input (stream, libvirt image, qcow2 image, compressed)")
    p.add_argument("b", help="the second input")
    p.add_argument("--a-snapshot", metavar="NAME|ID", help="qcow2: the snapshot of A")
    p.add_argument("--b-snapshot", metavar="NAME|ID", help="qcow2: the snapshot of B")
    for side in ("a", "b"):
        add_channel(p, f"--{side}-channel", f"{side.upper()}'s migration")
    p.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave out what matches: a section (timer), a field (cpu#0:env.tsc), a RAM block "
        "(pc.ram), a register (cpu:rip), a configuration item (configuration:uuid); repeatable",
    )
    add_json(p)


@command(
    "diff", "what differs between two inputs: configuration, devices, RAM, registers", _diff_setup
)
def run_diff(args: argparse.Namespace) -> int:
    from ..analysis.diff import diff

    a_snap, b_snap = args.a_snapshot, args.b_snapshot
    report = diff(
        args.a,
        args.b,
        ignore=args.ignore,
        a_snapshot=a_snap,
        b_snapshot=b_snap,
        a_channels=args.a_channel,
        b_channels=args.b_channel,
    )
    emit(args, report, _print_diff)
    return 0 if report.equal else 1


#: Entries printed per group as text.
MAX_LINES = 20


def _v(x: Any) -> str:
    if isinstance(x, dict) and {"type", "size", "count"} <= set(x):
        n = f"{x['count']} x " if x["count"] != 1 else ""
        return f"{n}{x['type']} ({x['size']} bytes)"
    if isinstance(x, bool) or x is None:
        return str(x).lower() if x is not None else "-"
    if isinstance(x, int):
        return f"{x:#x}" if abs(x) > 9 else str(x)
    return str(x)


def _group(out: Any, title: str, lines: list[str]) -> None:
    if not lines:
        out.write(f"{title:13} equal\n")
        return
    out.write(f"{title:13} {len(lines)} difference{'s' if len(lines) != 1 else ''}\n")
    for line in lines[:MAX_LINES]:
        out.write(f"  {line}\n")
    if len(lines) > MAX_LINES:
        out.write(f"  ... {len(lines) - MAX_LINES} more (--json lists all)\n")


def _print_diff(r: Any, out: Any) -> None:
    out.write(f"a  {r.a}\nb  {r.b}\n")
    _group(out, "configuration", [f"{c['field']}: {c['a']} -> {c['b']}" for c in r.configuration])
    _group(
        out,
        "description",
        [
            f"{d['name']}{'#' + str(d['instance_id']) if d['instance_id'] else ''} "
            f"{d['change']}{' ' + d['path'] if d.get('path') else ''}: {_v(d['a'])} -> "
            f"{_v(d['b'])}"
            for d in r.description
        ],
    )
    _group(
        out,
        "devices",
        [
            f"{d['name']}{'#' + str(d['instance_id']) if d['instance_id'] else ''}:"
            f"{d['field']}  {_v(d['a'])} -> {_v(d['b'])}"
            for d in r.devices
        ],
    )
    ram = [
        f"{x['block']} {x['offset']:#x}+{x['length']:#x}"
        + (f" (only in {x['only_in']})" if x.get("only_in") else "")
        for x in r.ram
    ]
    _group(out, "ram", ram)
    if r.ram:
        out.write(f"  {r.pages_differing} of {r.pages} pages differ\n")
    _group(
        out,
        "memory",
        [
            f"{m['gpa']:#018x}-{m['gpa'] + m['length'] - 1:#018x} ({m['length']:#x})"
            for m in r.memory
        ],
    )
    _group(
        out,
        "cpus",
        [f"CPU#{c['index']} {c['register']}: {_v(c['a'])} -> {_v(c['b'])}" for c in r.cpus],
    )
    for w in r.warnings:
        out.write(f"note: {w}\n")
