"""Helpers shared by the benchmark scripts: paths, measured child processes, tables.

Every measured command runs in a fresh child process, started by a small launcher that
forks and execs it and takes its wall time around ``fork`` .. ``os.wait4`` and its peak
RSS from that child's own ``ru_maxrss`` as ``wait4`` returns it (so a run never inherits
another's peak, as it would with ``RUSAGE_CHILDREN`` deltas, nor the benchmark's own RSS).
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

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


def compile_qevm() -> None:
    """Byte-compile this checkout's qevm, as pip does when it installs a package.

    Without it every run would compile qevm's modules from source again
    wherever ``PYTHONDONTWRITEBYTECODE`` is set (as on the machine these
    numbers come from): about 60 ms per run that no installed qevm pays.
    The reference is one script run as ``__main__``, which Python compiles
    in every run anyway.
    """
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(SRC / "qevm")],
        check=True,
        stdout=subprocess.DEVNULL,
    )


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
    #: Sampled peaks of the anonymous and the file-backed part of the RSS (bytes; 0 when
    #: not sampled).  Mapped input files count in ``maxrss`` as ``rss_file``.
    rss_anon: int = 0
    rss_file: int = 0

    @property
    def rss_mib(self) -> float:
        return self.maxrss / MiB

    @property
    def ok(self) -> bool:
        return self.returncode == 0


#: Runs ``argv`` as its own child and writes that child's wall time and rusage to a file.
#: Measuring through this small process matters: a child's ``ru_maxrss`` starts at the RSS
#: of the process that forked it (Linux keeps the pre-exec high-water mark), so a child
#: forked straight from a benchmark that holds big JSON documents would inherit their size.
_LAUNCHER = """\
import os, sys, threading, time
out, interval, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
peak = {"RssAnon": 0, "RssFile": 0}
done = threading.Event()

def sample(pid):
    # Which part of the RSS is anonymous memory, which is mapped files (sampled).
    while not done.wait(interval):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in peak:
                        peak[key] = max(peak[key], int(value.split()[0]))
        except (OSError, ValueError):
            pass

t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        print(f"{argv[0]}: {e}", file=sys.stderr)
    os._exit(127)
if interval > 0:
    threading.Thread(target=sample, args=(pid,), daemon=True).start()
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
done.set()
rc = os.waitstatus_to_exitcode(status)
with open(out, "w") as f:
    f.write(f"{wall!r} {ru.ru_utime!r} {ru.ru_stime!r} {ru.ru_maxrss} {rc} "
            f"{peak['RssAnon']} {peak['RssFile']}")
sys.exit(0)
"""


def run(
    argv: Sequence[str],
    *,
    stdout: Path | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin_from: Sequence[str] | None = None,
    sample: float = 0.0,
) -> Run:
    """Run ``argv`` (optionally fed by the pipeline ``stdin_from | argv``), measured.

    ``stdout`` is a file to write the output to (``None``: discarded).  The wall time
    and peak RSS are ``argv``'s own; with ``stdin_from`` the wall time covers the whole
    pipeline, since ``argv`` reads until the producer is done.  With ``sample`` (seconds)
    the child's RssAnon and RssFile are also sampled at that interval.
    """
    argv = list(argv)
    out = open(stdout, "wb") if stdout is not None else subprocess.DEVNULL  # noqa: SIM115
    err = tempfile.TemporaryFile()  # noqa: SIM115
    fd, result = tempfile.mkstemp(prefix="bench-rusage-")
    os.close(fd)
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, result, str(sample), *argv]
    feeder: subprocess.Popen[bytes] | None = None
    try:
        if stdin_from is not None:
            feeder = subprocess.Popen(list(stdin_from), stdout=subprocess.PIPE, cwd=cwd)
            assert feeder.stdout is not None
            proc = subprocess.Popen(
                launcher, stdin=feeder.stdout, stdout=out, stderr=err, cwd=cwd, env=env
            )
            feeder.stdout.close()  # the consumer holds the only read end now
        else:
            proc = subprocess.Popen(
                launcher, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd, env=env
            )
        if proc.wait() != 0:
            raise RuntimeError(f"measuring launcher failed: {_stderr_text(err)}")
        feeder_rc = feeder.wait() if feeder is not None else 0
        wall, user, sys_, maxrss, rc, anon, file = Path(result).read_text().split()
        returncode = int(rc) or feeder_rc
        return Run(
            argv=argv,
            wall=float(wall),
            user=float(user),
            sys=float(sys_),
            maxrss=int(maxrss) * 1024,  # Linux reports KiB
            returncode=returncode,
            stderr=_stderr_text(err),
            rss_anon=int(anon) * 1024,
            rss_file=int(file) * 1024,
        )
    finally:
        if stdout is not None:
            out.close()  # type: ignore[union-attr]
        err.close()
        os.unlink(result)


def _stderr_text(f: IO[bytes]) -> str:
    """The start and the end of what was written to ``f`` (errors can be huge)."""
    f.seek(0)
    text = f.read().decode("utf-8", "replace")
    return text if len(text) <= 8000 else text[:4000] + "\n[...]\n" + text[-2000:]


def first_error(stderr: str) -> str:
    """The first ``SomeError: message`` line of a Python traceback, else the last line."""
    lines = stderr.strip().splitlines()
    for line in lines:
        m = re.match(r"^[\w.]*(Error|Exception|Exit): ", line)
        if m:
            return line[:200]
    return lines[-1][:200] if lines else "?"


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
    """Date, cores, Python and load, for the record."""
    import datetime
    import platform

    return (
        f"{datetime.datetime.now().isoformat(timespec='minutes')}  {os.cpu_count()} cores  "
        f"Python {platform.python_version()}  {platform.platform()}  {load_line()}"
    )


def load_line() -> str:
    """The 1/5/15-minute load averages: other processes skew timings on 2 cores."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def warn_if_busy(limit: float = 1.0) -> None:
    """Say so when other processes keep the machine busy: wall-time ratios suffer."""
    one = os.getloadavg()[0]
    if one > limit:
        print(
            f"warning: load average {one:.2f} before the run; other processes compete for the "
            f"{os.cpu_count()} cores and skew wall times (compare the CPU-time ratios too)",
            file=sys.stderr,
        )


def warn_if_memory_full(share: float = 0.25) -> None:
    """Say so when less than ``share`` of the memory is free: what a run writes through
    the page cache then takes pages from others', and its times vary widely."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
        info = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines)}
    except (OSError, ValueError, IndexError):
        return
    free, total = info.get("MemFree", 0), info.get("MemTotal", 0)
    if total and free < share * total:
        print(
            f"warning: {free >> 10} of {total >> 10} MiB free (the page cache holds the rest); "
            "pages written through the cache are reclaimed from it as the run goes, which "
            "made the tap's times 1.6x as long here (bench/README.md)",
            file=sys.stderr,
        )


# --------------------------------------------------------------------------- QEMU

#: The QEMU that makes the benchmarks' streams (Debian's 7.2 here).
QEMU = os.environ.get("QEVM_BENCH_QEMU", "qemu-system-x86_64")
GiB = 1024 * MiB
LOAD_CHUNK = 256 * MiB  # one -device loader per chunk


def qemu_version() -> str:
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0]


def write_random(path: Path, size: int, h: Any = None) -> None:
    """``size`` random bytes into ``path``, also fed to the hash ``h`` if given."""
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 16 * MiB))
            if h is not None:
                h.update(block)
            f.write(block)
            left -= len(block)


def save_random_guest(
    stream: Path, *, mem: str, data: int, addr: int, parameters: dict[str, Any]
) -> dict[str, Any]:
    """A paused TCG ``-M pc`` guest of ``mem`` with ``data`` random bytes loaded at
    guest-physical ``addr`` (``-device loader``, 256 MiB files), saved with ``migrate
    "exec:cat > stream"`` after ``migrate-set-parameters`` ``parameters``; its metadata."""
    import hashlib

    sys.path.insert(0, str(REPO / "tests"))
    from qemuvm import Vm  # the tests' QMP driver

    work = stream.parent
    h = hashlib.sha256()
    loads: list[tuple[Path, int]] = []
    argv = ["-M", "pc", "-accel", "tcg", "-m", mem, "-smp", "1", "-S", "-nodefaults"]
    argv += ["-display", "none"]
    tmp = stream.with_suffix(".part")
    try:
        for i, off in enumerate(range(0, data, LOAD_CHUNK)):
            chunk = work / f"{stream.stem}.load{i}.bin"
            write_random(chunk, min(LOAD_CHUNK, data - off), h)
            loads.append((chunk, addr + off))
            argv += ["-device", f"loader,file={chunk},addr={addr + off:#x}"]
        with Vm(QEMU, argv, work, stream.stem) as vm:
            vm.cmd("migrate-set-parameters", **parameters)
            vm.cmd("migrate", uri=f"exec:cat > {tmp}")
            info = vm.wait_migration(timeout=1800)
    finally:
        for chunk, _ in loads:
            chunk.unlink(missing_ok=True)
    tmp.replace(stream)
    return {
        "qemu": qemu_version(),
        "argv": argv,
        "parameters": parameters,
        "data": {"addr": addr, "size": data, "sha256": h.hexdigest()},
        "query-migrate": info,
        "stream_size": stream.stat().st_size,
    }
