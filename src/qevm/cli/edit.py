"""``qevm edit`` and ``qevm convert``: write a stream back, changed or converted."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..vmstate.types import field_type
from . import add_channel, add_input, command
from .guard import refuse_input

if TYPE_CHECKING:
    from ..sections.ram.write import RamWrite


def _split(spec: str, what: str, example: str) -> tuple[str, str]:
    left, sep, right = spec.partition("=")
    if not sep or not left:
        raise UsageError(f"{what} {spec!r}: write {example}")
    return left, right


def parse_ram_write(spec: str) -> RamWrite:
    """``BLOCK:OFFSET=@FILE`` or ``BLOCK:OFFSET=HEX`` as a :class:`RamWrite`."""
    from ..sections.ram.write import RamWrite, bytes_reader, file_reader

    example = "BLOCK:OFFSET=@FILE or BLOCK:OFFSET=HEXBYTES, e.g. pc.ram:0x100000=@data.bin"
    left, value = _split(spec, "--write-ram", example)
    block, sep, off = left.rpartition(":")
    if not sep or not block:
        raise UsageError(f"--write-ram {spec!r}: write {example}")
    try:
        offset = int(off, 0)
    except ValueError:
        raise UsageError(f"--write-ram {spec!r}: {off!r} is not an offset") from None
    if value.startswith("@"):
        read, size = file_reader(value[1:])
        return RamWrite(block, offset, size, read)
    try:
        data = bytes.fromhex(value.removeprefix("0x").replace(" ", ""))
    except ValueError:
        raise UsageError(
            f"--write-ram {spec!r}: {value!r} is neither @FILE nor hex bytes"
        ) from None
    return RamWrite(block, offset, len(data), bytes_reader(data))


def _setup_edit(p: argparse.ArgumentParser) -> None:
    add_input(p)
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="where to write (- for stdout)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="set a device field: NAME[#INSTANCE]:FIELD[i]/FIELD..., e.g. "
        "cpu#0:env.regs[0]=0x1234abcd (repeatable)",
    )
    p.add_argument(
        "--write-ram",
        action="append",
        default=[],
        metavar="BLOCK:OFFSET=@FILE",
        help="replace RAM block bytes at OFFSET with FILE's contents (or =HEXBYTES; repeatable)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="do not list the changes")


@command(
    "edit",
    "write the stream back with device fields and RAM changed (without changes: byte-identical)",
    _setup_edit,
)
def run_edit(args: argparse.Namespace) -> int:
    from ..edit import set_field
    from ..sections.ram.write import RamPatch
    from ..writer import open_for_writing, write_stream

    if args.output != "-":
        refuse_input(args.output, args)
    sets = [_split(s, "--set", "NAME[#INSTANCE]:FIELD=VALUE") for s in args.set]
    writes = [parse_ram_write(s) for s in args.write_ram]
    mig = open_for_writing(
        args.file,
        desc=args.desc,
        format=args.format,
        snapshot=args.snapshot,
        index_ram=bool(writes),
    )
    notes = []
    with mig:
        for path, value in sets:
            for ref, old, new in set_field(mig, path, value):
                t = field_type(ref.target.fv.desc)
                dev = ref.device
                label = f"{dev.name}#{dev.instance_id}"
                where = path.split(":", 1)[1] if path.count(":") else path
                notes.append(
                    f"{label}:{where.rpartition(':')[2]}  {t.format(old)} -> {t.format(new)}"
                )
        patch = None
        if writes:
            patch = RamPatch(mig)
            for wr in writes:
                patch.add(wr)
                notes.append(f"{wr.block}:{wr.offset:#x}  {wr.length} bytes")
        n = write_stream(mig, args.output, ram_patch=patch)
    if not args.quiet:
        for line in notes:
            print(line, file=sys.stderr)
        print(f"wrote {args.output} ({n} bytes)", file=sys.stderr)
    return 0


def _setup_convert(p: argparse.ArgumentParser) -> None:
    add_input(p)
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="where to write (- for stdout)"
    )
    p.add_argument(
        "--to",
        choices=["stream"],
        default="stream",
        help="stream: a plain single-pass stream (no mapped-ram, one copy of every page)",
    )
    add_channel(p)
    p.add_argument("-q", "--quiet", action="store_true", help="do not report what changed")


@command(
    "convert",
    "turn a mapped-ram file, a multi-pass, multifd or postcopy stream into a plain one-pass stream",
    _setup_convert,
)
def run_convert(args: argparse.Namespace) -> int:
    from ..convert import ConvertWriter
    from ..writer import open_for_writing, write_stream

    if args.output != "-":
        refuse_input(args.output, args)
    mig = open_for_writing(
        args.file,
        desc=args.desc,
        format=args.format,
        snapshot=args.snapshot,
        index_ram=True,
        channels=args.channel,
    )
    with mig:
        writer = ConvertWriter(mig)
        n = write_stream(mig, args.output, writer)
    if not args.quiet:
        if writer.dropped:
            print(f"dropped capabilities: {', '.join(writer.dropped)}", file=sys.stderr)
        print(f"wrote {args.output} ({n} bytes)", file=sys.stderr)
    return 0
