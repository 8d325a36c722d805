"""``qevm memmap`` and ``qevm memory``: guest-physical layout and memory images."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..export.formats import MEMORY_FORMATS
from . import (
    add_channel,
    add_input,
    add_json,
    add_map,
    add_output,
    command,
    emit,
    open_input,
    open_stream,
    warn_missing,
)
from .guard import refuse_input
from .progress import Progress


def _setup_memmap(p: argparse.ArgumentParser) -> None:
    add_input(p)
    add_json(p)
    add_map(p)
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
    from ..export.staging import StagedBlocks
    from ..views.memmap import layout, parse_overrides

    overrides = parse_overrides(args.map)
    src = open_input(args)
    if src.seekable:
        with open_stream(args, src, strict=True, index_ram=True) as mig:
            mm = layout(mig, overrides)
    else:  # read once: the blocks are staged while the stream goes by
        with StagedBlocks.temporary() as staged:
            with open_stream(args, src, strict=True, ram_consumer=staged.consumer) as mig:
                staged.finish(mig)
                mm = layout(mig, overrides, read=staged.read)
    emit(args, mm, print_memmap)
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
    add_output(p, "OUT", "output file")
    p.add_argument(
        "--format",
        dest="out_format",
        choices=MEMORY_FORMATS,
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
    add_map(p)
    add_channel(p)


@command(
    "memory",
    "guest-physical memory as an ELF core (like dump-guest-memory) or a flat raw image",
    _setup_memory,
)
def run_memory(args: argparse.Namespace) -> int:
    from ..export.memory import write_memory
    from ..export.staging import StreamedImage
    from ..views.memmap import parse_overrides

    refuse_input(args.output, args)
    if args.out_format == "raw":
        refuse_input(args.output + ".qevm-stage", args)  # the staging file of a pipe input
    overrides = parse_overrides(args.map)
    src = open_input(args)
    progress = Progress("reading", src.size)
    if src.seekable:
        with open_stream(args, src, strict=True, index_ram=True, progress=progress.update) as mig:
            progress.done()
            res = write_memory(
                mig, args.output, args.out_format, overrides=overrides, vmcoreinfo=args.vmcoreinfo
            )
    else:  # read once: the blocks are placed as they go by, the image made at the end
        with StreamedImage(args.output, args.out_format) as image:
            with open_stream(
                args, src, strict=True, ram_consumer=image.consumer, progress=progress.update
            ) as mig:
                progress.done()
                res = image.finish(mig, overrides=overrides, vmcoreinfo=args.vmcoreinfo)
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
