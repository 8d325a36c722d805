"""``qevm mount``: the files served over FUSE are the bytes the other commands write.

For every kind of input (a compressed stream, libvirt images compressed and
sparse, a qcow2 snapshot, a multifd migration with its channels): memory.elf
equals ``qevm memory``'s ELF (``write_core`` of the same opened stream),
memory.raw the raw image, ram/<block> the block, devices.json and cpus.json
the JSON of ``qevm state``/``qevm cpu``.  Reads are random-access.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import time

import pytest
from conftest import DATA, unpack

from qevm.export.ramread import read_range
from qevm.views.core import write_core
from qevm.writer import open_for_writing

CASES = {
    "xz-stream": ([DATA / "vmcoreinfo" / "x86-vmcoreinfo.mig.xz"], []),
    "libvirt-zstd": ([DATA / "libvirt" / "save-zstd.img"], []),
    "libvirt-sparse": ([DATA / "libvirt" / "save-sparse.img.xz"], ["unpack"]),
    "qcow2-snapshot": ([DATA / "qcow2" / "c512.qcow2.xz"], ["unpack", "--snapshot", "vm1"]),
    "multifd-channels": (
        [DATA / "live" / f"multifd-111{s}.xz" for s in (".mig", ".ch1.bin", ".ch2.bin")],
        ["unpack"],
    ),
}


def _fuse_ok() -> None:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("FUSE is not available (/dev/fuse, fusermount3)")
    pytest.importorskip("mfusepy")


def _sha(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _unmount(mnt: pathlib.Path) -> None:
    for _ in range(50):
        if not os.path.ismount(mnt):
            return
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        time.sleep(0.1)
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_mounted_files_are_what_qevm_writes(case, tmp_path):
    _fuse_ok()
    paths, opts = CASES[case]
    files = [str(unpack(p) if "unpack" in opts else p) for p in paths]
    snapshot = opts[opts.index("--snapshot") + 1] if "--snapshot" in opts else None
    args = [files[0]]
    args += [a for c in files[1:] for a in ("--channel", c)]
    args += ["--snapshot", snapshot] if snapshot else []
    # what the other commands write, from the same input opened the same way
    elf, raw = tmp_path / "m.elf", tmp_path / "m.raw"
    with open_for_writing(
        files[0], index_ram=True, channels=files[1:] or None, snapshot=snapshot
    ) as mig:
        write_core(mig, elf)
        res = write_core(mig, raw, "raw")
        blocks = {
            b.name: read_range(mig.page_index, b.name, 0, b.used_length)
            for b in mig.ram_blocks
            if b.name in mig.page_index.loc
        }
    ranges = res.memmap.ranges
    state = subprocess.run(
        [sys.executable, "-m", "qevm", "state", "--json", *args[:1], *args[len(files) * 2 - 1 :]],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "qevm", "mount", *args, str(mnt)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    try:
        assert "fusermount -u" in res.stdout
        assert _sha(mnt / "memory.elf") == _sha(elf)
        assert (mnt / "memory.raw").stat().st_size == raw.stat().st_size
        with open(mnt / "memory.raw", "rb") as a, open(raw, "rb") as b:
            for r in ranges:  # the mapped ranges (the rest is holes up to the top one)
                assert os.pread(a.fileno(), r.size, r.gpa) == os.pread(b.fileno(), r.size, r.gpa)
        for name, data in blocks.items():
            served = list((mnt / "ram").rglob(pathlib.PurePath(name).name))
            assert any(p.read_bytes() == data for p in served), name
        assert json.loads((mnt / "devices.json").read_text()) == json.loads(state)
        cpus = json.loads((mnt / "cpus.json").read_text())["cpus"]
        assert cpus and all("registers" in c for c in cpus)
        with pytest.raises(OSError):
            open(mnt / "memory.elf", "r+b")
        # random access: reads at arbitrary offsets and lengths equal the file's
        rnd = random.Random(case)
        size = elf.stat().st_size
        with open(mnt / "memory.elf", "rb", buffering=0) as a, open(elf, "rb") as b:
            for _ in range(300):
                off, n = rnd.randrange(size), rnd.choice((1, 7, 4096, 4097, 200000))
                assert os.pread(a.fileno(), n, off) == os.pread(b.fileno(), n, off)
    finally:
        _unmount(mnt)
    assert not os.path.ismount(mnt)


def test_foreground_until_unmounted(tmp_path):
    _fuse_ok()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qevm",
            "mount",
            "-f",
            str(unpack(CASES["xz-stream"][0][0])),
            str(mnt),
        ]
    )
    try:
        for _ in range(300):
            if os.path.ismount(mnt):
                break
            time.sleep(0.05)
        assert sorted(os.listdir(mnt)) == [
            "cpus.json",
            "devices.json",
            "memory.elf",
            "memory.raw",
            "ram",
        ]
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            _unmount(mnt)
            proc.kill()
            proc.wait()
