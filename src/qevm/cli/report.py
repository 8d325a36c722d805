"""``qevm report``: one self-contained HTML page about a stream."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import UsageError
from . import add_channel, add_input, command, outcome, report_errors


def _setup(p: argparse.ArgumentParser) -> None:
    add_input(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.html", help="the page to write")
    p.add_argument(
        "--diff",
        metavar="B",
        help="another input to compare with: changed pages on the map, "
        "changed ranges, fields and registers",
    )
    p.add_argument("--diff-snapshot", metavar="NAME|ID", help="qcow2 B: the snapshot to read")
    p.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="GLOB",
        help="with --diff: leave out a section, field, RAM block or register (as qevm diff)",
    )
    p.add_argument(
        "--against",
        metavar="DEST",
        help="what a destination expects (as qevm check): the verdict and its problems",
    )
    p.add_argument("--against-snapshot", metavar="NAME|ID", help="qcow2 DEST: the snapshot to read")
    p.add_argument(
        "--map",
        action="append",
        metavar="BLOCK=GPA[+OFFSET:LEN]",
        help="where blocks are in guest-physical memory, as qevm memmap --map",
    )
    p.add_argument("--title", help="the page's title (default: the input's name)")
    add_channel(p)


def _open(args: argparse.Namespace) -> Any:
    """The input with its page index and rounds; a pipe is copied to a file first (the
    map and the virtio rings read RAM after it has gone by)."""
    from .. import open as qopen
    from ..source import open_source
    from ..writer import spool

    src = open_source(args.file, format=args.format, snapshot=args.snapshot)
    if not src.seekable:
        try:
            copy = spool(src)
        finally:
            src.close()
        src = copy
    return qopen(
        src,
        desc=args.desc,
        index_ram=True,
        track_rounds=True,
        channels=args.channel or None,
        strict=False,
    )


@command(
    "report",
    "one self-contained HTML page: overview, guest-physical RAM map, devices, CPUs "
    "(with --diff B: what changed; with --against DEST: will it load)",
    _setup,
)
def run_report(args: argparse.Namespace) -> int:
    from ..report import write_report

    out = os.path.abspath(args.output)
    if os.path.exists(out):
        for other in (args.file, args.diff, args.against):
            if other and other != "-" and os.path.exists(other) and os.path.samefile(other, out):
                raise UsageError(f"-o {args.output} is an input; give another file")
    if args.ignore and not args.diff:
        print("qevm: --ignore does nothing without --diff", file=sys.stderr)
        return 1
    with _open(args) as mig:
        report_errors(mig)
        diff = check_report = None
        if args.diff:
            from ..analysis.diff import diff_opened

            diff = diff_opened(
                mig,
                args.diff,
                ignore=args.ignore,
                b_snapshot=args.diff_snapshot,
                a_label=args.file,
            )
        if args.against:
            from ..analysis import check

            check_report = check(mig, args.against, destination_snapshot=args.against_snapshot)
        size = write_report(
            mig, out, diff=diff, check=check_report, overrides=args.map, title=args.title
        )
        print(f"{args.output}: {size} bytes")
        return outcome(mig)
