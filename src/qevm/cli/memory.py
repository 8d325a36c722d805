"""``qevm memmap`` and ``qevm memory``: guest-physical layout and memory images."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..export.kdump import FORMATS as KDUMP_FORMATS
from ..render import jsonout
from ..source import open_source
from . import add_channel, add_input, command, warn_missing
from .guard import refuse_input
from .progress import Progress


def _add_map(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--map",
        action="append",
        metavar="BLOCK=GPA[+OFFSET:LEN],...",
        help="map BLOCK (or LEN bytes of it from OFFSET) at guest-physical GPA instead of "
        "what qevm derives for it; repeatable; sizes take K/M/G suffixes",
    )


def _setup_memmap(p: argparse.ArgumentParser) -> None:
    add_input(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_map(p)
    add_channel(p)


def print_memmap(mm: Any, out: object = None) -> None:
    """The layout as a table: range, size, block and offset, kind, source."""
    w = (out or sys.stdout).write  # type: ignore[attr-defined]
    w(f"machine  {mm.machine or '(unknown)'}  ({mm.family or 'from --map'})\n")
    w(f"{'guest-physical range':35} {'size':>12}  {'block':32} {'offset':>12}  kind  source\n")
    for r in mm.ranges:
        w(
            f"{r.gpa:016x}-{r.end - 1:016x}  {r.size:#12x}  {r.block:32} {r.offset:#12x}  "
            f"{r.kind:4}  {r.source}\n"
        )
    if mm.unmapped:
        w(f"not mapped: {', '.join(mm.unmapped)}\n")
    for n in mm.notes:
        w(f"note: {n}\n")


@command(
    "memmap", "guest-physical layout: which RAM block backs which range, and why", _setup_memmap
)
def run_memmap(args: argparse.Namespace) -> int:
    from .. import open as qopen
    from ..views.core import layout_streamed
    from ..views.memmap import layout, parse_overrides

    overrides = parse_overrides(args.map)
    src = open_source(args.file, format=args.format, snapshot=args.snapshot)
    if src.seekable:
        with qopen(src, desc=args.desc, index_ram=True, channels=args.channel) as mig:
            mm = layout(mig, overrides)
    else:
        mm = layout_streamed(src, overrides, {"desc": args.desc, "channels": args.channel})
    if args.json:
        jsonout.dump(mm.to_json(), sys.stdout, indent=2)
    else:
        print_memmap(mm)
    warn_guesses(mm)
    warn_missing(mm.missing)
    return 0


def warn_guesses(mm: Any) -> None:
    """Say on stderr which parts of the layout are assumed, not read from the stream."""
    for g in mm.guesses:
        print(f"warning: layout guessed: {g}", file=sys.stderr)


def _setup_memory(p: argparse.ArgumentParser) -> None:
    # --format is the output format here (as `qevm memory -o F --format raw`
    # reads best); the input format is --input-format.
    p.add_argument(
        "file", help="stream, compressed stream, libvirt image or qcow2 image; - for stdin"
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file")
    p.add_argument(
        "--format",
        dest="out_format",
        choices=("elf", "raw", *KDUMP_FORMATS),
        default="elf",
        metavar="{elf,raw,kdump-zlib,...}",
        help="elf: ELF64 core with one PT_LOAD per range, CPU notes and VMCOREINFO (default); "
        "raw: flat sparse image, file offset = guest-physical address; "
        "kdump-zlib, kdump-lzo, kdump-snappy, kdump-zstd: makedumpfile's flattened "
        "kdump-compressed format (as dump-guest-memory writes it); kdump-raw-*: the same "
        "unflattened",
    )
    p.add_argument(
        "--no-vmcoreinfo",
        dest="vmcoreinfo",
        action="store_false",
        help="do not look for the Linux kernel's VMCOREINFO or write it as a note",
    )
    p.add_argument(
        "--input-format",
        dest="format",
        default="auto",
        help="force the input format: stream, libvirt, qcow2, gzip, xz, bzip2, zstd, lzop",
    )
    p.add_argument("--snapshot", metavar="NAME|ID", help="qcow2: the internal snapshot to read")
    p.add_argument("--desc", metavar="FILE", help="JSON description for streams without one")
    _add_map(p)
    add_channel(p)


@command(
    "memory",
    "guest-physical memory as an ELF core (like dump-guest-memory) or a flat raw image",
    _setup_memory,
)
def run_memory(args: argparse.Namespace) -> int:
    from ..views.core import write_core
    from ..views.memmap import parse_overrides

    refuse_input(args.output, args)
    if args.out_format == "raw":
        refuse_input(args.output + ".qevm-stage", args)  # the staging file of a pipe input
    overrides = parse_overrides(args.map)
    src = open_source(args.file, format=args.format, snapshot=args.snapshot)
    progress = Progress("reading", src.size)
    res = write_core(
        src,
        args.output,
        args.out_format,
        overrides=overrides,
        open_args={"desc": args.desc, "channels": args.channel},
        progress=progress.update,
        vmcoreinfo=args.vmcoreinfo,
    )
    progress.done()
    print(
        f"{args.output}: {res.format}, {len(res.memmap.ranges)} ranges, "
        f"{res.covered:#x} bytes of guest-physical memory"
    )
    if res.vmcoreinfo is not None:
        v = res.vmcoreinfo
        kaslr = f", KASLR offset {v.kernel_offset:#x}" if v.kernel_offset is not None else ""
        print(f"VMCOREINFO: Linux {v.release}{kaslr} ({v.origin} at {v.gpa:#x})")
    if res.kdump is not None:
        k = res.kdump
        print(f"kdump: {k.pages} pages ({k.zero_pages} zero), {k.data_bytes} bytes of page data")
    for w in res.warnings + res.memmap.notes:
        print(f"warning: {w}", file=sys.stderr)
    warn_guesses(res.memmap)
    warn_missing(res.memmap.missing)
    return 0
