"""``qevm extract`` and ``qevm ram``: guest RAM out of a stream."""

from __future__ import annotations

import argparse
import io
import os
import sys
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..summary import ram_json
from . import (
    add_channel,
    add_input,
    add_json,
    add_output,
    byte_size,
    command,
    no_match,
    open_input,
    open_stream,
    outcome,
    warn_missing,
)
from .guard import refuse_input
from .progress import Progress

if TYPE_CHECKING:
    from ..export.blockfiles import Extracted
    from ..migration import Migration


def _setup_extract(p: argparse.ArgumentParser) -> None:
    add_input(p)
    add_output(p, "DIR", "output directory")
    p.add_argument(
        "--block",
        action="append",
        metavar="GLOB",
        help="only RAM blocks matching GLOB (repeatable)",
    )
    add_channel(p)


@command(
    "extract",
    "write desc.json, state.json and one sparse file per RAM block (like analyze-migration.py -x)",
    _setup_extract,
)
def run_extract(args: argparse.Namespace) -> int:
    from ..export.blockfiles import BlockFiles

    for name in ("desc.json", "state.json"):
        refuse_input(os.path.join(args.output, name), args)
    src = open_input(args)
    reading = Progress("reading", src.size)
    writing = Progress("writing", None)
    with BlockFiles(args.output, args.block, check_path=lambda p: refuse_input(p, args)) as files:
        if args.channel:
            # the pages of extra channels are placed by the main stream's sync points:
            # it is indexed first, then the blocks are copied from the index
            mig = open_stream(args, src, index_ram=True, progress=reading.update)
        else:  # one pass: pages are written as they are read
            mig = open_stream(args, src, ram_consumer=files.consumer, progress=reading.update)
        with mig:
            reading.done()
            res = files.finish(mig, writing.update)
            writing.done()
            _report(mig, res)
            if args.block and not res.paths:
                return no_match("no RAM block", args.block)
            return outcome(mig)


def _report(mig: Migration, res: Extracted) -> None:
    for name in res.documents:
        print(name)
    for b in mig.ram_blocks:
        if b.name not in res.paths:
            continue
        extra = []
        if b.name in res.notes:
            extra.append(f"from block {b.name!r}: {res.notes[b.name]}")
        if not b.in_stream:
            extra.append("not in the stream (x-ignore-shared): left as zeros")
        elif b.name in res.missing:
            extra.append(
                f"{res.missing[b.name]} pages missing (give the multifd or postcopy-preempt "
                "channels with --channel)"
            )
        print(res.paths[b.name] + ("  (" + "; ".join(extra) + ")" if extra else ""))
    for w in mig.warnings:
        print(f"warning: {w}", file=sys.stderr)
    warn_missing(res.missing)


def _setup_ram(p: argparse.ArgumentParser) -> None:
    add_input(p)
    p.add_argument(
        "--block",
        metavar="NAME",
        help="only this RAM block (with --offset: the block to read, default the first one)",
    )
    p.add_argument(
        "--offset", type=byte_size, help="hexdump from this block offset (K/M/G suffixes)"
    )
    p.add_argument(
        "--length", type=byte_size, help="bytes to show from --offset (default 256; K/M/G)"
    )
    p.add_argument("--raw", action="store_true", help="with --offset: write the bytes themselves")
    add_json(p)
    add_channel(p)


def hexdump(data: bytes, base: int, out: io.TextIOBase | Any) -> None:
    """Classic 16 bytes per line: offset, hex, ASCII; repeated lines as ``*``."""
    prev = None
    starred = False
    for i in range(0, len(data), 16):
        line = data[i : i + 16]
        if line == prev and i + 16 < len(data):
            if not starred:
                out.write("*\n")
                starred = True
            continue
        prev, starred = line, False
        hx = " ".join(f"{b:02x}" for b in line)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in line)
        out.write(f"{base + i:016x}  {hx[:23]:<23}  {hx[24:]:<23}  |{text}|\n")


@command("ram", "RAM page statistics per block and encoding; hexdump of a range", _setup_ram)
def run_ram(args: argparse.Namespace) -> int:
    from ..render import jsonout

    src = open_input(args)
    if not src.seekable and args.channel:
        src.close()
        raise UsageError(
            f"--channel needs the main stream in a file: {src.name} is read as a stream "
            "(a pipe or a compressed file; decompress it to a file first)"
        )
    if args.offset is None and (args.length is not None or args.raw):
        src.close()
        given = "--length" if args.length is not None else "--raw"
        print(f"qevm: {given} needs --offset (the range of the block to show)", file=sys.stderr)
        return 1
    length = 256 if args.length is None else args.length
    if src.seekable:
        mig = open_stream(args, src, index_ram=True, decode_devices=False)
    else:
        # Read once: the statistics need no page bytes, a hexdump only its range's.
        from ..ramspool import SpoolingIndex

        end = None if args.offset is None else args.offset + max(length, 0)
        start = max(args.offset or 0, 0)
        mig = open_stream(
            args,
            src,
            decode_devices=False,
            ram_consumer=lambda ctx, ps: SpoolingIndex(ps, args.block, start, end),
        )
    with mig:
        blocks = {b.name: b for b in mig.ram_blocks}
        if args.block is not None and args.block not in blocks:
            raise UsageError(f"no RAM block {args.block!r}; blocks: {', '.join(blocks)}")
        if args.offset is None:
            stats = ram_json(mig)
            if args.block is not None:
                stats["blocks"] = [b for b in stats["blocks"] if b["name"] == args.block]
            if args.json:
                jsonout.dump(stats, sys.stdout, indent=2)
            else:
                _print_stats(stats)
            missing = mig.missing_pages()
            warn_missing({k: n for k, n in missing.items() if args.block in (None, k)})
            return outcome(mig)
        name = args.block or (mig.ram_blocks[0].name if mig.ram_blocks else None)
        if name not in blocks:
            raise UsageError(f"no RAM block {name!r}; blocks: {', '.join(blocks)}")
        size = blocks[name].used_length
        if args.offset < 0 or length < 0 or args.offset + length > size:
            raise UsageError(
                f"range {args.offset:#x}+{length:#x} is outside {name!r} ({size:#x} bytes)"
            )
        data = mig.page_index.read(name, args.offset, length)
        if args.raw:
            sys.stdout.buffer.write(data)
        elif args.json:
            jsonout.dump({"block": name, "offset": args.offset, "data": data.hex()}, sys.stdout, 2)
        else:
            hexdump(data, args.offset, sys.stdout)
        _warn_missing_range(mig, name, args.offset, length)
        return outcome(mig)


def _warn_missing_range(mig: Migration, name: str, offset: int, length: int) -> None:
    """Say how many pages of the range shown no record gave."""
    index = mig.page_index
    ps = index.page_size
    lo, hi = offset // ps, -(-(offset + length) // ps)
    n = sum(
        max(0, min(first + count, hi) - max(first, lo))
        for first, count in index.absent_ranges(name, limit=1 << 30)
    )
    if n and mig.ram is not None:
        warn_missing({name: n})


def _print_stats(j: dict[str, Any]) -> None:
    w = sys.stdout.write
    w(f"page size {j['page_size']}\n")
    w(f"{'block':40} {'size':>12}  final pages / records seen\n")
    for b in j["blocks"]:
        pages = ", ".join(f"{k} {v}" for k, v in b["pages"].items())
        recs = ", ".join(f"{k} {v}" for k, v in sorted(b["records"].items()) if v)
        w(f"{b['name']:40} {b['size']:#12x}  {pages}\n")
        w(f"{'':40} {'':>12}  records: {recs or 'none'}\n")
        if "missing_pages" in b:
            ranges = ", ".join(f"{o:#x}+{n:#x}" for o, n in b["missing_ranges"])
            w(
                f"{'':40} {'':>12}  {b['missing_pages']} pages missing ({ranges}): give the "
                "multifd or postcopy-preempt channels with --channel\n"
            )
    for c in j["channels"]:
        w(
            f"channel {c['name']}: {c['kind']}, {c.get('packets', 0)} packets, "
            f"{c.get('pages', 0)} pages, {c.get('zero_pages', 0)} zero pages\n"
        )
