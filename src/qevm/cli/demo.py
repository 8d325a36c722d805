"""``qevm demo``: the main commands on the example stream shipped with qevm."""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Iterator
from importlib import resources

from . import command

#: What the example is (the recipe is src/qevm/data/demo.json, made by tests/gen_robust.py).
ABOUT = (
    "a q35 VM with 32 MiB of RAM, an e1000 NIC and a virtio RNG that ran its firmware "
    '(SeaBIOS) for half a second, saved by QEMU 7.2 with migrate "exec:cat > FILE" '
    "and compressed with xz"
)
#: (arguments, lines of output shown) of each command run.
STEPS: tuple[tuple[tuple[str, ...], int], ...] = (
    (("info",), 14),
    (("cpu",), 12),
    (("state", "--device", "0000:00:01.0/e1000"), 16),
)


@contextlib.contextmanager
def example_path() -> Iterator[str]:
    """The example stream as a file path (extracted first when the package is zipped)."""
    with resources.as_file(resources.files("qevm") / "data" / "demo.mig.xz") as path:
        yield str(path)


def _setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", action="store_true", help="only print the example stream's file name")


@command("demo", "run the main commands on the example stream that comes with qevm", _setup)
def run_demo(args: argparse.Namespace) -> int:
    from . import main

    with example_path() as path:
        if args.path:
            print(path)
            return 0
        out = sys.stdout
        out.write(f"The example stream is {ABOUT}:\n  {path}\n")
        for step, lines in STEPS:
            argv = [step[0], path, *step[1:]]
            shown = " ".join(a if " " not in a else repr(a) for a in argv)
            out.write(f"\n$ qevm {shown.replace(path, 'EXAMPLE')}\n")
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                status = main(argv)
            text = buf.getvalue().splitlines()
            out.write("\n".join(text[:lines]) + "\n")
            if len(text) > lines:
                out.write(f"... ({len(text) - lines} more lines)\n")
            if status:
                return status
        out.write(
            "\nEXAMPLE is the file above; `qevm demo --path` prints it, so any command can "
            'read it: qevm state --json "$(qevm demo --path)".  On your own streams:\n'
            "  qevm info FILE            what the stream holds\n"
            "  qevm state FILE           every device's state (--json, --compat)\n"
            "  qevm cpu FILE             CPU registers\n"
            "  qevm extract FILE -o DIR  RAM blocks as files\n"
            "  qevm --help               every command\n"
        )
    return 0
