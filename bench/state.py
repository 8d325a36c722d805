"""Device-state decoding, side by side: ``qevm state`` vs ``analyze-migration.py -d state``.

For every corpus stream (``$QEVM_CORPUS`` or ``../shared/corpus``: the top-level
``*.mig.xz`` and ``linux/*.mig.xz``, decompressed into ``bench/work/streams``) this runs,
in fresh child processes, interleaved, ``-n`` rounds each:

- ``python analyze-migration.py -f F -d state``  (the reference, see reference.py)
- ``python -m qevm state --compat F``            (must print the same JSON)
- ``python -m qevm state --json F``              (qevm's own JSON)

and reports the best wall time and the highest peak RSS of each, the ratios, whether
``--compat`` parsed as JSON equals the reference's output (and is byte-identical), and
whether the reference's output equals the corpus' recorded upstream output.  Target
(core decoder issue): on ppc64-pseries-11.1 qevm is at least 10x faster than the
reference with a peak RSS under 100 MiB.  Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import lzma
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (
    WORK,
    Run,
    compile_qevm,
    corpus_dir,
    decompress_xz,
    first_error,
    load_line,
    machine_line,
    qevm_cmd,
    qevm_env,
    ref_env,
    run,
    table,
    verdict,
    warn_if_busy,
)
from reference import reference_script

TARGET_STREAM = "ppc64-pseries-11.1"
TARGET_RATIO = 10.0
TARGET_RSS_MIB = 100.0

MODES = ("ref", "compat", "json")


@dataclass
class Case:
    name: str
    path: Path
    runs: dict[str, Run] = field(default_factory=dict)
    same_json: bool | None = None  # --compat parsed == reference parsed
    same_bytes: bool | None = None
    ref_matches_expected: bool | None = None

    def out(self, mode: str) -> Path:
        return WORK / "out" / f"{self.name}.{mode}.json"


def find_streams(corpus: Path, patterns: list[str]) -> list[tuple[str, Path]]:
    found = sorted(corpus.glob("*.mig.xz")) + sorted(corpus.glob("linux/*.mig.xz"))
    out = []
    for p in found:
        name = p.name.removesuffix(".mig.xz")
        if patterns and not any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            continue
        out.append((name, p))
    return out


def command(mode: str, script: Path, stream: Path) -> tuple[list[str], dict[str, str]]:
    if mode == "ref":
        return [sys.executable, str(script), "-f", str(stream), "-d", "state"], ref_env()
    return qevm_cmd("state", f"--{mode}", str(stream)), qevm_env()


def measure(case: Case, script: Path, rounds: int) -> None:
    """``rounds`` interleaved rounds of the three commands; keep the best time, max RSS."""
    peak: dict[str, int] = {}
    for _ in range(rounds):
        for mode in MODES:
            if mode in case.runs and not case.runs[mode].ok:
                continue  # it failed: nothing to time
            argv, env = command(mode, script, case.path)
            r = run(argv, stdout=case.out(mode), env=env, cwd=WORK)
            peak[mode] = max(peak.get(mode, 0), r.maxrss)
            best = case.runs.get(mode)
            if not r.ok or best is None or r.wall < best.wall:
                case.runs[mode] = r
    for mode, r in case.runs.items():
        r.maxrss = max(r.maxrss, peak[mode])


def compare(case: Case, corpus: Path) -> None:
    ref, compat = case.runs["ref"], case.runs["compat"]
    if not (ref.ok and compat.ok):
        return
    ref_text = case.out("ref").read_bytes()
    compat_text = case.out("compat").read_bytes()
    case.same_bytes = ref_text == compat_text
    case.same_json = json.loads(ref_text) == json.loads(compat_text)
    expected = corpus / "expected" / f"{case.name}.upstream-state.json.xz"
    if expected.is_file():
        with lzma.open(expected) as f:
            case.ref_matches_expected = json.load(f) == json.loads(ref_text)


def _time(r: Run | None) -> str:
    if r is None:
        return "-"
    return f"{r.wall:.3f}" if r.ok else "fails"


def _rss(r: Run | None) -> str:
    return f"{r.rss_mib:.1f}" if r is not None and r.ok else "-"


def _ratio(ref: Run, r: Run) -> float | None:
    return ref.wall / r.wall if ref.ok and r.ok else None


def _yesno(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "NO")


def report(cases: list[Case], rounds: int) -> bool:
    rows = []
    for c in cases:
        ref, compat, js = c.runs["ref"], c.runs["compat"], c.runs["json"]
        rc, rj = _ratio(ref, compat), _ratio(ref, js)
        rows.append(
            [
                c.name,
                f"{c.path.stat().st_size / 2**20:.1f}",
                _time(ref),
                _rss(ref),
                _time(compat),
                _rss(compat),
                f"{rc:.1f}x" if rc else "-",
                _time(js),
                _rss(js),
                f"{rj:.1f}x" if rj else "-",
                _yesno(c.same_json) + ("" if c.same_bytes in (None, True) else " (text differs)"),
                _yesno(c.ref_matches_expected),
            ]
        )
    print(machine_line())
    print(f"best of {rounds} runs, wall seconds; peak RSS in MiB (max over the runs)\n")
    print(
        table(
            [
                "stream",
                "MiB",
                "ref s",
                "ref RSS",
                "compat s",
                "RSS",
                "ratio",
                "json s",
                "RSS",
                "ratio",
                "compat==ref",
                "ref==corpus",
            ],
            rows,
        )
    )
    print()
    ok = True
    for c in cases:
        for mode in ("compat", "json"):
            r = c.runs[mode]
            if not r.ok:
                ok = False
                print(f"FAIL  {c.name}: qevm state --{mode} exited {r.returncode}")
                print(f"      {first_error(r.stderr)}")
        if c.same_json is False:
            ok = False
            print(f"FAIL  {c.name}: qevm state --compat differs from the reference's output")
        if c.ref_matches_expected is False:
            ok = False
            print(f"FAIL  {c.name}: the reference's output differs from the corpus' expected one")
    for c in cases:
        if c.runs["ref"].ok:
            continue
        print(f"note  {c.name}: the reference fails: {first_error(c.runs['ref'].stderr)}")
    target = next((c for c in cases if c.name == TARGET_STREAM), None)
    if target is None:
        print(f"\nTARGET {TARGET_STREAM}: not measured (not selected or not in the corpus)")
        return ok
    print()
    ref = target.runs["ref"]
    for mode in ("compat", "json"):
        r = target.runs[mode]
        ratio = _ratio(ref, r)
        cpu = (ref.user + ref.sys) / max(r.user + r.sys, 1e-9)
        good = ratio is not None and ratio >= TARGET_RATIO and r.rss_mib < TARGET_RSS_MIB
        ok = ok and good
        print(
            f"{verdict(good)}  {TARGET_STREAM} qevm state --{mode}: "
            + (f"{ratio:.1f}x faster" if ratio else "no ratio")
            + f" (target >= {TARGET_RATIO:.0f}x; CPU-time ratio {cpu:.1f}x),"
            f" peak RSS {r.rss_mib:.1f} MiB"
            f" (target < {TARGET_RSS_MIB:.0f} MiB); reference {ref.wall:.2f} s,"
            f" {ref.rss_mib:.0f} MiB"
        )
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--rounds", type=int, default=5, help="runs of each command (best of)")
    ap.add_argument("streams", nargs="*", help="only streams whose name matches these globs")
    args = ap.parse_args()

    corpus = corpus_dir()
    if not corpus.is_dir():
        print(f"no corpus at {corpus} (set QEVM_CORPUS)", file=sys.stderr)
        return 2
    warn_if_busy()
    compile_qevm()
    script = reference_script()
    (WORK / "out").mkdir(parents=True, exist_ok=True)
    cases = []
    for name, xz in find_streams(corpus, args.streams):
        path = decompress_xz(xz, WORK / "streams" / f"{name}.mig")
        case = Case(name, path)
        print(f"... {name}", file=sys.stderr, flush=True)
        measure(case, script, args.rounds)
        compare(case, corpus)
        cases.append(case)
    if not cases:
        print("no stream selected", file=sys.stderr)
        return 2
    ok = report(cases, args.rounds)
    print(f"\nafter the run: {load_line()}")
    print(f"\n{verdict(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
