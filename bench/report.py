"""``qevm report`` on large guests, side by side with ``qevm state --json`` on the same file.

Streams (made with the installed QEMU by ``ram.py``'s generator and cached in
``bench/work/ram``; ``-M pc``, TCG, paused, ``-nodefaults``):

- ``zero-8g``: 8 GiB, all zero but 16 MiB of random bytes at 0x10000000 (shared with
  ``ram.py``);
- ``data-8g``: 8 GiB with 1 GiB of random bytes at 0x10000000;

and, when the corpus is there, its Linux guest with devices (``devices/lx-q35-111``,
512 MiB, decompressed into ``bench/work/streams``).  Each round runs, in fresh child
processes and interleaved, ``qevm state --json F`` and ``qevm report F -o OUT.html``;
then, once per round, ``qevm report zero-8g --diff data-8g`` next to ``qevm diff`` of the
same pair.

Targets (issue 15): the report of an 8 GiB guest in at most 3x the time of ``qevm
state --json`` on it (best of ``-n``, wall time; CPU-time ratios are printed too), and
at most 5 MB.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from benchlib import (
    WORK,
    MiB,
    Run,
    compile_qevm,
    corpus_dir,
    decompress_xz,
    first_error,
    load_line,
    machine_line,
    qevm_cmd,
    qevm_env,
    run,
    table,
    verdict,
    warn_if_busy,
)
from ram import SCENARIOS, Scenario, generate, stream_path

GiB = 1024 * MiB
OUT = WORK / "report"
RATIO = 3.0
SIZE_LIMIT = 5_000_000
EIGHT_GIB = (SCENARIOS["zero-8g"], Scenario("data-8g", "8G", 1 * GiB, 0x10000000, 1.0))


@dataclass
class Row:
    name: str
    guest: str
    state: Run
    report: Run
    size: int

    @property
    def ratio(self) -> float:
        return self.report.wall / self.state.wall

    @property
    def cpu_ratio(self) -> float:
        return (self.report.user + self.report.sys) / (self.state.user + self.state.sys)


def _best(runs: list[Run]) -> Run:
    failed = [r for r in runs if not r.ok]
    if failed:
        raise RuntimeError(f"{' '.join(failed[0].argv)}: {first_error(failed[0].stderr)}")
    best = min(runs, key=lambda r: r.wall)
    best.maxrss = max(r.maxrss for r in runs)
    return best


def measure(name: str, guest: str, path: Path, rounds: int) -> Row:
    env = qevm_env()
    out = OUT / f"{name}.html"
    states, reports = [], []
    for _ in range(rounds):
        states.append(run(qevm_cmd("state", "--json", str(path)), env=env))
        reports.append(run(qevm_cmd("report", str(path), "-o", str(out)), env=env))
    return Row(name, guest, _best(states), _best(reports), out.stat().st_size)


def measure_diff(a: Path, b: Path, rounds: int) -> tuple[Run, Run, int]:
    env = qevm_env()
    out = OUT / "diff-8g.html"
    diffs, reports = [], []
    for _ in range(rounds):
        r = run(qevm_cmd("diff", str(a), str(b)), env=env)
        r.returncode = 0 if r.returncode in (0, 1) else r.returncode  # 1: they differ
        diffs.append(r)
        reports.append(run(qevm_cmd("report", str(a), "--diff", str(b), "-o", str(out)), env=env))
    return _best(diffs), _best(reports), out.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=3, help="rounds (best of N; default 3)")
    ap.add_argument("--no-corpus", action="store_true", help="leave out the corpus' Linux guest")
    args = ap.parse_args()
    warn_if_busy()
    compile_qevm()
    OUT.mkdir(parents=True, exist_ok=True)
    print(machine_line())
    streams: list[tuple[str, str, Path]] = []
    for s in EIGHT_GIB:
        generate(s)
        streams.append((s.name, f"-m {s.mem}, {s.data // MiB} MiB of data", stream_path(s)))
    lx = corpus_dir() / "devices" / "lx-q35-111.mig.xz"
    if lx.exists() and not args.no_corpus:
        path = decompress_xz(lx, WORK / "streams" / "lx-q35-111.mig")
        streams.append(("lx-q35-111", "Linux, 512 MiB, devices", path))
    rows = [measure(name, guest, path, args.n) for name, guest, path in streams]
    print(
        table(
            [
                "stream",
                "guest",
                "stream MiB",
                "state s",
                "report s",
                "ratio",
                "cpu ratio",
                "report MiB RSS",
                "page bytes",
            ],
            [
                [
                    r.name,
                    r.guest,
                    f"{os.path.getsize(p) / MiB:.0f}",
                    f"{r.state.wall:.2f}",
                    f"{r.report.wall:.2f}",
                    f"{r.ratio:.2f}x",
                    f"{r.cpu_ratio:.2f}x",
                    f"{r.report.rss_mib:.0f}",
                    f"{r.size}",
                ]
                for r, (_, _, p) in zip(rows, streams)
            ],
        )
    )
    a, b = stream_path(EIGHT_GIB[0]), stream_path(EIGHT_GIB[1])
    diff, rep, size = measure_diff(a, b, args.n)
    print(
        f"\nzero-8g vs data-8g: qevm diff {diff.wall:.2f} s ({diff.rss_mib:.0f} MiB), "
        f"qevm report --diff {rep.wall:.2f} s ({rep.rss_mib:.0f} MiB), page {size} bytes"
    )
    print(load_line())
    ok = True
    for r in rows:
        if not r.name.endswith("-8g"):
            continue
        good = r.ratio <= RATIO and r.size <= SIZE_LIMIT
        ok &= good
        print(
            f"{verdict(good)} {r.name}: report {r.ratio:.2f}x the time of state --json "
            f"(target {RATIO:.0f}x; CPU time {r.cpu_ratio:.2f}x), {r.size} bytes "
            f"(target {SIZE_LIMIT})"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
