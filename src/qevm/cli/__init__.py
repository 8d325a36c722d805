"""The ``qevm`` command line: thin subcommands over the Python API.

Each module of this package registers its subcommands with :func:`command`.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..errors import QevmError

#: subcommand name -> (setup(parser), run(args))
COMMANDS: dict[
    str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {}


def command(name: str, help: str, setup: Callable[[argparse.ArgumentParser], None] | None = None):
    """Register ``run`` as subcommand ``name``; ``setup`` adds its options."""

    def deco(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        run.help = help  # type: ignore[attr-defined]
        COMMANDS[name] = (setup or (lambda p: None), run)
        return run

    return deco


def add_input(p: argparse.ArgumentParser, desc: bool = True) -> None:
    """The options every command that reads a stream takes."""
    p.add_argument(
        "file", help="stream, compressed stream, libvirt image or qcow2 image; - for stdin"
    )
    p.add_argument(
        "--format",
        default="auto",
        help="force the input format: stream, libvirt, qcow2, gzip, xz, bzip2, zstd, lzop "
        "(default: detect from content)",
    )
    p.add_argument("--snapshot", metavar="NAME|ID", help="qcow2: the internal snapshot to read")
    if desc:
        p.add_argument(
            "--desc",
            metavar="FILE",
            help="take the JSON description from FILE (another stream of the same QEMU "
            "build and machine, or saved `qevm desc` output) for streams without one",
        )


def open_input(args: argparse.Namespace) -> Any:
    """The command's input as a byte source, its containers unwrapped (``--format``,
    ``--snapshot``): for commands that look at it before reading the stream."""
    from ..source import open_source

    return open_source(args.file, format=args.format, snapshot=args.snapshot)


def open_stream(args: argparse.Namespace, source: Any = None, **kw: Any):
    """``qevm.open`` of the command's input (or of ``source``, from :func:`open_input`)
    with the common options: ``--desc``, ``--format``, ``--snapshot``, ``--channel``.

    Not strict unless ``strict=True``: what cannot be read is reported on
    stderr right away and the command shows the rest (finish with
    :func:`outcome`).  Other keywords go to ``qevm.open`` (``index_ram``,
    ``spool``, ``ram_consumer``, ...).
    """
    from .. import open as qopen

    kw.setdefault("strict", False)
    kw.setdefault("channels", getattr(args, "channel", None) or None)
    mig = qopen(
        source if source is not None else args.file,
        desc=getattr(args, "desc", None),
        format=args.format,
        snapshot=args.snapshot,
        **kw,
    )
    report_errors(mig)
    return mig


def report_errors(mig: Any) -> None:
    """Each error met reading the stream, one line each on stderr."""
    for e in mig.errors:
        print(f"qevm: error: {e}", file=sys.stderr)


def outcome(mig: Any) -> int:
    """The exit status: 0 all was read, 1 a partial result, 2 nothing usable."""
    if not mig.errors:
        return 0
    return 1 if mig.usable else 2


def byte_size(text: str) -> int:
    """An argparse type: an integer in any base with an optional K/M/G/T suffix."""
    from ..views.memmap.model import parse_size

    try:
        return parse_size(text)
    except QevmError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (an integer, 0x... for hex, with K, M, G or T)"
        ) from None


def no_match(what: str, globs: Any) -> int:
    """Say that ``globs`` selected nothing; the exit status for it."""
    shown = ", ".join(globs) if isinstance(globs, (list, tuple)) else globs
    print(f"qevm: {what} matches {shown}", file=sys.stderr)
    return 1


def add_channel(
    p: argparse.ArgumentParser, flag: str = "--channel", whose: str = "the migration"
) -> None:
    """``--channel FILE``, for every command that reads RAM (``flag`` for another input's:
    ``--b-channel``, ``whose`` naming its migration)."""
    p.add_argument(
        flag,
        action="append",
        default=[],
        metavar="FILE",
        help=f"recorded bytes of an extra connection of {whose} (multifd channel, "
        "postcopy-preempt channel); repeat for each",
    )


def add_output(p: argparse.ArgumentParser, metavar: str, help: str) -> None:
    """``-o/--output``, required."""
    p.add_argument("-o", "--output", required=True, metavar=metavar, help=help)


def add_map(p: argparse.ArgumentParser) -> None:
    """``--map``, for every command that lays out guest-physical memory."""
    p.add_argument(
        "--map",
        action="append",
        metavar="BLOCK=GPA[+OFFSET:LEN],...",
        help="map BLOCK (or LEN bytes of it from OFFSET) at guest-physical GPA instead of "
        "what qevm derives for it; repeatable; sizes take K/M/G suffixes",
    )


def add_json(p: argparse.ArgumentParser) -> None:
    """``--json``."""
    p.add_argument("--json", action="store_true", help="print JSON")


def emit(args: argparse.Namespace, result: Any, write_text: Callable[[Any, Any], None]) -> None:
    """``result.to_json()`` on stdout with ``--json``, else ``write_text(result, stdout)``."""
    if args.json:
        from ..render import jsonout

        jsonout.dump(result.to_json(), sys.stdout, indent=2)
    else:
        write_text(result, sys.stdout)


def warn_missing(missing: dict[str, int]) -> None:
    """Say on stderr how many pages of each block no record gave (they read as zeros)."""
    for name, n in missing.items():
        print(
            f"warning: {name}: {n} page{'s' if n != 1 else ''} missing (read as zeros)",
            file=sys.stderr,
        )
    if missing:
        print(
            "warning: pages that are not in the stream travel on the migration's extra "
            "connections: give the multifd or postcopy-preempt channels with --channel",
            file=sys.stderr,
        )


@functools.cache
def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (built once per process: building it takes about
    15 ms, much of it argparse's message look-ups, which a program calling
    :func:`main` many times should pay once)."""
    import importlib
    import pkgutil

    # Every module of this package registers its subcommands when imported.
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{mod}")

    parser = argparse.ArgumentParser(
        prog="qevm",
        description="Decode, extract and rewrite QEMU migration streams.",
    )
    parser.add_argument("--version", action="version", version=f"qevm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    # --debug also after the command (default SUPPRESS: it does not undo a --debug before it)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show a traceback on errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (setup, run) in COMMANDS.items():
        p = sub.add_parser(name, help=run.help, description=run.help, parents=[common])  # type: ignore[attr-defined]
        setup(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # qevm does no linear algebra: a BLAS thread pool, started with numpy,
    # would only take CPU time from the thread that writes RAM out.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        from .guard import refuse_stdout_input

        refuse_stdout_input(args)
        return args.run(args) or 0
    except QevmError as e:
        if args.debug:
            raise
        print(f"qevm: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (e.g. `qevm state ... | head`): not an error.
        sys.stderr.close()
        return 0
    except OSError as e:
        if args.debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"qevm: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: say so in one line
        if args.debug:
            raise
        print(
            f"qevm: internal error: {type(e).__name__}: {e} (run with --debug for a traceback; "
            "please report it)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
