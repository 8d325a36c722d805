"""Which board's memory layout a stream gets, and saying so when it is guessed.

The board is chosen by the machine type and the CPU architecture the ``cpu``
section shows (LoongArch and Arm both call theirs ``virt``); where the stream
names no machine type (no configuration section) or the architecture cannot
be read (no description), the board's RAM blocks and chipset decide, with a
warning.  Truth: QEMU's ``info mtree -f`` of each VM (layouts/, generated/),
QEMU's dump-guest-memory (e_machine) and the registers written through
QEMU's gdbstub (notes/).
"""

from __future__ import annotations

import json
import struct

import pytest
from conftest import DATA, GENERATED, meta, pattern1m, unpack
from mtree import system_ranges
from test_memory import LAYOUTS, Elf, _norm, _region

import qevm
from qevm.cli import main
from qevm.stream import DescriptionRecord
from qevm.views.cpu import cpus
from qevm.views.memmap import layout
from qevm.views.notes import EM_LOONGARCH, target_for


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _matches_mtree(mm, mtree: str) -> None:
    truth = _norm([(s, e + 1, n, o) for s, e, n, o in system_ranges(mtree)])
    assert _norm([(r.gpa, r.end, _region(r.block), r.offset) for r in mm.ranges]) == truth


# -- streams without a configuration section: a PC, inferred --------------------------------


@pytest.mark.parametrize("name", ["pc-2.3-nofooter", "pc-2.2-nodesc", "pc-7.2-noconfig"])
def test_pc_without_configuration_is_inferred(name, tmp_path, capsys):
    path = unpack(GENERATED[name])
    desc = unpack(GENERATED["pc-2.2-desc"]) if name.endswith("nodesc") else None
    with qevm.open(path, index_ram=True, desc=desc) as mig:
        assert mig.machine is None
        mm = layout(mig)
    assert mm.family == "pc"
    _matches_mtree(mm, meta(GENERATED[name])["mtree"])
    (guess,) = mm.guesses
    assert "no machine type" in guess and "'pc.ram'" in guess and "I440FX" in guess
    args = ["--desc", desc] if desc else []
    rc, _, err = _cli(capsys, "memory", path, *args, "-o", tmp_path / "c.elf")
    assert rc == 0 and "warning: layout guessed: no machine type" in err
    want = pattern1m()[: meta(GENERATED[name])["pattern_bytes"]]
    elf = Elf(tmp_path / "c.elf")
    try:
        assert elf.machine == 3  # EM_386: the paused guest is in real mode
        assert elf.read(0x1000000, len(want)) == want
    finally:
        elf.close()


# -- LoongArch virt ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,why",
    [
        ("loongarch64-virt", "ACPI SRAT: high RAM at 0x80000000"),
        ("loongarch64-virt-noacpi", "cpu section version 3: QEMU 9.1 or newer"),
        ("loongarch64-virt-7.2", "16 KiB target pages: QEMU 8.1 or older"),
    ],
)
def test_loongarch_virt_by_architecture(name, why):
    """Chosen by the CPU (the 7.2 VM's RAM is a memory backend: no board block name);
    where the high RAM is comes from ACPI, else from what tells QEMU versions apart."""
    with qevm.open(unpack(LAYOUTS[name]), index_ram=True) as mig:
        mm = layout(mig)
        target, _ = target_for(mig)
    assert mm.family == "loongarch virt" and not mm.guesses
    assert any(why in r.source for r in mm.ranges)
    assert target.machine == EM_LOONGARCH
    _matches_mtree(mm, meta(LAYOUTS[name])["mtree"])


def test_loongarch_virt_layout_guessed_between_qemu_8_2_and_9_0(tmp_path, capsys):
    """4 KiB pages, no ACPI, cpu section version 2 (as QEMU 8.2 and 9.0 write it): the
    high RAM window is assumed at 0x80000000, and that is said."""
    src = unpack(LAYOUTS["loongarch64-virt-noacpi"])
    data = bytearray(src.read_bytes())
    with qevm.open(src) as mig:
        rec = mig.device("cpu").record
    at = rec.offset + 5 + 1 + len(b"cpu") + 4  # type, id, idstr, instance -> version
    assert struct.unpack_from(">I", data, at) == (3,)
    struct.pack_into(">I", data, at, 2)
    (tmp_path / "v2.mig").write_bytes(data)
    rc, out, err = _cli(capsys, "memmap", tmp_path / "v2.mig")
    assert rc == 0 and "0000000080000000-000000008fffffff" in out
    assert "warning: layout guessed: loongarch virt without ACPI tables" in err


def test_loongarch_registers_are_those_written_through_gdb():
    """QEMU 10.0's gdbstub wrote every register (gen_notes.py): qevm cpu reads them back."""
    from gen_notes import pattern

    path = DATA / "notes" / "loongarch64-virt-notes.mig.xz"
    written = json.loads((DATA / "notes" / "loongarch64-virt-notes.json").read_text())
    with qevm.open(unpack(path)) as mig:
        found = cpus(mig)
    assert [c.arch for c in found] == ["loongarch64", "loongarch64"]
    for c in found:
        for reg in written["registers_written"]:
            if reg in ("orig_a0", "badv", "fcsr") or reg.startswith("fcc"):
                # not state (orig_a0), not written by the stub (badv), kept masked (fcsr0,
                # the cf booleans)
                continue
            assert c.registers[reg] == pattern(c.index, reg, 64), (c.index, reg)
        assert all(c.registers[f"fcc{i}"] == 1 for i in range(8))


# -- virt without a description: the architecture is not known ----------------------------


def _without_description(path, out):
    """The stream with its JSON description record cut off (QEMU's suppress-vmdesc)."""
    with qevm.open(path) as mig:
        rec = next(r for r in mig.records if isinstance(r, DescriptionRecord))
    data = path.read_bytes()
    out.write_bytes(data[: rec.offset] + data[rec.end :])
    return out


@pytest.mark.parametrize(
    "name,board,block",
    [
        ("loongarch64-virt", "loongarch virt", "loongarch.ram"),
        ("riscv64-virt-numa", "riscv virt", "riscv_virt_board.mrom"),
        ("aarch64-virt-numa", "arm virt", None),  # "virt-7.2" is Arm's alone: no guess
    ],
)
def test_virt_without_description_is_guessed_from_its_blocks(name, board, block, tmp_path):
    path = _without_description(unpack(LAYOUTS[name]), tmp_path / "nodesc.mig")
    with qevm.open(path, index_ram=True) as mig:
        assert mig.description is None
        mm = layout(mig)
    assert mm.family == board
    if block is None:
        assert not mm.guesses
    else:
        (guess,) = mm.guesses
        assert "CPU architecture unknown" in guess and repr(block) in guess
    _matches_mtree(mm, meta(LAYOUTS[name])["mtree"])


def test_loongarch_16k_pages_found_from_a_pipe(capsys):
    """Read once from the xz file, no description before the RAM: the page size comes
    from the distance between zero pages (QEMU 7.2's LoongArch pages are 16 KiB)."""
    from qevm.source import open_source
    from qevm.views.core import layout_streamed

    src = open_source(LAYOUTS["loongarch64-virt-7.2"])
    assert not src.seekable
    mm = layout_streamed(src)
    _matches_mtree(mm, meta(LAYOUTS["loongarch64-virt-7.2"])["mtree"])
    rc, out, _ = _cli(capsys, "info", LAYOUTS["loongarch64-virt-7.2"])
    assert rc == 0 and "page size     16384" in out
