"""``qevm cpu``: named CPU registers."""

from __future__ import annotations

import argparse
import sys

from ..errors import UsageError
from ..render import jsonout
from . import add_input, command, open_stream, outcome


def _setup(p: argparse.ArgumentParser) -> None:
    add_input(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--cpu", metavar="N", type=int, help="only the CPU with index N")


@command("cpu", "CPU registers by name, from the decoded cpu sections", _setup)
def run_cpu(args: argparse.Namespace) -> int:
    with open_stream(args) as mig:
        from ..views.cpu import cpus

        found = cpus(mig)
        status = outcome(mig)
    if args.cpu is not None:
        chosen = [c for c in found if c.index == args.cpu]
        if not chosen:
            have = ", ".join(str(c.index) for c in found)
            raise UsageError(f"no CPU {args.cpu}; the stream has CPU {have}")
        found = chosen
    out = sys.stdout
    if args.json:
        jsonout.dump({"cpus": [c.to_json() for c in found]}, out, indent=2)
        return status
    for n, cpu in enumerate(found):
        if n:
            out.write("\n")
        out.write(f"CPU#{cpu.index} ({cpu.arch})\n")
        for line in cpu.format():
            out.write(line + "\n")
    return status
