"""``qevm report``: one self-contained HTML page about a stream."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import UsageError
from . import (
    add_channel,
    add_input,
    add_map,
    add_output,
    command,
    open_stream,
    outcome,
    warn_missing,
)


def _setup(p: argparse.ArgumentParser) -> None:
    add_input(p)
    add_output(p, "OUT.html", "the page to write")
    p.add_argument(
        "--diff",
        metavar="B",
        help="another input to compare with: changed pages on the map, "
        "changed ranges, fields and registers",
    )
    p.add_argument("--diff-snapshot", metavar="NAME|ID", help="qcow2 B: the snapshot to read")
    add_channel(p, "--diff-channel", "B's migration")
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
    add_map(p)
    p.add_argument("--title", help="the page's title (default: the input's name)")
    add_channel(p)


def _open(args: argparse.Namespace) -> Any:
    """The input with its page index and rounds; a pipe is copied to a file first (the
    map and the virtio rings read RAM after it has gone by)."""
    return open_stream(args, index_ram=True, track_rounds=True, spool=True)


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
    for opt in ("ignore", "diff_channel"):
        if getattr(args, opt) and not args.diff:
            print(f"qevm: --{opt.replace('_', '-')} does nothing without --diff", file=sys.stderr)
            return 1
    with _open(args) as mig:
        diff = check_report = None
        if args.diff:
            from ..analysis.diff import diff_opened

            diff = diff_opened(
                mig,
                args.diff,
                ignore=args.ignore,
                b_snapshot=args.diff_snapshot,
                a_label=args.file,
                b_channels=args.diff_channel,
            )
        if args.against:
            from ..analysis import check

            check_report = check(mig, args.against, destination_snapshot=args.against_snapshot)
        size = write_report(
            mig, out, diff=diff, check=check_report, overrides=args.map, title=args.title
        )
        print(f"{args.output}: {size} bytes")
        warn_missing(mig.missing_pages())  # the map shows them as absent, reads as zeros
        return outcome(mig)
