"""Structure-aware mutation fuzzing of qevm's commands on hostile streams.

    python bench/fuzz.py --cases 5000 --seed 1 --jobs 2        # a campaign
    python bench/fuzz.py --cases 100000 --seed 1 --resume      # go on after an interruption
    python bench/fuzz.py --seed 1 --first 523 --cases 524      # case 523 again

Seeds are small real streams derived from ``tests/data`` (:mod:`fuzz_seeds`);
case ``i`` of seed ``S`` picks a seed, a mutation kind and its parameters from
``random.Random(f"{S}:{i}")`` alone, so a case is the same whatever ``--jobs``
and however the run was split.  Each case runs ``info``, ``state --json``,
``ram``, ``extract`` and ``memory`` on the mutated input, in a child forked
from this process (qevm's ``main()`` in-process: no interpreter start per
case) with an address-space limit (``RLIMIT_AS``), a file-size limit, a limit
on CPU time (a loop) and a much longer one on wall-clock time (a wait that
never ends; a child at low priority on a busy machine may wait long for the
CPU without being stuck).  Outcomes per command: ok (exit 0), or a clean error (exit 1 or 2,
every error a ``qevm: error:`` line, at most one more line besides warnings).
Anything else is a finding: another exit status (3: an exception qevm did not
expect), a traceback or a messy message, a signal, either time limit, or a file
written outside the output directory.  A finding's inputs, stderr and recipe
go to ``OUT/findings/CASE-KIND/``.

Progress goes to stderr every ``--report`` cases; ``OUT/state.json`` holds the
counts and the first case not yet done, which ``--resume`` starts from.  At
the end: cases, time and outcomes per mutation kind (the figures of
bench/README.md).  Exit status 1 when there were findings.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_mutations import KINDS, applicable  # noqa: E402
from fuzz_seeds import Seed, make_seeds  # noqa: E402

import qevm.cli  # noqa: E402

COMMANDS = ("info", "state", "ram", "extract", "memory")
#: files a case may write, relative to its working directory
ALLOWED = {"in.bin", "desc.bin", "core.elf", "result.json"}


# -- one case ----------------------------------------------------------------------------


def pick(seeds: list[Seed], master: int, case: int) -> tuple[Seed, str, list[bytes], str]:
    """The seed, mutation kind, mutated files and an account of case ``case``."""
    rng = random.Random(f"{master}:{case}")
    seed = rng.choice(seeds)
    files = seed.files()
    which = 0 if len(files) == 1 or rng.random() < 0.75 else rng.randrange(1, len(files))
    lay = seed.layouts[min(which, len(seed.layouts) - 1)]
    kind = rng.choice([k for k in sorted(KINDS) if applicable(k, lay)])
    data, what = KINDS[kind](files[which], lay, rng)
    files = [*files]
    files[which] = data
    return seed, kind, files, f"file {which}: {what}"


def argv_for(seed: Seed, work: Path, nchan: int) -> dict[str, list[str]]:
    inp = str(work / "in.bin")
    opts = [*seed.options]
    if seed.desc is not None:
        opts += ["--desc", str(work / "desc.bin")]
    chans = [a for i in range(nchan) for a in ("--channel", str(work / f"ch{i}.bin"))]
    return {
        "info": ["info", inp, *opts],
        "state": ["state", inp, "--json", *opts],
        "ram": ["ram", inp, *opts, *chans],
        "extract": ["extract", inp, "-o", str(work / "out"), *opts, *chans],
        "memory": ["memory", inp, "-o", str(work / "core.elf"), *opts, *chans],
    }


def judge(rc: int, err: str) -> str | None:
    """None for an acceptable outcome of one command, else what is wrong."""
    if "Traceback" in err or "internal error" in err:
        return "exception"
    if rc == 0:
        return None
    if rc not in (1, 2):
        return f"exit {rc}"
    # every error is one 'qevm: error:' line (reading on after errors prints each),
    # a message may take one more line
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    errors = sum(ln.startswith("qevm: error:") for ln in lines)
    if rc == 2 and (not errors or len(lines) > errors + 1):
        return "messy message"
    return None


def run_child(argvs: dict[str, list[str]], work: Path, cpu: int, wall: int, mem: int) -> None:
    """In the forked child: run every command, write result.json, exit."""
    try:
        # SIGPROF (CPU time, a loop) and SIGALRM (wall-clock time, a wait) end the child
        signal.setitimer(signal.ITIMER_PROF, cpu)
        signal.alarm(wall)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 30, 1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + mem, resource.RLIM_INFINITY))
        os.chdir(work)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        # the fuzzer's own sys.stdout/sys.stderr may not be fds 1 and 2 (pytest's capture)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        out = {}
        for name in COMMANDS:
            errfile = work / f"err.{name}"
            fd = os.open(errfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            sys.stderr.flush()
            os.dup2(fd, 2)
            os.close(fd)
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            try:
                rc = qevm.cli.main(argvs[name])
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 2
            except BaseException as e:  # noqa: BLE001 - everything is a finding here
                print(f"Traceback: escaped main(): {type(e).__name__}: {e}", file=sys.stderr)
                rc = 99
            sys.stdout.flush()
            sys.stderr.flush()
            out[name] = rc
        (work / "result.json").write_text(json.dumps(out))
    finally:
        os._exit(0)


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _unexpected_files(case_root: Path, work: Path) -> list[str]:
    found = []
    for dirpath, _dirs, names in os.walk(case_root):
        d = Path(dirpath)
        for n in names:
            p = d / n
            if d == work and (n in ALLOWED or n.startswith(("err.", "ch"))):
                continue
            if (work / "out") in p.parents:
                continue
            found.append(str(p.relative_to(case_root)))
    return found


# -- the campaign ------------------------------------------------------------------------


class Campaign:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.sandbox = self.out / "sandbox"
        self.findings = self.out / "findings"
        self.state_path = self.out / "state.json"
        self.counts: dict[str, dict[str, int]] = {k: {} for k in sorted(KINDS)}
        self.done: set[int] = set()
        self.next_case = 0
        self.elapsed = 0.0

    def load(self) -> None:
        st = json.loads(self.state_path.read_text())
        if st["seed"] != self.args.seed:
            sys.exit(f"{self.state_path} is of seed {st['seed']}, not {self.args.seed}")
        self.counts, self.next_case, self.elapsed = st["counts"], st["next_case"], st["elapsed"]

    def save(self, started: float) -> None:
        while self.next_case in self.done:
            self.done.discard(self.next_case)
            self.next_case += 1
        st = {
            "seed": self.args.seed,
            "next_case": self.next_case,
            "counts": self.counts,
            "elapsed": self.elapsed + time.monotonic() - started,
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(st, indent=1))
        tmp.replace(self.state_path)

    def record(self, case: int, kind: str, outcome: str) -> None:
        c = self.counts[kind]
        c[outcome] = c.get(outcome, 0) + 1
        self.done.add(case)

    def n_findings(self) -> int:
        return sum(
            n for c in self.counts.values() for k, n in c.items() if k not in ("ok", "error")
        )

    def warm_up(self, seed: Seed) -> None:
        """Run every command once here, so that the forked children find everything
        qevm imports lazily (numpy, the views, the renderers) already imported."""
        import contextlib
        import io

        work = self.out / "warmup"
        work.mkdir(parents=True, exist_ok=True)
        (work / "in.bin").write_bytes(seed.main)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            for argv in argv_for(seed, work, 0).values():
                qevm.cli.main(argv)
        shutil.rmtree(work)

    def run(self, seeds: list[Seed]) -> int:
        args = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        self.sandbox.mkdir(exist_ok=True)
        self.warm_up(seeds[0])
        if args.resume and self.state_path.exists():
            self.load()
        else:
            self.next_case = args.first
        first = self.next_case
        end = args.cases
        running: dict[int, tuple[int, str, Path, Seed, list[bytes], str, float]] = {}
        started = time.monotonic()
        last_report = first
        case = first
        while case < end or running:
            while case < end and len(running) < args.jobs:
                running.update(self.start(seeds, case))
                case += 1
            pid, status = os.wait()
            if pid not in running:
                continue
            self.finish(running.pop(pid), status)
            n = len(self.done) + self.next_case - first
            if n - (last_report - first) >= args.report or (case >= end and not running):
                last_report = first + n
                self.save(started)
                rate = n / max(1e-9, time.monotonic() - started)
                print(
                    f"{self.next_case}/{end} cases, {rate:.1f}/s, {self.n_findings()} findings",
                    file=sys.stderr,
                )
        self.save(started)
        self.report(first)
        return 1 if self.n_findings() else 0

    def start(self, seeds: list[Seed], case: int) -> dict:
        seed, kind, files, what = pick(seeds, self.args.seed, case)
        case_root = self.sandbox / str(case)
        shutil.rmtree(case_root, ignore_errors=True)
        work = case_root / "a" / "b" / "c" / "d" / "w"  # "../" up to five levels stays inside
        work.mkdir(parents=True)
        (work / "in.bin").write_bytes(files[0])
        for i, data in enumerate(files[1:]):
            (work / f"ch{i}.bin").write_bytes(data)
        if seed.desc is not None:
            (work / "desc.bin").write_bytes(seed.desc)
        argvs = argv_for(seed, work, len(files) - 1)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            args = self.args
            run_child(argvs, work, args.timeout, args.wall_timeout, args.mem << 20)
        return {pid: (case, kind, work, seed, files, what, time.monotonic())}

    def finish(self, item: tuple, status: int) -> None:
        case, kind, work, seed, files, what, t0 = item
        case_root = work.parents[4]
        problems: list[tuple[str, str]] = []  # (outcome, what)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            limits = {signal.SIGPROF: "cpu limit", signal.SIGALRM: "wall limit"}
            outcome = limits.get(sig, "signal")
            problems.append((outcome, f"killed by signal {sig}"))
        result = {}
        if (work / "result.json").exists():
            result = json.loads((work / "result.json").read_text())
        elif not problems:
            problems.append(("no result", "the child wrote no result"))
        errors = False
        for name, rc in result.items():
            err = (work / f"err.{name}").read_text(errors="replace")
            bad = judge(rc, err)
            if bad:
                problems.append((bad.split()[0], f"{name}: {bad}"))
            errors |= rc != 0
        escaped = _unexpected_files(case_root, work)
        escaped += [p.name for p in self.sandbox.iterdir() if not p.name.isdigit()]
        if escaped:
            problems.append(("escape", f"files outside the output directory: {escaped[:5]}"))
        outcome = "ok" if not errors else "error"
        if problems:
            outcome = problems[0][0]
            self.save_finding(case, kind, seed, files, what, [p for _, p in problems], work)
        self.record(case, kind, outcome)
        shutil.rmtree(case_root, ignore_errors=True)

    def save_finding(self, case, kind, seed, files, what, problems, work) -> None:
        d = self.findings / f"{case}-{kind}"
        d.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(files):
            (d / ("in.bin" if i == 0 else f"ch{i - 1}.bin")).write_bytes(data)
        for p in work.glob("err.*"):
            shutil.copy(p, d / p.name)
        recipe = {
            "seed": self.args.seed,
            "case": case,
            "input": seed.name,
            "kind": kind,
            "mutation": what,
            "options": seed.options,
            "problems": problems,
        }
        (d / "recipe.json").write_text(json.dumps(recipe, indent=1) + "\n")
        print(f"finding: case {case} ({seed.name}, {kind}: {what}): {problems}", file=sys.stderr)

    def report(self, first: int) -> None:
        outcomes = sorted({o for c in self.counts.values() for o in c} - {"ok", "error"})
        cols = ["ok", "error", *outcomes]
        print(f"{'kind':12}" + "".join(f"{c:>10}" for c in cols) + f"{'total':>10}")
        for kind, c in self.counts.items():
            print(
                f"{kind:12}"
                + "".join(f"{c.get(k, 0):>10}" for k in cols)
                + f"{sum(c.values()):>10}"
            )
        total = {k: sum(c.get(k, 0) for c in self.counts.values()) for k in cols}
        n = sum(total.values())
        print(f"{'all':12}" + "".join(f"{total[k]:>10}" for k in cols) + f"{n:>10}")
        st = json.loads(self.state_path.read_text())
        print(f"{n} cases (seed {self.args.seed}) in {st['elapsed']:.0f} s, "
              f"{self.n_findings()} findings")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=1000, help="run cases up to N-1")
    p.add_argument(
        "--first", type=int, default=0, help="the first case (e.g. to run a finding's case again)"
    )
    p.add_argument("--seed", type=int, default=1, help="master seed")
    p.add_argument("--jobs", type=int, default=2, help="cases run at once")
    p.add_argument("--out", default=str(Path(__file__).parent / "work" / "fuzz"))
    p.add_argument("--resume", action="store_true", help="go on from OUT/state.json")
    p.add_argument("--timeout", type=int, default=30, help="CPU seconds per case")
    p.add_argument("--wall-timeout", type=int, default=600, help="wall-clock seconds per case")
    p.add_argument("--mem", type=int, default=1024, help="MiB of address space per case")
    p.add_argument("--report", type=int, default=200, help="progress every N cases")
    args = p.parse_args(argv)
    if not args.resume:
        shutil.rmtree(args.out, ignore_errors=True)
    seeds = make_seeds(Path(args.out) / "seedwork")
    return Campaign(args).run(seeds)


if __name__ == "__main__":
    sys.exit(main())
