"""``qevm memory --format kdump-*``: makedumpfile's kdump-compressed format, read back.

Read with ``kdump_reader`` (written from makedumpfile's headers, not from
qevm's writer); the guest-physical memory it holds is checked against QEMU's
own dump of the same VM (sha256 of each PT_LOAD), the notes against the ELF
QEMU-compatible PT_NOTE, the VMCOREINFO against the text placed in RAM.
crash reads the corpus' Linux guests from it (``test_linux_clients``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from conftest import DATA, unpack
from gen_vmcoreinfo import _pt_note
from kdump_reader import read, unflatten

from qevm.export.kdump import FORMATS

STREAM = DATA / "vmcoreinfo" / "x86-vmcoreinfo.mig.xz"
RECIPE = json.loads((DATA / "vmcoreinfo" / "x86-vmcoreinfo.json").read_text())


def _qevm(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qevm", *map(str, args)], capture_output=True, text=True, check=True
    )


@pytest.fixture(scope="module")
def elf_notes(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("elf") / "m.elf"
    _qevm("memory", unpack(STREAM), "-o", out)
    return _pt_note(str(out))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_kdump_holds_qemus_memory(fmt, tmp_path, elf_notes):
    out = tmp_path / "m.kdump"
    res = _qevm("memory", unpack(STREAM), "-o", out, "--format", fmt)
    assert "kdump:" in res.stdout
    plain = tmp_path / "plain.kdump"
    flattened = unflatten(str(out), str(plain))
    assert flattened == (not fmt.startswith("kdump-raw-"))
    kd = read(str(plain if flattened else out))
    assert kd.header_version == 6 and kd.machine == "x86_64" and kd.nr_cpus == 1
    assert kd.block_size == 4096 and kd.dump_level == 1
    method_flag = {"zlib": 1, "lzo": 2, "snappy": 4, "zstd": 0x20}[fmt.rsplit("-", 1)[1]]
    assert kd.status == method_flag
    # the kernel's utsname, read through its page tables, as makedumpfile writes it
    assert kd.release == RECIPE["release"] and kd.sysname == "Linux"
    assert kd.vmcoreinfo == RECIPE["text"].encode()
    assert kd.notes.hex() == elf_notes
    # phys_base as the kernel holds it: PA = VA - 0xffffffff80000000 + phys_base
    assert kd.phys_base == (-RECIPE["kernel_offset"]) & (1 << 64) - 1
    assert kd.bitmap1 == kd.bitmap2
    pages = {}
    zero_offsets = set()
    for pfn, page, flags, off in kd.pages():
        assert flags in (0, method_flag)
        if page.count(0) == len(page):
            zero_offsets.add(off)
        else:
            pages[pfn] = page
    assert len(zero_offsets) == 1  # every zero page shares one
    for load in RECIPE["dump"]["loads"]:
        h = hashlib.sha256()
        for pa in range(load["paddr"], load["paddr"] + load["size"], 4096):
            assert kd.dumpable(pa >> 12)
            h.update(pages.get(pa >> 12, bytes(4096)))
        assert h.hexdigest() == load["sha256"], hex(load["paddr"])


def test_kdump_from_a_pipe(tmp_path):
    a, b = tmp_path / "a.kdump", tmp_path / "b.kdump"
    _qevm("memory", unpack(STREAM), "-o", a, "--format", "kdump-raw-zlib")
    xz = subprocess.Popen(["xz", "-dc", str(STREAM)], stdout=subprocess.PIPE)
    subprocess.run(
        [sys.executable, "-m", "qevm", "memory", "-", "-o", str(b), "--format", "kdump-raw-zlib"],
        stdin=xz.stdout,
        check=True,
        capture_output=True,
    )
    xz.wait()
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.glob("*.qevm-stage"))


@pytest.mark.parametrize("note", [True, False])
def test_arm64_kdump(note, tmp_path):
    """arm64: 4 KiB frames with the kernel's VMCOREINFO, QEMU's 64 KiB without."""
    rec = json.loads((DATA / "vmcoreinfo" / "arm64-vmcoreinfo.json").read_text())
    out = tmp_path / "a.kdump"
    extra = [] if note else ["--no-vmcoreinfo"]
    _qevm("memory", unpack(DATA / "vmcoreinfo" / "arm64-vmcoreinfo.mig.xz"), "-o", out,
          "--format", "kdump-raw-zlib", *extra)  # fmt: skip
    kd = read(str(out))
    assert kd.machine == "aarch64"
    ps = kd.block_size
    assert ps == (4096 if note else 65536)
    # PHYS_OFFSET from VMCOREINFO, or (QEMU) the lowest RAM address: both 0x40000000 here
    assert kd.phys_base == 0x40000000
    assert (kd.vmcoreinfo == rec["text"].encode()) == note
    pages = {pfn: page for pfn, page, _, _ in kd.pages()}
    for load in rec["dump"]["loads"]:
        data = b"".join(
            pages[pa // ps]
            for pa in range(load["paddr"] // ps * ps, load["paddr"] + load["size"], ps)
        )
        skip = load["paddr"] % ps
        assert hashlib.sha256(data[skip : skip + load["size"]]).hexdigest() == load["sha256"]
