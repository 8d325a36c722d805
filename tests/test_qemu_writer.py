"""Streams qevm wrote, loaded by a real QEMU.

A QEMU saves a small x86 VM; qevm edits or converts the stream; a second
QEMU loads the result with ``-incoming`` and shows, over QMP, what it got.
``qemu-system-x86_64`` from PATH runs the edit and multi-pass tests;
mapped-ram needs QEMU 9.0 or newer: the PATH one when it is new enough,
else the one named by ``$QEVM_QEMU_NEW`` (e.g. Debian trixie's in a
debootstrap tree, run through a wrapper script).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from typing import NamedTuple

import pytest
from qemuvm import Vm

import qevm
from qevm.cli import main

pytestmark = pytest.mark.qemu

MIB = 1 << 20
RAM = 64 * MIB
HF_LMA = 1 << 14
HF_CS64 = 1 << 15


def _version(binary: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"version (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


@pytest.fixture(scope="module")
def qemu() -> str:
    binary = shutil.which("qemu-system-x86_64")
    if binary is None or _version(binary) is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    return binary


#: Where .ci/qemu-trixie puts Debian trixie's QEMU 10.0 when .ci/run calls it.
TRIXIE = os.path.join(os.environ.get("TMPDIR", "/tmp"), "qevm-trixie", "qemu-system-x86_64")


@pytest.fixture(scope="module")
def qemu_mapped() -> str:
    """A QEMU that has mapped-ram (9.0+): the one in PATH, $QEVM_QEMU_NEW, or .ci/run's."""
    for binary in (
        shutil.which("qemu-system-x86_64"),
        os.environ.get("QEVM_QEMU_NEW"),
        TRIXIE if os.access(TRIXIE, os.X_OK) else None,
    ):
        if binary and (_version(binary) or (0, 0)) >= (9, 0):
            return binary
    pytest.skip("mapped-ram needs QEMU >= 9.0 (set QEVM_QEMU_NEW to one, or run .ci/qemu-trixie)")


def _args(tmp_path, *extra: str) -> list[str]:
    # a megabyte of random bytes in guest RAM, so pages are not all zero
    pat = tmp_path / "pattern.bin"
    if not pat.exists():
        pat.write_bytes(os.urandom(MIB))
    return [
        "-M",
        "pc",
        "-m",
        str(RAM // MIB),
        "-display",
        "none",
        "-nodefaults",
        "-device",
        f"loader,file={pat},addr={0x200000:#x},force-raw=on",
        *extra,
    ]


def _save_paused(binary: str, tmp_path, path, *, mapped: bool = False) -> None:
    with Vm(binary, _args(tmp_path, "-S"), tmp_path, "src") as vm:
        if mapped:
            vm.cmd(
                "migrate-set-capabilities",
                capabilities=[{"capability": "mapped-ram", "state": True}],
            )
            vm.cmd("migrate", uri=f"file:{path}")
            vm.wait_migration()
        else:
            vm.save(path)


class Loaded(NamedTuple):
    """What a QEMU that loaded a stream shows."""

    state: str
    regs: str
    ram: bytes
    xp: str


def _load(binary: str, tmp_path, path, *, mapped: bool = False) -> Loaded:
    """Load ``path`` into a new QEMU and look at it."""
    with Vm(binary, _args(tmp_path, "-S", "-incoming", "defer"), tmp_path, "dst") as vm:
        if mapped:
            vm.cmd(
                "migrate-set-capabilities",
                capabilities=[{"capability": "mapped-ram", "state": True}],
            )
            status = vm.load(f"file:{path}")
        else:
            status = vm.load_file(path)
        assert status == "completed", vm.log()
        return Loaded(
            vm.cmd("query-status")["status"],
            vm.hmp("info registers"),
            vm.pmem(0, RAM, tmp_path / "pmem.bin"),
            vm.hmp(f"xp /16xb {0x100FF0:#x}"),
        )


def _qevm(*argv) -> None:
    assert main([str(a) for a in argv]) == 0


def _edit_and_check(binary: str, tmp_path, *, mapped: bool) -> None:
    saved = tmp_path / "saved.mig"
    _save_paused(binary, tmp_path, saved, mapped=mapped)
    with qevm.open(saved) as mig:
        hflags = mig.device("cpu").state.get("env.hflags")
    data = os.urandom(0x2020)
    (tmp_path / "data").write_bytes(data)
    out = tmp_path / "edited.mig"
    _qevm(
        "edit",
        saved,
        "-o",
        out,
        "-q",
        "--set",
        "cpu#0:env.regs[0]=0x1234abcd",
        "--set",
        "cpu#0:env.regs[3]=0x1122334455667788",
        # long mode in hflags, so that info registers shows 64-bit registers
        "--set",
        f"cpu#0:env.hflags={hflags | HF_LMA | HF_CS64:#x}",
        "--write-ram",
        f"pc.ram:0x100ff0=@{tmp_path / 'data'}",
    )
    before = _load(binary, tmp_path, saved, mapped=mapped)
    after = _load(binary, tmp_path, out, mapped=mapped)
    assert after.state == before.state == "prelaunch"
    assert "RAX=000000001234abcd" in after.regs
    assert "RBX=1122334455667788" in after.regs
    assert "RAX=" not in before.regs  # the saved VM is in real mode: EAX=...
    assert after.ram[0x100FF0 : 0x100FF0 + len(data)] == data
    assert " ".join(f"0x{b:02x}" for b in data[:8]) in after.xp
    # nothing else changed in guest RAM
    assert after.ram[:0x100FF0] == before.ram[:0x100FF0]
    assert after.ram[0x100FF0 + len(data) :] == before.ram[0x100FF0 + len(data) :]


def test_edited_registers_and_ram_are_what_qemu_loads(qemu, tmp_path):
    _edit_and_check(qemu, tmp_path, mapped=False)


def test_edited_mapped_ram_file_loads(qemu_mapped, tmp_path):
    _edit_and_check(qemu_mapped, tmp_path, mapped=True)


def test_unedited_output_is_the_input(qemu, tmp_path):
    saved = tmp_path / "saved.mig"
    _save_paused(qemu, tmp_path, saved)
    _qevm("edit", saved, "-o", tmp_path / "same.mig", "-q")
    assert (tmp_path / "same.mig").read_bytes() == saved.read_bytes()


def _save_running(binary: str, tmp_path, path) -> None:
    """Migrate a running VM slowly, so that pages dirtied meanwhile are sent again."""
    with Vm(binary, _args(tmp_path), tmp_path, "src") as vm:
        time.sleep(0.3)
        vm.cmd("migrate-set-capabilities", capabilities=[{"capability": "xbzrle", "state": True}])
        vm.cmd("migrate-set-parameters", **{"max-bandwidth": MIB, "downtime-limit": 50})
        vm.cmd("migrate", uri=f"exec:cat > {shlex.quote(str(path))}")
        vm.wait_migration()


def _pages_and_records(path) -> tuple[int, int]:
    with qevm.open(path, decode_devices=False) as mig:
        pc = next(b for b in mig.ram_blocks if b.name == "pc.ram")
        return pc.used_length // mig.page_size, sum(pc.records.values())


def test_converted_multipass_stream_loads_the_same(qemu, tmp_path):
    saved = tmp_path / "multi.mig"
    _save_running(qemu, tmp_path, saved)
    pages, records = _pages_and_records(saved)
    assert records > pages, "QEMU sent every page once; the test needs a multi-pass stream"
    out = tmp_path / "one.mig"
    _qevm("convert", saved, "-o", out, "-q")
    assert _pages_and_records(out) == (pages, pages)
    a = _load(qemu, tmp_path, saved)
    b = _load(qemu, tmp_path, out)
    assert a.state == b.state and a.state in ("prelaunch", "paused")
    assert a.regs == b.regs
    assert a.ram == b.ram


def test_converted_mapped_ram_file_loads_the_same(qemu_mapped, tmp_path):
    saved = tmp_path / "mapped.mig"
    _save_paused(qemu_mapped, tmp_path, saved, mapped=True)
    out = tmp_path / "plain.mig"
    _qevm("convert", saved, "-o", out, "-q")
    with qevm.open(out) as mig:
        assert "mapped-ram" not in mig.capabilities
        assert all(b.mapped is None for b in mig.ram_blocks)
    a = _load(qemu_mapped, tmp_path, saved, mapped=True)
    b = _load(qemu_mapped, tmp_path, out)
    assert a.regs == b.regs
    assert a.ram == b.ram
    assert a.ram[0x200000 : 0x200000 + MIB] == (tmp_path / "pattern.bin").read_bytes()
