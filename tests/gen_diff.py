"""Make one VM saved twice with real QEMU, and QEMU's own account of what changed.

The VM (``-m 32``, no guest OS: SeaBIOS runs) starts paused; at that moment
its state is migrated to ``NAME.a.mig`` and QEMU's ``pmemsave`` of
guest-physical 0..32 MiB and ``info registers`` are recorded; then it runs
for a moment (``cont``), is stopped again, and the same is recorded as
``NAME.b.mig``.  ``NAME.json`` holds the command line, both ``info
registers`` texts and ``diff_pages``: the guest-physical 4 KiB pages whose
contents differ between the two pmemsaves, as ``[start, end)`` ranges.
Nothing in the truth comes from qevm.

    python tests/gen_diff.py OUTDIR            # writes NAME.a.mig.xz NAME.b.mig.xz NAME.json
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from qemu_util import qemu_version, xz_file  # noqa: E402
from qemuvm import Vm  # noqa: E402

NAME = "bios-run-72"
ARGV = ["-M", "pc-q35-7.2", "-m", "32", "-S", "-nodefaults", "-display", "none", "-accel", "tcg"]
RAM = 32 << 20
PAGE = 4096


def _pages(path: pathlib.Path) -> list[bytes]:
    data = path.read_bytes()
    return [hashlib.sha256(data[i : i + PAGE]).digest() for i in range(0, len(data), PAGE)]


def make(out: pathlib.Path, binary: str = "qemu-system-x86_64", run_s: float = 0.3) -> dict:
    with tempfile.TemporaryDirectory(prefix="qevm-gen-diff-") as tmp:
        work = pathlib.Path(tmp)
        regs = {}
        with Vm(binary, ARGV, work, NAME) as vm:
            for side in ("a", "b"):
                if side == "b":
                    vm.cmd("cont")
                    time.sleep(run_s)
                    vm.cmd("stop")
                regs[side] = vm.hmp("info registers")
                vm.cmd("pmemsave", val=0, size=RAM, filename=str(work / f"{side}.pmem"))
                vm.save(work / f"{side}.mig")
        pa, pb = _pages(work / "a.pmem"), _pages(work / "b.pmem")
        ranges: list[list[int]] = []
        for i, (x, y) in enumerate(zip(pa, pb)):
            if x != y:
                if ranges and ranges[-1][1] == i * PAGE:
                    ranges[-1][1] += PAGE
                else:
                    ranges.append([i * PAGE, (i + 1) * PAGE])
        for side in ("a", "b"):
            xz_file(work / f"{side}.mig", out / f"{NAME}.{side}.mig.xz")
    truth = {
        "name": NAME,
        "qemu_version": qemu_version(binary),
        "argv": ARGV,
        "run_seconds": run_s,
        "pmem": [0, RAM],
        "truth_a": regs["a"],
        "truth_b": regs["b"],
        "diff_pages": ranges,
        "made_by": "tests/gen_diff.py",
    }
    (out / f"{NAME}.json").write_text(json.dumps(truth, indent=1) + "\n")
    return truth


if __name__ == "__main__":
    t = make(pathlib.Path(sys.argv[1]))
    print(len(t["diff_pages"]), "ranges differ")
