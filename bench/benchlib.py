"""Helpers shared by the benchmark scripts: paths, measured child processes, tables.

Every measured command runs in a fresh child process; its wall time is taken around
``Popen`` .. ``os.wait4`` and its peak RSS is that child's own ``ru_maxrss`` as returned
by ``wait4`` (so one run never inherits another's peak, unlike ``RUSAGE_CHILDREN``).
"""

from __future__ import annotations

import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SRC = REPO / "src"
WORK = BENCH / "work"

MiB = 1024 * 1024


def corpus_dir() -> Path:
    """``$QEVM_CORPUS``, else ``../shared/corpus`` beside the checkout."""
    env = os.environ.get("QEVM_CORPUS")
    return Path(env) if env else REPO.parent / "shared" / "corpus"


def qevm_env() -> dict[str, str]:
    """The environment for qevm children: this checkout's ``src`` first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC)
    return env


def ref_env() -> dict[str, str]:
    """The environment for the reference script: no qevm on the path, nothing odd."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def qevm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "qevm", *args]


@dataclass
class Run:
    """One measured child process."""

    argv: list[str]
    wall: float  # seconds
    user: float  # CPU seconds
    sys: float
    maxrss: int  # bytes
    returncode: int
    stderr: str = ""

    @property
    def rss_mib(self) -> float:
        return self.maxrss / MiB

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _wait(proc: subprocess.Popen[bytes]) -> tuple[int, os.struct_rusage]:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage


def _stderr_text(f: IO[bytes]) -> str:
    f.seek(0)
    return f.read().decode("utf-8", "replace")[-4000:]


def run(
    argv: Sequence[str],
    *,
    stdout: Path | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin_from: Sequence[str] | None = None,
) -> Run:
    """Run ``argv`` (optionally fed by the pipeline ``stdin_from | argv``), measured.

    ``stdout`` is a file to write the output to (``None``: discarded).  With
    ``stdin_from`` the wall time spans the whole pipeline and the RSS is ``argv``'s own.
    """
    argv = list(argv)
    out = open(stdout, "wb") if stdout is not None else subprocess.DEVNULL  # noqa: SIM115
    err = tempfile.TemporaryFile()  # noqa: SIM115
    feeder: subprocess.Popen[bytes] | None = None
    try:
        t0 = time.perf_counter()
        if stdin_from is not None:
            feeder = subprocess.Popen(list(stdin_from), stdout=subprocess.PIPE, cwd=cwd)
            proc = subprocess.Popen(
                argv, stdin=feeder.stdout, stdout=out, stderr=err, cwd=cwd, env=env
            )
            assert feeder.stdout is not None
            feeder.stdout.close()  # the consumer holds the only read end now
        else:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd, env=env
            )
        rc, usage = _wait(proc)
        if feeder is not None:
            frc, _ = _wait(feeder)
            if rc == 0 and frc != 0:
                rc = frc
        wall = time.perf_counter() - t0
        return Run(
            argv=argv,
            wall=wall,
            user=usage.ru_utime,
            sys=usage.ru_stime,
            maxrss=usage.ru_maxrss * 1024,  # Linux reports KiB
            returncode=rc,
            stderr=_stderr_text(err),
        )
    finally:
        if stdout is not None:
            out.close()  # type: ignore[union-attr]
        err.close()


def best_of(n: int, once: Callable[[], Run], before: Callable[[], None] | None = None) -> Run:
    """The fastest of ``n`` runs, with the highest peak RSS seen in any of them.

    A failing run is returned at once (there is nothing to time).
    """
    best: Run | None = None
    peak = 0
    for _ in range(n):
        if before is not None:
            before()
        r = once()
        if not r.ok:
            return r
        peak = max(peak, r.maxrss)
        if best is None or r.wall < best.wall:
            best = r
    assert best is not None
    best.maxrss = peak
    return best


def decompress_xz(src: Path, dst: Path) -> Path:
    """``xz -dc src > dst`` unless ``dst`` already exists and is newer."""
    if dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime:
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    with lzma.open(src) as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    tmp.replace(dst)
    return dst


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table, first column left-aligned, the others right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]

    def line(cells: Sequence[str]) -> str:
        out = [cells[0].ljust(widths[0])]
        out += [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def machine_line() -> str:
    """Cores, Python and date, for the record."""
    import datetime
    import platform

    return (
        f"{datetime.date.today().isoformat()}  {platform.node()}  {os.cpu_count()} cores  "
        f"Python {platform.python_version()}  {platform.platform()}"
    )
