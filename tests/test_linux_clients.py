"""Kernel debuggers on the corpus' real Linux guests: drgn and crash read what qevm writes.

For every Linux stream of the corpus (x86 pc and q35, arm64 virt): from
``qevm memory``'s ELF, drgn finds the kernel release, its printk records hold
every kernel line of the serial console and its task list every process of
the console's ``ps``; on x86-64 crash's ``log`` shows the console's kernel
lines from the ELF and from ``--format kdump-zlib``; ``qevm mount`` serves an
ELF drgn reads the same way.  Each memory image is made once per session.
"""

from __future__ import annotations

import os
import pathlib
import random
import shutil
import subprocess
import sys
import time

import pytest
from conftest import CORPUS, HAVE_CORPUS, unpack, vmlinux
from linux_truth import crash_log_lines, drgn_view, kernel_lines, missing, release_of


def _streams() -> dict[str, tuple[pathlib.Path, pathlib.Path]]:
    out: dict[str, tuple[pathlib.Path, pathlib.Path]] = {}
    if not HAVE_CORPUS:
        return out
    for folder in ("linux", "devices", "diff"):
        for p in sorted((CORPUS / folder).glob("*.mig.xz")):
            name = p.name[: -len(".mig.xz")]
            console = p.parent / f"{name}.console"
            if not console.exists() and name.endswith(".b"):
                # diff/: the same VM saved again 3 s later; its console goes on to the end
                console = p.parent / f"{name[:-2]}.console"
            if console.exists():
                out[name] = (p, console)
    return out


STREAMS = _streams()
X86 = sorted(n for n, (_, c) in STREAMS.items() if release_of(c).endswith("-amd64"))

pytestmark = [pytest.mark.corpus, pytest.mark.slow]


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """``get(name, fmt)``: the path of ``qevm memory -o F --format fmt`` of a stream, made once."""
    root = tmp_path_factory.mktemp("linux-images")
    made: dict[tuple[str, str], pathlib.Path] = {}

    def get(name: str, fmt: str = "elf") -> pathlib.Path:
        if (name, fmt) not in made:
            out = root / f"{name}.{fmt}"
            subprocess.run(
                [sys.executable, "-m", "qevm", "memory", str(unpack(STREAMS[name][0])), "-o",
                 str(out), "--format", fmt],
                check=True, capture_output=True,
            )  # fmt: skip
            made[name, fmt] = out
        return made[name, fmt]

    return get


def _kernel(name: str) -> str:
    return str(vmlinux(release_of(STREAMS[name][1])))


@pytest.mark.parametrize("fmt", ["elf", "kdump-zlib"])
@pytest.mark.parametrize("name", sorted(STREAMS))
def test_drgn_reads_the_image(name, fmt, images):
    view = drgn_view(str(images(name, fmt)), _kernel(name))
    assert missing(STREAMS[name][1], view) == {}


def _crash_log(core: pathlib.Path, kernel: str, tmp: pathlib.Path) -> set[tuple[str, str]]:
    if shutil.which("crash") is None:
        pytest.fail("crash is not installed (.ci/kernel-debug installs it)")
    cmds = tmp / "cmds"
    cmds.write_text("log\nquit\n")
    log = tmp / "log.txt"
    with open(log, "wb") as out:
        subprocess.run(
            ["crash", "-s", kernel, str(core), "-i", str(cmds)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=900,
        )  # fmt: skip
    return crash_log_lines(log)


@pytest.mark.parametrize("fmt", ["elf", "kdump-zlib"])
@pytest.mark.parametrize("name", X86)
def test_crash_log_shows_the_console(name, fmt, images, tmp_path):
    seen = _crash_log(images(name, fmt), _kernel(name), tmp_path)
    lost = [line for line in kernel_lines(STREAMS[name][1]) if line not in seen]
    assert not lost, lost[:5]


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_drgn_reads_the_mounted_elf(name, images, tmp_path):
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.fail("FUSE is not available (/dev/fuse, fusermount3 from fuse3)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # the compressed file itself: mount copies it to a temporary file first
    res = subprocess.run(
        [sys.executable, "-m", "qevm", "mount", str(STREAMS[name][0]), str(mnt)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    try:
        served = mnt / "memory.elf"
        written = images(name)
        assert served.stat().st_size == written.stat().st_size
        rnd = random.Random(name)
        with open(served, "rb") as a, open(written, "rb") as b:
            size = written.stat().st_size
            for off in [0, *(rnd.randrange(size) for _ in range(200))]:
                n = rnd.choice((1, 4096, 65536, 1 << 20))
                a.seek(off)
                b.seek(off)
                assert a.read(n) == b.read(n), off
        assert missing(STREAMS[name][1], drgn_view(str(served), _kernel(name))) == {}
    finally:
        _unmount(mnt)


def _unmount(mnt: pathlib.Path) -> None:
    for _ in range(50):
        if subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True).returncode == 0:
            return
        if not os.path.ismount(mnt):
            return
        time.sleep(0.1)
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
