"""``qevm extract`` and ``qevm ram``: guest RAM out of a stream."""

from __future__ import annotations

import argparse
import fnmatch
import io
import os
import sys
from typing import Any

from .. import open as qopen
from ..errors import UsageError
from ..migration import Migration
from ..ramio import (
    Piece,
    Placement,
    block_paths,
    copy_block_range,
    create_block_file,
)
from ..ramsink import StreamingSink
from ..render import compat, jsonout
from ..source import open_source
from ..writebehind import WriteBehind
from . import (
    add_channel,
    add_input,
    byte_size,
    command,
    no_match,
    outcome,
    report_errors,
    warn_missing,
)
from .guard import refuse_input
from .progress import Progress

#: The name ``--channel``'s setup had here before it moved to the package (branches
#: written against it still import it from this module).
_add_channel = add_channel


def _selected(name: str, globs: list[str] | None) -> bool:
    return not globs or any(fnmatch.fnmatchcase(name, g) for g in globs)


def _setup_extract(p: argparse.ArgumentParser) -> None:
    add_input(p)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
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
    os.makedirs(args.output, exist_ok=True)
    for name in ("desc.json", "state.json"):
        refuse_input(os.path.join(args.output, name), args)
    src = open_source(args.file, format=args.format, snapshot=args.snapshot)
    progress = Progress("reading", src.size)
    fds: dict[str, int] = {}
    notes: dict[str, str] = {}
    paths: dict[str, str] = {}

    def place(block: Any) -> Placement | None:
        if not _selected(block.name, args.block):
            return None
        rel, note = block_paths([*paths, block.name])[block.name]
        paths[block.name] = rel
        if note:
            notes[block.name] = note
        refuse_input(os.path.join(args.output, rel), args)
        fd = create_block_file(args.output, rel, block.used_length)
        fds[block.name] = fd
        return Placement([Piece(0, block.used_length, fd, 0)])

    # One pass: pages are written as they are read.  Only the pages of extra
    # channels need the whole main stream indexed first (their order comes
    # from its sync points), then copied.
    sink: StreamingSink | None = None

    def consumer(ctx: Any, ps: int) -> StreamingSink:
        nonlocal sink
        sink = StreamingSink(ps, place, src if src.seekable else None)
        return sink

    try:
        if args.channel:
            mig = qopen(
                src,
                desc=args.desc,
                index_ram=True,
                channels=args.channel,
                progress=progress.update,
                strict=False,
            )
        else:
            mig = qopen(
                src, desc=args.desc, ram_consumer=consumer, progress=progress.update, strict=False
            )
        with mig:
            progress.done()
            report_errors(mig)
            if args.channel:
                _write_blocks(mig, args, place)
            elif sink is not None:
                sink.close()
            for b in mig.ram_blocks:
                if b.name not in paths:  # no page of it reached the main stream: zeros
                    place(b)
            _write_json(mig, args.output)
            _report(mig, paths, notes)
            if args.block and not paths:
                return no_match("no RAM block", args.block)
            return outcome(mig)
    finally:
        if sink is not None:
            sink.abort()
        for fd in fds.values():
            os.close(fd)


def _write_blocks(mig: Migration, args: argparse.Namespace, place: Any) -> None:
    index = mig.page_index
    blocks = [b for b in mig.ram_blocks if _selected(b.name, args.block)]
    progress = Progress("writing", sum(b.used_length for b in blocks))
    done = 0
    wb = WriteBehind()
    try:
        for b in blocks:
            placement = place(b)
            piece = placement.pieces[0]
            copy_block_range(index, b.name, 0, b.used_length, piece.fd, 0, wb)
            done += b.used_length
            progress.update(done)
        wb.close()
    finally:
        wb.abort()
    progress.done()


def _write_json(mig: Migration, out: str) -> None:
    # Same files, same text as analyze-migration.py -x writes (no final newline).
    if mig.description is not None:
        with open(os.path.join(out, "desc.json"), "w") as f:
            f.write(jsonout.dumps(compat.desc_compat(mig), 4))
    with open(os.path.join(out, "state.json"), "w") as f:
        f.write(jsonout.dumps(compat.state_compat(mig), 4))


def _report(mig: Migration, paths: dict[str, str], notes: dict[str, str]) -> None:
    if mig.description is not None:
        print("desc.json")
    print("state.json")
    try:
        missing = {k: n for k, n in mig.missing_pages().items() if k in paths}
    except UsageError:  # no block was written
        missing = {}
    for b in mig.ram_blocks:
        if b.name not in paths:
            continue
        extra = []
        if b.name in notes:
            extra.append(f"from block {b.name!r}: {notes[b.name]}")
        if not b.in_stream:
            extra.append("not in the stream (x-ignore-shared): left as zeros")
        elif b.name in missing:
            extra.append(
                f"{missing[b.name]} pages missing (give the multifd or postcopy-preempt "
                "channels with --channel)"
            )
        print(paths[b.name] + ("  (" + "; ".join(extra) + ")" if extra else ""))
    for w in mig.warnings:
        print(f"warning: {w}", file=sys.stderr)
    warn_missing(missing)


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
    p.add_argument("--json", action="store_true", help="print JSON")
    add_channel(p)


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
    src = open_source(args.file, format=args.format, snapshot=args.snapshot)
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
        mig = qopen(
            src,
            desc=args.desc,
            index_ram=True,
            channels=args.channel,
            decode_devices=False,
            strict=False,
        )
    else:
        # Read once: the statistics need no page bytes, a hexdump only its range's.
        from ..ramspool import SpoolingIndex

        end = None if args.offset is None else args.offset + max(length, 0)
        start = max(args.offset or 0, 0)
        mig = qopen(
            src,
            desc=args.desc,
            decode_devices=False,
            strict=False,
            ram_consumer=lambda ctx, ps: SpoolingIndex(ps, args.block, start, end),
        )
    with mig:
        report_errors(mig)
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
