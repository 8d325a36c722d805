"""``qevm mount``: memory and state of a saved VM as a read-only FUSE file system."""

from __future__ import annotations

import argparse
import os

from ..errors import UsageError
from . import add_input, command
from .memory import _add_map


def _setup(p: argparse.ArgumentParser) -> None:
    add_input(p)
    p.add_argument("mountpoint", metavar="DIR", help="an empty directory to mount on")
    p.add_argument(
        "--channel",
        action="append",
        metavar="FILE",
        help="recorded bytes of an extra connection of the migration (multifd); repeatable",
    )
    p.add_argument(
        "-f", "--foreground", action="store_true", help="serve in the foreground until unmounted"
    )
    p.add_argument(
        "--no-vmcoreinfo",
        dest="vmcoreinfo",
        action="store_false",
        help="memory.elf without the kernel's VMCOREINFO note",
    )
    _add_map(p)


@command(
    "mount",
    "serve memory.elf, memory.raw, ram/<block>, devices.json and cpus.json read-only over FUSE",
    _setup,
)
def run_mount(args: argparse.Namespace) -> int:
    from .. import open as qopen
    from ..mount import Tree, build_files, mount
    from ..source import open_source
    from ..views.memmap import parse_overrides
    from ..writer import spool

    if not os.path.isdir(args.mountpoint):
        raise UsageError(f"{args.mountpoint}: not a directory")
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as e:
        raise UsageError(f"qevm mount needs mfusepy and libfuse ({e})") from None
    overrides = parse_overrides(args.map)
    src = open_source(args.file, format=args.format, snapshot=args.snapshot)
    if not src.seekable:  # served at random: a pipe or a decompressor is copied first
        try:
            copy = spool(src)
        finally:
            src.close()
        src = copy
    mig = qopen(src, desc=args.desc, index_ram=True, channels=args.channel)
    try:
        tree = Tree(build_files(mig, overrides, args.vmcoreinfo))
        try:
            pid = mount(tree, args.mountpoint, foreground=args.foreground)
        except (OSError, RuntimeError) as e:
            raise UsageError(f"cannot mount on {args.mountpoint}: {e}") from None
        if pid is not None:
            print(
                f"{args.mountpoint}: {', '.join(sorted(tree.dirs['']))} "
                f"(server pid {pid}; unmount with fusermount -u {args.mountpoint})"
            )
    finally:
        mig.close()
    return 0
