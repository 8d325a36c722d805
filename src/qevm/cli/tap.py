"""``qevm tap``: watch and record a live migration between two QEMUs."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from . import command


def _setup(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--listen",
        required=True,
        metavar="HOST:PORT",
        help="where the source migrates to (migrate tcp:HOST:PORT)",
    )
    p.add_argument(
        "--to",
        required=True,
        metavar="HOST:PORT",
        help="the destination's -incoming tcp:HOST:PORT",
    )
    p.add_argument(
        "--record",
        metavar="DIR",
        help="keep the recording in DIR (main.mig, return-path.bin, channel-N.bin, "
        "session.json); without it a temporary one is kept only if the migration fails",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per event, summary last")
    p.add_argument(
        "--keep",
        action="store_true",
        help="serve the next migration too (each recorded in DIR/1, DIR/2, ...)",
    )


@command("tap", "forward a live migration, recording and decoding it as it flows", _setup)
def run_tap(args: argparse.Namespace) -> int:
    from ..tap.proxy import Tap, parse_address
    from ..tap.view import JsonLines, LiveView, LogView

    listen, to = parse_address(args.listen), parse_address(args.to)
    view: Any
    if args.json:
        view = JsonLines(sys.stdout)
    elif sys.stdout.isatty():
        view = LiveView()
    else:
        view = LogView(sys.stdout)
    tap = Tap(listen, to, record=args.record, keep=args.keep, on_event=view)
    # Ctrl-C and SIGTERM stop the tap cleanly: connections reset, recording kept, summary.
    previous = {
        sig: signal.signal(sig, lambda *_: tap.stop()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        if isinstance(view, LiveView):
            with view:
                status = tap.serve()
        else:
            status = tap.serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 130 if tap.interrupted else status
