"""``qevm devices``: what the device state means (PCI, virtio, interrupt controllers, ...)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..render import jsonout
from . import add_channel, add_input, command, outcome, report_errors, warn_missing


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
    mig = qopen(
        src, desc=getattr(args, "desc", None), index_ram=ram, channels=channels, strict=False
    )
    report_errors(mig)
    return mig


# -- qevm state --decode ------------------------------------------------------------


def open_for_state(args: argparse.Namespace) -> Any:
    """``qevm state --decode`` opens the input as ``qevm devices`` does."""
    from ..errors import UsageError

    if args.compat:
        raise UsageError("--decode adds qevm's own views; analyze-migration.py's output has none")
    return open_for_devices(args)


def report_for_state(args: argparse.Namespace, mig: Any) -> Any:
    from ..devices import decode

    return decode(mig, pattern=args.device)


def _items(report: Any, name: str, instance_id: int) -> list[tuple[str, Any]]:
    return [
        (kind, it)
        for kind, it in report.for_section(name)
        if getattr(it, "instance_id", instance_id) == instance_id
    ]


def attach_decoded(data: dict[str, Any], report: Any) -> None:
    """Each device of ``qevm state --json`` gets its views as ``decoded``, by kind."""
    if report is None:
        return
    for d in data["devices"]:
        found: dict[str, list[Any]] = {}
        for kind, item in _items(report, d["name"], d["instance_id"]):
            j = item.to_json()
            found.setdefault(kind, []).extend(j if isinstance(j, list) else [j])
        if found:
            d["decoded"] = found


def write_decoded(report: Any, dev: Any, out: Any) -> None:
    """The views of one section, under its state tree."""
    if report is None:
        return
    for _kind, item in _items(report, dev.name, dev.instance_id):
        out.write("  decoded:\n")
        for line in item.format():
            out.write("    " + line.replace("\t", "  ") + "\n")


# -- qevm devices -----------------------------------------------------------------------


def _setup(p: argparse.ArgumentParser) -> None:
    add_input(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", metavar="GLOB", help="only sections whose name matches GLOB")
    p.add_argument(
        "--no-ram",
        action="store_true",
        help="do not read guest RAM (virtio ring indexes are then not shown)",
    )
    add_channel(p)


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
        if not args.no_ram:
            warn_missing(mig.missing_pages())  # rings in them read as zeros
        return outcome(mig)
