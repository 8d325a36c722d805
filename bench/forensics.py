"""Memory images for kernel debuggers: ELF vs kdump formats, VMCOREINFO search, qevm mount.

On the corpus' real Linux guests (``linux/*.mig.xz``, ``devices/``, ``diff/``;
512 MiB each, decompressed into ``bench/work/streams``), best of ``-n`` runs:

- ``qevm memory F -o OUT`` in every format (elf, kdump-zlib and the raw
  kdump formats with each compression): wall time, peak RSS, bytes on disk;
- ``qevm memory --no-vmcoreinfo`` (what finding and checking the note costs);
- ``qevm info F`` (which looks for the kernel in the file's bytes);
- the VMCOREINFO search and checks alone, in-process, after the page index;
- ``qevm mount``: memory.elf read sequentially (1 MiB reads) and at random
  (4 KiB reads at 2000 offsets).

Targets: the VMCOREINFO search and checks take under 1 s per guest; every
``qevm memory`` run peaks under 150 MiB RSS.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    WORK,
    MiB,
    Run,
    best_of,
    compile_qevm,
    corpus_dir,
    decompress_xz,
    load_line,
    machine_line,
    qevm_cmd,
    qevm_env,
    run,
    table,
    verdict,
    warn_if_busy,
)

FORMATS = ["elf", "kdump-zlib", "kdump-raw-zlib", "kdump-raw-lzo", "kdump-raw-snappy",
           "kdump-raw-zstd"]  # fmt: skip

_RECOVER = """
import sys, time, qevm
from qevm.views.memmap import layout
from qevm.export.scan import index_scanner
from qevm.export.vmcoreinfo import recover
with qevm.open(sys.argv[1], index_ram=True) as mig:
    t = time.perf_counter()
    mm = layout(mig)
    info, _ = recover(mig, mm, mig.page_index.read, index_scanner(mig.page_index), "<")
    print(time.perf_counter() - t, info.release if info else "-")
"""


def streams() -> list[Path]:
    root = corpus_dir()
    found = []
    for folder in ("linux", "devices", "diff"):
        found += sorted((root / folder).glob("*.mig.xz"))
    out = []
    for p in found:
        dst = WORK / "streams" / p.name[: -len(".xz")]
        out.append(decompress_xz(p, dst))
    return out


def on_disk(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def mount_reads(stream: Path) -> tuple[float, float]:
    """(MB/s of sequential 1 MiB reads, 4 KiB random reads per second) of memory.elf."""
    mnt = Path(tempfile.mkdtemp(prefix="bench-mnt-", dir=WORK))
    subprocess.run(qevm_cmd("mount", str(stream), str(mnt)), env=qevm_env(), check=True,
                   capture_output=True)  # fmt: skip
    try:
        path = mnt / "memory.elf"
        size = path.stat().st_size
        t = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass
        seq = size / (time.perf_counter() - t) / 1e6
        rnd = random.Random(1)
        fd = os.open(path, os.O_RDONLY)
        try:
            t = time.perf_counter()
            for _ in range(2000):
                os.pread(fd, 4096, rnd.randrange(size - 4096))
            per_s = 2000 / (time.perf_counter() - t)
        finally:
            os.close(fd)
        return seq, per_s
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        mnt.rmdir()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=3, help="runs per command (best is shown)")
    args = ap.parse_args()
    warn_if_busy()
    compile_qevm()
    print(machine_line())
    out_dir = WORK / "forensics"
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = True
    rows = []
    search_rows = []
    for stream in streams():
        name = stream.name[: -len(".mig")]
        for fmt in [*FORMATS, "elf --no-vmcoreinfo"]:
            out = out_dir / f"{name}.{fmt.split()[0]}"
            extra = fmt.split()[1:]

            def once(
                out: Path = out, fmt: str = fmt, extra: list[str] = extra, src: Path = stream
            ) -> Run:
                out.unlink(missing_ok=True)
                argv = ["memory", str(src), "-o", str(out), "--format", fmt.split()[0]]
                return run(qevm_cmd(*argv, *extra), env=qevm_env())

            r = best_of(args.n, once)
            size = on_disk(out)
            rows.append([name, fmt, f"{r.wall:.2f}", f"{r.maxrss / MiB:.0f}",
                         f"{size / MiB:.1f}"])  # fmt: skip
            ok &= r.returncode == 0 and r.maxrss < 150 * MiB
            out.unlink(missing_ok=True)
        info = best_of(args.n, lambda s=stream: run(qevm_cmd("info", str(s)), env=qevm_env()))
        times = []
        for _ in range(args.n):
            res = subprocess.run([sys.executable, "-c", _RECOVER, str(stream)], env=qevm_env(),
                                 capture_output=True, text=True, check=True)  # fmt: skip
            times.append(float(res.stdout.split()[0]))
        seq, rnd = mount_reads(stream)
        search_rows.append([name, f"{min(times):.3f}", f"{info.wall:.2f}", f"{seq:.0f}",
                            f"{rnd:.0f}"])  # fmt: skip
        ok &= min(times) < 1.0
    print(table(["stream", "format", "wall s", "peak MiB", "on disk MiB"], rows))
    print()
    print(table(["stream", "VMCOREINFO s", "info s", "mount seq MB/s", "mount 4K reads/s"],
                search_rows))  # fmt: skip
    print(load_line())
    print(verdict(ok), "VMCOREINFO under 1 s per guest, qevm memory under 150 MiB RSS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
