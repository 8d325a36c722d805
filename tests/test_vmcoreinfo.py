"""VMCOREINFO recovered from guest RAM or the vmcoreinfo device, checked, written as QEMU does.

Truth: the streams of ``data/vmcoreinfo`` (``gen_vmcoreinfo.py``) hold a
known text at known addresses with look-alikes around it, and QEMU's own
dump of the x86 one with the vmcoreinfo device pointed at the note.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest
from conftest import DATA, unpack
from gen_vmcoreinfo import _pt_note, device_edit_args

import qevm
from qevm.export.guestmem import arm64_translate
from qevm.export.scan import index_scanner
from qevm.export.vmcoreinfo import GuestMemory, check, parse_text, recover
from qevm.views.cpu import cpus
from qevm.views.memmap import layout

STREAMS = {p.name[: -len(".mig.xz")]: p for p in sorted((DATA / "vmcoreinfo").glob("*.mig.xz"))}


def _recipe(name: str) -> dict:
    return json.loads((DATA / "vmcoreinfo" / f"{name}.json").read_text())


def notes(blob: bytes) -> list[tuple[bytes, int, bytes]]:
    out, p = [], 0
    while p + 12 <= len(blob):
        nn, dn, t = struct.unpack_from("<III", blob, p)
        name = blob[p + 12 : p + 12 + nn].rstrip(b"\0")
        d0 = p + 12 + -(-nn // 4) * 4
        out.append((name, t, blob[d0 : d0 + dn]))
        p = d0 + -(-dn // 4) * 4
    return out


def qevm_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qevm", *map(str, args)], capture_output=True, text=True, check=True
    )


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_note_written_after_the_cpu_notes(name, tmp_path):
    rec = _recipe(name)
    out = tmp_path / "m.elf"
    res = qevm_cli("memory", unpack(STREAMS[name]), "-o", out)
    assert f"Linux {rec['release']}, KASLR offset {rec['kernel_offset']:#x}" in res.stdout
    found = notes(bytes.fromhex(_pt_note(str(out))))
    assert found[-1] == (b"VMCOREINFO", 0, rec["text"].encode())
    # the notes before it are QEMU's own (its dump of the same VM)
    qemu = notes(bytes.fromhex(rec["dump"]["notes"]))
    assert found[:-1] == qemu


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_no_vmcoreinfo_option(name, tmp_path):
    out = tmp_path / "m.elf"
    qevm_cli("memory", unpack(STREAMS[name]), "-o", out, "--no-vmcoreinfo")
    assert _pt_note(str(out)) == _recipe(name)["dump"]["notes"]


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_lookalikes_rejected(name):
    rec = _recipe(name)
    with qevm.open(unpack(STREAMS[name]), index_ram=True) as mig:
        mm = layout(mig)
        idx = mig.page_index
        info, warnings = recover(mig, mm, idx.read, index_scanner(idx), "<")
        assert info is not None and not warnings
        assert info.gpa in (rec["text_gpa"], rec["note_gpa"] + 24)
        assert info.release == rec["release"] and info.kernel_offset == rec["kernel_offset"]
        assert any("maps itself" in c or "swapper_pg_dir" in c for c in info.checks)
        # the previous boot's text is well formed but fails the page-table check
        mem = GuestMemory(mm, idx.read)
        raw = mem.read(rec["stale_gpa"], 4096)
        text = raw[: raw.index(b"\0")]
        fields = parse_text(text)
        assert fields is not None and fields["OSRELEASE"] == rec["release"]
        from qevm.export.vmcoreinfo import VmcoreInfo

        why = check(
            VmcoreInfo(text, fields, b"", "guest RAM", rec["stale_gpa"]), mem, cpus(mig), True
        )
        assert why is not None and "swapper_pg_dir" in why
    # the kernel's format strings are not a VMCOREINFO text
    assert parse_text(b"OSRELEASE=%s\nPAGESIZE=%ld\n") is None


def test_device_note_is_qemus(tmp_path):
    """With the vmcoreinfo device pointing at the note, the PT_NOTE is QEMU's, byte for byte."""
    rec = _recipe("x86-vmcoreinfo")
    dev = tmp_path / "dev.mig"
    qevm_cli(*device_edit_args(str(unpack(STREAMS["x86-vmcoreinfo"])), str(dev)))
    out = tmp_path / "dev.elf"
    res = qevm_cli("memory", dev, "-o", out)
    assert "vmcoreinfo device at 0x131000" in res.stdout
    assert _pt_note(str(out)) == rec["device_dump_pt_note"]


def test_from_a_pipe(tmp_path):
    """Read once from a pipe: the text is found in the staged blocks."""
    rec = _recipe("x86-vmcoreinfo")
    out = tmp_path / "p.elf"
    xz = subprocess.Popen(["xz", "-dc", str(STREAMS["x86-vmcoreinfo"])], stdout=subprocess.PIPE)
    subprocess.run(
        [sys.executable, "-m", "qevm", "memory", "-", "-o", str(out)],
        stdin=xz.stdout,
        check=True,
        capture_output=True,
    )
    xz.wait()
    assert notes(bytes.fromhex(_pt_note(str(out))))[-1][2] == rec["text"].encode()


def test_broken_page_tables_mean_no_note(tmp_path):
    """A text whose swapper_pg_dir does not translate is not written; the warning says why."""
    bad = tmp_path / "bad.mig"
    # clear the PML4 entry that maps the kernel
    qevm_cli(
        "edit", unpack(STREAMS["x86-vmcoreinfo"]), "-o", bad,
        "--write-ram", f"pc.ram:{0x110000 + 511 * 8:#x}=" + "00" * 8,
    )  # fmt: skip
    out = tmp_path / "bad.elf"
    res = qevm_cli("memory", bad, "-o", out)
    assert "VMCOREINFO not written" in res.stderr and "swapper_pg_dir" in res.stderr
    assert notes(bytes.fromhex(_pt_note(str(out))))[-1][0] != b"VMCOREINFO"


def test_info_shows_release_and_kaslr(tmp_path):
    rec = _recipe("x86-vmcoreinfo")
    res = qevm_cli("info", unpack(STREAMS["x86-vmcoreinfo"]), "--json")
    kernels = json.loads(res.stdout)["kernels"]
    assert {"release": rec["release"], "kernel_offset": rec["kernel_offset"]}.items() <= next(
        k for k in kernels if k["kernel_offset"] == rec["kernel_offset"]
    ).items()
    text = qevm_cli("info", unpack(STREAMS["x86-vmcoreinfo"])).stdout
    assert f"kernel        Linux {rec['release']}, KASLR offset {rec['kernel_offset']:#x}" in text


def test_arm64_walk_through_ttbr1():
    """TTBR1_EL1 and TCR_EL1 as the CPU ran them (msr), the tables as placed."""
    with qevm.open(unpack(STREAMS["arm64-vmcoreinfo"]), index_ram=True) as mig:
        (cpu,) = cpus(mig)[:1]
        assert cpu.registers["TTBR1_EL1"] == 0x40110000
        mem = GuestMemory(layout(mig), mig.page_index.read)
        kbase = 0xFFFF800008000000 + 0x5A00000
        tcr = cpu.registers["TCR_EL1"]
        assert arm64_translate(mem, 0x40110000, tcr, kbase + 0x123456) == 0x40123456
        assert arm64_translate(mem, 0x40110000, tcr, kbase + (32 << 20)) is None


@pytest.mark.qemu
@pytest.mark.parametrize("name", sorted(STREAMS))
def test_made_now_with_qemu(name, tmp_path):
    """The recipe run again with the installed QEMU: the same checks on a fresh stream."""
    import shutil

    from gen_vmcoreinfo import RECIPES, make

    if shutil.which(RECIPES[name][0]) is None:
        pytest.skip(f"{RECIPES[name][0]} is not installed")
    stream = make(name, tmp_path)
    rec = json.loads((tmp_path / f"{name}.json").read_text())
    out = tmp_path / "m.elf"
    qevm_cli("memory", stream, "-o", out)
    found = notes(bytes.fromhex(_pt_note(str(out))))
    assert found[-1] == (b"VMCOREINFO", 0, rec["text"].encode())
    assert found[:-1] == notes(bytes.fromhex(rec["dump"]["notes"]))
    if "device_dump_pt_note" in rec:
        dev, dev_elf = tmp_path / "dev.mig", tmp_path / "dev.elf"
        qevm_cli(*device_edit_args(str(stream), str(dev)))
        qevm_cli("memory", dev, "-o", dev_elf)
        assert _pt_note(str(dev_elf)) == rec["device_dump_pt_note"]
