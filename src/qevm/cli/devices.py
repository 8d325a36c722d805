"""``qevm devices``: what the device state means (PCI, virtio, interrupt controllers, ...)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..render import jsonout
from . import add_input, command
from .ram import _add_channel


def open_for_devices(args: argparse.Namespace, *, ram: bool = True) -> Any:
    """Open the input with the page index (virtio rings are read from guest RAM).

    A pipe or compressed input is first copied to a temporary file, since
    the rings are found only after RAM has gone by.
    """
    from .. import open as qopen
    from ..source import open_source
    from ..writer import spool

    src = open_source(args.file, format=args.format, snapshot=args.snapshot)
    if ram and not src.seekable:
        try:
            copy = spool(src)
        finally:
            src.close()
        src = copy
    channels = getattr(args, "channel", None) or None
    return qopen(src, desc=getattr(args, "desc", None), index_ram=ram, channels=channels)


def _setup(p: argparse.ArgumentParser) -> None:
    add_input(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", metavar="GLOB", help="only sections whose name matches GLOB")
    p.add_argument(
        "--no-ram",
        action="store_true",
        help="do not read guest RAM (virtio ring indexes are then not shown)",
    )
    _add_channel(p)


@command(
    "devices",
    "what device state means: PCI functions (lspci -vv style), virtio devices with their "
    "rings, LAPIC/IOAPIC/8259, HPET/PIT/RTC, NIC MACs, 16550 UARTs",
    _setup,
)
def run_devices(args: argparse.Namespace) -> int:
    from ..devices import decode

    with open_for_devices(args, ram=not args.no_ram) as mig:
        report = decode(mig, memory=not args.no_ram, pattern=args.device)
        if args.json:
            jsonout.dump(report.to_json(), sys.stdout, indent=2)
        else:
            out = sys.stdout
            for line in report.format():
                out.write(line + "\n")
    return 0
