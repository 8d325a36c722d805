"""``qevm snapshots`` and ``qevm libvirt-xml``: what the containers hold besides the stream."""

from __future__ import annotations

import argparse
import datetime
import sys

from ..errors import UsageError
from . import add_json, command


def _setup_snapshots(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="a qcow2 image")
    add_json(p)


def _clock(ns: int) -> str:
    secs, ns = divmod(ns, 1_000_000_000)
    mins, secs = divmod(secs, 60)
    hours, mins = divmod(mins, 60)
    return f"{hours:02}:{mins:02}:{secs:02}.{ns // 1_000_000:03}"


@command(
    "snapshots", "the internal snapshots of a qcow2 image and their VM state", _setup_snapshots
)
def run_snapshots(args: argparse.Namespace) -> int:
    from ..source import open_source

    # format="stream" opens the file without unwrapping it: the image itself is wanted.
    with open_source(args.image, format="stream") as src:
        from ..source.qcow2 import list_snapshots

        snaps = list_snapshots(src)
    if args.json:
        from ..render import jsonout

        jsonout.dump(snaps, sys.stdout, indent=2)
        return 0
    w = sys.stdout.write
    if not snaps:
        w("no internal snapshots\n")
        return 0
    w(
        f"{'id':>4}  {'name':20} {'date (UTC)':20} {'VM clock':>14} "
        f"{'VM state':>12} {'disk size':>12}\n"
    )
    for s in snaps:
        when = datetime.datetime.fromtimestamp(s["date_sec"], datetime.timezone.utc)
        date = when.strftime("%Y-%m-%dT%H:%M:%S")
        clock = _clock(s["vm_clock_nsec"])
        w(
            f"{s['id']:>4}  {s['name']:20} {date:20} {clock:>14} "
            f"{s['vm_state_size'] or '-':>12} {s['disk_size']:>12}\n"
        )
    return 0


def _setup_xml(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a libvirt save image (also compressed, or - for stdin)")
    p.add_argument(
        "--cookie", action="store_true", help="print the cookie XML instead of the domain XML"
    )
    p.add_argument(
        "--format",
        default="auto",
        help="force the outermost format (default: detect from content)",
    )


@command("libvirt-xml", "the domain XML (or cookie) stored in a libvirt save image", _setup_xml)
def run_libvirt_xml(args: argparse.Namespace) -> int:
    from ..source import open_source

    with open_source(args.file, format=args.format) as src:
        if "xml" not in src.info:
            raise UsageError(f"{args.file} is not a libvirt save image")
        text = src.info["cookie"] if args.cookie else src.info["xml"]
    if text is None:
        raise UsageError(f"{args.file} has no cookie")
    sys.stdout.write(text)
    return 0
