"""``qevm mount``: memory and state of a saved VM as a read-only FUSE file system."""

from __future__ import annotations

import argparse
import os

from ..errors import UsageError
from . import add_channel, add_input, add_map, command, open_stream


def _setup(p: argparse.ArgumentParser) -> None:
    add_input(p)
    p.add_argument("mountpoint", metavar="DIR", help="an empty directory to mount on")
    add_channel(p)
    p.add_argument(
        "-f", "--foreground", action="store_true", help="serve in the foreground until unmounted"
    )
    p.add_argument(
        "--no-vmcoreinfo",
        dest="vmcoreinfo",
        action="store_false",
        help="memory.elf without the kernel's VMCOREINFO note",
    )
    add_map(p)


@command(
    "mount",
    "serve memory.elf, memory.raw, ram/<block>, devices.json and cpus.json read-only over FUSE",
    _setup,
)
def run_mount(args: argparse.Namespace) -> int:
    from ..mount import Tree, build_files, mount
    from ..views.memmap import parse_overrides

    if not os.path.isdir(args.mountpoint):
        raise UsageError(f"{args.mountpoint}: not a directory")
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as e:
        raise UsageError(f"qevm mount needs mfusepy and libfuse ({e})") from None
    overrides = parse_overrides(args.map)
    # served at random: a pipe or a decompressor is copied to a file first
    mig = open_stream(args, strict=True, index_ram=True, spool=True)
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
