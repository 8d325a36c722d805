"""RAM extraction, side by side: ``qevm extract`` vs ``analyze-migration.py -x``.

Two streams are made with the installed QEMU (``qemu-system-x86_64``, TCG, paused with
``-S``, ``-nodefaults -display none``) and cached in ``bench/work/ram``:

- ``rand-2g``: ``-M pc -m 2G`` with 1 GiB of random bytes loaded at guest-physical
  0x10000000 (``-device loader``, in 256 MiB files);
- ``zero-8g``: ``-M pc -m 8G``, all zero but 16 MiB of random bytes at 0x10000000;

each saved with QMP ``migrate "exec:cat > F"`` over a unix socket (bandwidth limit lifted),
waiting for ``completed``.  Then, per stream and round, in fresh child processes:

- ``python analyze-migration.py -f F -x``   (in an empty directory: it writes to the cwd)
- ``python -m qevm extract F -o DIR``
- ``cat F | python -m qevm extract - -o DIR``  (piped)
- ``cat F | python -m qevm state - --json``   (piped)

The block files of the three extractions are compared by sha256, and the loaded random
bytes are checked at their place in ``pc.ram``.  Targets (RAM and containers issues):
extraction at least 4x faster than the reference on ``rand-2g`` and 5x on ``zero-8g``,
qevm's peak RSS under 150 MiB in every qevm run, piped ones included.  Outputs are
deleted after each run (they are sparse; ``df`` is checked first).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    QEMU,
    WORK,
    GiB,
    MiB,
    Run,
    compile_qevm,
    first_error,
    load_line,
    machine_line,
    qemu_version,
    qevm_cmd,
    qevm_env,
    ref_env,
    run,
    save_random_guest,
    table,
    verdict,
    warn_if_busy,
)
from reference import reference_script

RAMDIR = WORK / "ram"
RSS_LIMIT_MIB = 150.0
SAMPLE = 0.01  # seconds between samples of a child's RssAnon/RssFile


@dataclass(frozen=True)
class Scenario:
    name: str
    mem: str  # -m
    data: int  # bytes of random data loaded
    addr: int  # guest-physical address of the data (below 4 GiB: pc.ram offset == addr)
    target: float  # required speed-up of qevm extract over analyze-migration.py -x


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("rand-2g", "2G", 1 * GiB, 0x10000000, 4.0),
        Scenario("zero-8g", "8G", 16 * MiB, 0x10000000, 5.0),
    )
}


def stream_path(s: Scenario) -> Path:
    return RAMDIR / f"{s.name}.mig"


def meta_path(s: Scenario) -> Path:
    return RAMDIR / f"{s.name}.json"


def generate(s: Scenario) -> dict[str, Any]:
    """Make (or reuse) the stream of ``s``; returns its metadata."""
    mig, meta = stream_path(s), meta_path(s)
    if mig.is_file() and meta.is_file():
        return json.loads(meta.read_text())
    RAMDIR.mkdir(parents=True, exist_ok=True)
    need = s.data * 2 + 64 * MiB
    free = shutil.disk_usage(RAMDIR).free
    if free < need:
        raise RuntimeError(f"{RAMDIR}: {free / GiB:.1f} GiB free, generating needs {need / GiB}")
    print(f"... generating {s.name} with {qemu_version()}", file=sys.stderr, flush=True)
    params = {"max-bandwidth": 64 * GiB}
    info_meta = save_random_guest(mig, mem=s.mem, data=s.data, addr=s.addr, parameters=params)
    meta.write_text(json.dumps(info_meta, indent=2) + "\n")
    return info_meta


# --------------------------------------------------------------------------- measuring


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MiB):
            h.update(block)
    return h.hexdigest()


def block_files(root: Path) -> list[str]:
    """The RAM block files an extraction wrote (everything but desc.json/state.json)."""
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in ("desc.json", "state.json"):
            out.append(rel)
    return out


def digests(root: Path, pool: ThreadPoolExecutor) -> dict[str, str]:
    names = block_files(root)
    return dict(zip(names, pool.map(lambda n: _sha256(root / n), names)))


def data_digest(path: Path, offset: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = size
        while left:
            block = f.read(min(left, 8 * MiB))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def allocated(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


@dataclass
class Result:
    s: Scenario
    stream_size: int
    runs: dict[str, Run] = field(default_factory=dict)
    #: every round's wall time per command
    walls: dict[str, list[float]] = field(default_factory=dict)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, what: str, ok: bool, detail: str = "") -> None:
        self.checks.append((what, ok, detail))


MODES = ("ref", "extract", "extract-pipe", "state-pipe")


@dataclass
class Output:
    """What one extraction wrote, taken down before its files are deleted."""

    sums: dict[str, str]
    json: dict[str, Any]
    allocated: int
    data_sha256: str | None


def summarize(d: Path, meta: dict[str, Any], pool: ThreadPoolExecutor) -> Output:
    docs = {}
    for name in ("state.json", "desc.json"):
        if (d / name).is_file():
            docs[name] = json.loads((d / name).read_bytes())
    data = meta["data"]
    pc_ram = d / "pc.ram"
    return Output(
        sums=digests(d, pool),
        json=docs,
        allocated=allocated(d),
        data_sha256=data_digest(pc_ram, data["addr"], data["size"]) if pc_ram.is_file() else None,
    )


def bench(s: Scenario, meta: dict[str, Any], script: Path, rounds: int) -> Result:
    mig = stream_path(s)
    res = Result(s, mig.stat().st_size)
    out = RAMDIR / "out"
    shutil.rmtree(out, ignore_errors=True)
    free = shutil.disk_usage(RAMDIR).free
    need = 3 * (s.data + 64 * MiB)
    if free < need:
        raise RuntimeError(f"{RAMDIR}: {free / GiB:.1f} GiB free, the outputs need {need / GiB}")
    dirs = {m: out / m for m in ("ref", "extract", "extract-pipe")}
    peak: dict[str, tuple[int, int, int]] = {}
    outputs: dict[str, Output] = {}
    # Each command deletes its own previous output just before it runs again,
    # as when a command is re-run into the same directory: every command
    # starts right after the memory its last run filled was freed.  (Deleting
    # all outputs at the end of a round gave the reference, which runs first,
    # a start no other command had; on this VM where freed memory lands
    # changes the kernel's cost of writing the next gigabyte by a second.)
    with ThreadPoolExecutor(2) as pool:
        for rnd in range(rounds):
            for mode in MODES:
                d = dirs.get(mode)
                if d is not None:
                    shutil.rmtree(d, ignore_errors=True)
                    d.mkdir(parents=True)
                os.sync()  # no writeback of the previous run's output during this one
                if mode == "ref":
                    r = run(
                        [sys.executable, str(script), "-f", str(mig), "-x"],
                        cwd=d,
                        env=ref_env(),
                        sample=SAMPLE,
                    )
                elif mode == "extract":
                    r = run(
                        qevm_cmd("extract", str(mig), "-o", str(d)), env=qevm_env(), sample=SAMPLE
                    )
                elif mode == "extract-pipe":
                    r = run(
                        qevm_cmd("extract", "-", "-o", str(d)),
                        env=qevm_env(),
                        stdin_from=["cat", str(mig)],
                        sample=SAMPLE,
                    )
                else:
                    r = run(
                        qevm_cmd("state", "-", "--json"),
                        env=qevm_env(),
                        stdin_from=["cat", str(mig)],
                        stdout=out / "state.json",
                        sample=SAMPLE,
                    )
                print(
                    f"    round {rnd + 1} {mode}: {r.wall:.2f} s, {r.rss_mib:.1f} MiB"
                    + ("" if r.ok else f", exit {r.returncode}: {first_error(r.stderr)}"),
                    file=sys.stderr,
                    flush=True,
                )
                old = peak.get(mode, (0, 0, 0))
                peak[mode] = (
                    max(old[0], r.maxrss),
                    max(old[1], r.rss_anon),
                    max(old[2], r.rss_file),
                )
                if r.ok:
                    res.walls.setdefault(mode, []).append(r.wall)
                best = res.runs.get(mode)
                if best is None or (best.ok and (not r.ok or r.wall < best.wall)):
                    res.runs[mode] = r
                if rnd == 0 and d is not None and r.ok:
                    outputs[mode] = summarize(d, meta, pool)
            if rnd == 0:
                verify(res, meta, outputs, out)
        shutil.rmtree(out, ignore_errors=True)
    for mode, r in res.runs.items():
        r.maxrss, r.rss_anon, r.rss_file = peak[mode]
    return res


def verify(res: Result, meta: dict[str, Any], outputs: dict[str, Output], out: Path) -> None:
    """Same block files, same bytes; the loaded data where it was loaded."""
    ok = {m: res.runs[m].ok for m in MODES}
    sums = {m: o.sums for m, o in outputs.items()}
    if ok["ref"] and ok["extract"]:
        same = sums["ref"] == sums["extract"]
        detail = f"{len(sums['ref'])} files"
        if not same:
            detail = "differ: " + ", ".join(
                sorted(
                    n
                    for n in set(sums["ref"]) | set(sums["extract"])
                    if sums["ref"].get(n) != sums["extract"].get(n)
                )
            )
        res.check("block files: qevm extract == analyze-migration.py -x (sha256)", same, detail)
        for name in ("state.json", "desc.json"):
            a, b = outputs["ref"].json.get(name), outputs["extract"].json.get(name)
            if a is not None and b is not None:
                res.check(f"{name}: qevm == reference (parsed JSON)", a == b)
    if ok["extract"] and ok["extract-pipe"]:
        res.check(
            "block files: piped extract == file extract (sha256)",
            sums["extract"] == sums["extract-pipe"],
        )
    if ok["extract"]:
        d = meta["data"]
        ext = outputs["extract"]
        res.check(
            f"pc.ram[{d['addr']:#x}:+{d['size'] // MiB} MiB] == the loaded random bytes",
            ext.data_sha256 == d["sha256"],
        )
        # sparse: zero pages are holes, so little more than the loaded data is allocated
        limit = d["size"] + 64 * MiB
        res.check(
            "qevm extract output is sparse",
            ext.allocated <= limit,
            f"{ext.allocated / MiB:.0f} MiB allocated, at most {limit / MiB:.0f} expected",
        )
    if ok["state-pipe"]:
        try:
            state = json.loads((out / "state.json").read_bytes())
            res.check("piped state --json parses", isinstance(state, dict))
        except ValueError as e:
            res.check("piped state --json parses", False, str(e))
    for m in MODES:
        if not ok[m]:
            res.check(f"{m} ran", False, first_error(res.runs[m].stderr))


def report(results: list[Result], rounds: int) -> bool:
    print(machine_line())
    print(f"QEMU: {qemu_version()}")
    print(f"best of {rounds} round(s), wall seconds; peak RSS in MiB (max over the rounds)\n")
    rows = []
    for res in results:
        ref = res.runs["ref"]
        for mode in MODES:
            r = res.runs[mode]
            ratio = ref.wall / r.wall if ref.ok and r.ok and mode != "ref" else None
            rows.append(
                [
                    res.s.name,
                    f"{res.stream_size / MiB:.0f}",
                    {
                        "ref": "analyze-migration.py -x",
                        "extract": "qevm extract F",
                        "extract-pipe": "cat F | qevm extract -",
                        "state-pipe": "cat F | qevm state - --json",
                    }[mode],
                    f"{r.wall:.2f}" if r.ok else "fails",
                    f"{r.user + r.sys:.2f}",
                    f"{r.rss_mib:.1f}",
                    f"{r.rss_anon / MiB:.1f}",
                    f"{r.rss_file / MiB:.1f}",
                    f"{ratio:.1f}x" if ratio else "",
                ]
            )
    print(
        table(
            ["stream", "MiB", "command", "wall s", "cpu s", "RSS MiB", "anon", "file", "vs ref"],
            rows,
        )
    )
    print(
        "RSS = peak ru_maxrss (what the targets are checked on); anon/file = sampled peaks "
        "of RssAnon/RssFile (file: mapped files, e.g. an mmapped input stream)"
    )
    print()
    ok = True
    for res in results:
        for what, good, detail in res.checks:
            ok = ok and good
            print(f"{verdict(good)}  {res.s.name}: {what}" + (f" ({detail})" if detail else ""))
    print()
    for res in results:
        ref, ext = res.runs["ref"], res.runs["extract"]
        ratio = ref.wall / ext.wall if ref.ok and ext.ok else 0.0
        cpu = (ref.user + ref.sys) / max(ext.user + ext.sys, 1e-9)
        good = ratio >= res.s.target
        ok = ok and good
        walls = res.walls
        median = (
            statistics.median(walls["ref"]) / statistics.median(walls["extract"])
            if walls.get("ref") and walls.get("extract")
            else 0.0
        )
        print(
            f"{verdict(good)}  {res.s.name}: qevm extract {ratio:.1f}x faster than "
            f"analyze-migration.py -x (target >= {res.s.target:.0f}x; CPU-time ratio {cpu:.1f}x; "
            f"ratio of the medians {median:.1f}x)"
        )
        for mode in ("extract", "extract-pipe", "state-pipe"):
            r = res.runs[mode]
            good = r.ok and r.rss_mib < RSS_LIMIT_MIB
            ok = ok and good
            print(
                f"{verdict(good)}  {res.s.name}: {mode} peak RSS {r.rss_mib:.1f} MiB "
                f"(target < {RSS_LIMIT_MIB:.0f} MiB; anon {r.rss_anon / MiB:.0f}, "
                f"file-backed {r.rss_file / MiB:.0f})"
            )
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--rounds", type=int, default=5, help="rounds (best of)")
    ap.add_argument("scenarios", nargs="*", help=f"of {', '.join(SCENARIOS)} (default: all)")
    ap.add_argument("--regenerate", action="store_true", help="make the streams anew")
    args = ap.parse_args()

    if shutil.which(QEMU) is None:
        print(f"{QEMU} not found (apt-get install qemu-system-x86)", file=sys.stderr)
        return 2
    warn_if_busy()
    compile_qevm()
    names = args.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    script = reference_script()
    results = []
    for name in names:
        s = SCENARIOS[name]
        if args.regenerate:
            stream_path(s).unlink(missing_ok=True)
            meta_path(s).unlink(missing_ok=True)
        meta = generate(s)
        print(
            f"... {name}: {stream_path(s).stat().st_size / MiB:.0f} MiB stream",
            file=sys.stderr,
            flush=True,
        )
        results.append(bench(s, meta, script, args.rounds))
    ok = report(results, args.rounds)
    print(f"\nafter the run: {load_line()}")
    print(f"\n{verdict(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
