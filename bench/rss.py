"""Peak memory of every command on a stream whose RAM is one huge record.

A VM saved with unlimited bandwidth and downtime (as ``virsh save`` does) is
written by QEMU as a START record, a PART or two, and then nearly all of RAM
in one END record: the migration completes right after its first iteration.
Every qevm command must let go of what it has read, whatever the record
sizes: the target (issue 10) is a peak RSS of at most 150 MiB for each.

The stream is made with the installed QEMU (``qemu-system-x86_64``, Debian's
7.2 here; ``$QEVM_BENCH_QEMU`` overrides it) and cached in ``bench/work/rss``:
``-M pc -m 2G -S -nodefaults``, 1 GiB of random bytes loaded at guest-physical
0x10000000 (four 256 MiB ``-device loader`` files), QMP
``migrate-set-parameters max-bandwidth=64 GiB downtime-limit=2000000`` (ms,
QEMU's largest), ``migrate "exec:cat > F"``.  A zstd-compressed copy is made
from it (``zstd -1``).

Each command runs in a fresh child process (``benchlib.run``: peak RSS from
``wait4``), from the file, through a pipe (``cat F |``) and from the
compressed file, once each (``-n`` for more).  Output goes to files in
``bench/work/rss/out`` (deleted after each run).

    python bench/rss.py [-n N] [COMMAND ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import (
    WORK,
    MiB,
    Run,
    compile_qevm,
    first_error,
    machine_line,
    qevm_cmd,
    qevm_env,
    run,
    table,
    verdict,
    warn_if_busy,
)
from ram import Qmp, _write_random

GiB = 1024 * MiB
DIR = WORK / "rss"
QEMU = os.environ.get("QEVM_BENCH_QEMU", "qemu-system-x86_64")
RSS_LIMIT_MIB = 150.0
DATA = 1 * GiB
ADDR = 0x10000000
LOAD_CHUNK = 256 * MiB
#: QEMU's largest downtime limit (MAX_MIGRATE_DOWNTIME, ms).
DOWNTIME_MAX = 2_000_000
SAMPLE = 0.01

STREAM = DIR / "bulk-2g.mig"
META = DIR / "bulk-2g.json"
ZSTD = DIR / "bulk-2g.mig.zst"

#: name -> qevm arguments ({F}: the input, {O}: an output path); "seekable": needs a file.
COMMANDS: dict[str, tuple[list[str], bool]] = {
    "info": (["info", "{F}"], False),
    "state": (["state", "{F}"], False),
    "state --json": (["state", "--json", "{F}"], False),
    "state --compat": (["state", "--compat", "{F}"], False),
    "cpu": (["cpu", "{F}"], False),
    "desc": (["desc", "{F}"], False),
    "ram": (["ram", "{F}"], True),
    "ram --offset": (["ram", "{F}", "--offset", "256M", "--length", "4K"], True),
    "memmap": (["memmap", "{F}"], False),
    "extract": (["extract", "{F}", "-o", "{O}"], False),
    "memory": (["memory", "{F}", "-o", "{O}.elf"], False),
    "edit": (["edit", "{F}", "-o", "{O}.elf", "-q"], False),
    "convert": (["convert", "{F}", "-o", "{O}.elf", "--to", "stream", "-q"], False),
}


def qemu_version() -> str:
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0]


def generate() -> dict[str, Any]:
    """Make (or reuse) the stream; returns its metadata."""
    if STREAM.is_file() and META.is_file():
        meta = json.loads(META.read_text())
    else:
        meta = _save()
    if not ZSTD.is_file():
        subprocess.run(["zstd", "-q", "-1", "-T0", "-f", str(STREAM), "-o", str(ZSTD)], check=True)
    return meta


def _save() -> dict[str, Any]:
    DIR.mkdir(parents=True, exist_ok=True)
    need = 3 * DATA
    if shutil.disk_usage(DIR).free < need:
        raise RuntimeError(f"{DIR}: generating needs {need / GiB:.0f} GiB free")
    print(f"... generating {STREAM.name} with {qemu_version()}", file=sys.stderr, flush=True)
    h = hashlib.sha256()
    loads = []
    for i, off in enumerate(range(0, DATA, LOAD_CHUNK)):
        chunk = DIR / f"load{i}.bin"
        _write_random(chunk, min(LOAD_CHUNK, DATA - off), h)
        loads.append((chunk, ADDR + off))
    sock = DIR / "qmp.sock"
    sock.unlink(missing_ok=True)
    argv = [QEMU, "-M", "pc", "-accel", "tcg", "-m", "2G", "-S", "-nodefaults"]
    argv += ["-display", "none", "-qmp", f"unix:{sock},server=on,wait=off"]
    for chunk, addr in loads:
        argv += ["-device", f"loader,file={chunk},addr={addr:#x}"]
    tmp = STREAM.with_suffix(".part")
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        qmp = Qmp(sock)
        params = {"max-bandwidth": 64 * GiB, "downtime-limit": DOWNTIME_MAX}
        qmp.cmd("migrate-set-parameters", **params)
        qmp.cmd("migrate", uri=f"exec:cat > {tmp}")
        t0 = time.monotonic()
        while (info := qmp.cmd("query-migrate")).get("status") != "completed":
            if info.get("status") in ("failed", "cancelled") or time.monotonic() - t0 > 1800:
                raise RuntimeError(f"migration did not complete: {info}")
            time.sleep(0.2)
        qmp.cmd("quit")
        qmp.close()
        qemu.wait(timeout=60)
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
        sock.unlink(missing_ok=True)
        for chunk, _ in loads:
            chunk.unlink(missing_ok=True)
    tmp.replace(STREAM)
    meta = {
        "qemu": qemu_version(),
        "argv": [a.replace(str(DIR) + "/", "") for a in argv],
        "parameters": params,
        "data": {"addr": ADDR, "size": DATA, "sha256": h.hexdigest()},
        "query-migrate": info,
        "stream_size": STREAM.stat().st_size,
    }
    META.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def ram_records() -> list[tuple[str, int]]:
    """The RAM section's records (type, length), from ``qevm info --json``."""
    res = subprocess.run(
        qevm_cmd("info", "--json", str(STREAM)), env=qevm_env(), capture_output=True, check=True
    )
    ram = next(s for s in json.loads(res.stdout)["sections"] if s["name"] == "ram")
    return [(r["type"], r["length"]) for r in ram["records"]]


def measure(name: str, rounds: int) -> dict[str, Run | None]:
    """Peak RSS of command ``name`` from the file, a pipe and the compressed file."""
    args, seekable = COMMANDS[name]
    out = DIR / "out"
    results: dict[str, Run | None] = {}
    for how in ("file", "pipe", "zstd"):
        if seekable and how != "file":
            results[how] = None
            continue
        src = "-" if how == "pipe" else str(ZSTD if how == "zstd" else STREAM)
        argv = qevm_cmd(*(a.format(F=src, O=out) for a in args))
        best: Run | None = None
        for _ in range(rounds):
            _clean(out)
            r = run(
                argv,
                stdout=DIR / "stdout",
                env=qevm_env(),
                stdin_from=["cat", str(STREAM)] if how == "pipe" else None,
                sample=SAMPLE,
            )
            if best is None or r.maxrss > best.maxrss or not r.ok:
                best = r
            if not r.ok:
                break
        _clean(out)
        results[how] = best
    return results


def _clean(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    for p in (Path(f"{out}.elf"), DIR / "stdout"):
        p.unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=1, help="runs per command and input (highest peak)")
    ap.add_argument("commands", nargs="*", help=f"of {', '.join(COMMANDS)} (default: all)")
    opts = ap.parse_args()
    names = opts.commands or list(COMMANDS)
    warn_if_busy()
    compile_qevm()
    meta = generate()
    print(machine_line())
    print(f"{STREAM.name}: {meta['stream_size'] / MiB:.0f} MiB, {meta['qemu']}")
    recs = ram_records()
    big = sorted(recs, key=lambda r: -r[1])[:3]
    print(
        f"RAM: {len(recs)} records, the largest "
        + ", ".join(f"{t} {n / MiB:.0f} MiB" for t, n in big)
    )
    rows = []
    ok = True
    for name in names:
        res = measure(name, opts.n)
        cells = [f"qevm {name}"]
        for how in ("file", "pipe", "zstd"):
            r = res[how]
            if r is None:
                cells.append("n/a")
            elif not r.ok:
                cells.append(f"exit {r.returncode}")
                print(f"{name} ({how}): {first_error(r.stderr)}", file=sys.stderr)
                ok = False
            else:
                cells.append(f"{r.rss_mib:.1f} ({r.rss_anon / MiB:.0f}+{r.rss_file / MiB:.0f})")
                ok &= r.rss_mib <= RSS_LIMIT_MIB
        rows.append(cells)
    print()
    print("peak RSS MiB (sampled anonymous + file-backed) from the file, a pipe, zstd:")
    print(table(["command", "file", "cat F |", "F.zst"], rows))
    print()
    print(f"{verdict(ok)} every command at most {RSS_LIMIT_MIB:.0f} MiB peak RSS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
