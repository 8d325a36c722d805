"""qevm memory's per-CPU ELF notes against QEMU's own ``dump-guest-memory`` of the same VM.

The streams in ``tests/data/notes`` were made by ``gen_notes.py`` with QEMU
7.2: two CPUs whose registers were all written with distinct values through
QEMU's gdbstub, then QEMU's dump (summarised in ``NAME.json``: the PT_NOTE
bytes, the byte order, e_machine and the sha256 of every PT_LOAD) and the
migration, from the same paused VM.  qevm writes what QEMU 10.2 writes
(``target/*/arch_dump.c``); where QEMU 7.2 wrote something else the
difference is named in :data:`QEMU72_DIFFERENCES` and only that is allowed,
only for a QEMU older than 10.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import struct
from collections.abc import Callable

import pytest
from conftest import DATA
from test_memory import Elf

from qevm.views.core import write_core

NOTES_DIR = DATA / "notes"
STREAMS = {p.name[: -len(".mig.xz")]: p for p in sorted(NOTES_DIR.glob("*.mig.xz"))}

Note = tuple[bytes, int, bytes]


def parse_notes(blob: bytes, e: str) -> tuple[list[Note], int]:
    """The notes in ``blob`` (byte order ``e``) and how many bytes they take.

    Parsing stops at the first header that does not fit or names nothing.
    """
    out: list[Note] = []
    p = 0
    while p + 12 <= len(blob):
        nn, dn, ty = struct.unpack_from(e + "III", blob, p)
        if nn == 0 or p + 12 + -(-nn // 4) * 4 + dn > len(blob):
            break
        name = blob[p + 12 : p + 12 + nn].rstrip(b"\0")
        p += 12 + -(-nn // 4) * 4
        out.append((name, ty, blob[p : p + dn]))
        p += -(-dn // 4) * 4
    return out, p


# -- what QEMU 7.2 writes differently from 10.2 -----------------------------------------

#: Field sizes of the ppc64 notes (target/ppc/arch_dump.c), by note type: (count, size).
PPC_FIELDS: dict[int, list[tuple[int, int]]] = {
    1: [(32, 1), (1, 4), (76, 1), (44, 8), (40, 1)],  # NT_PRSTATUS
    2: [(33, 8)],  # NT_PRFPREG
    0x100: [(32, 16), (12, 1), (1, 4), (16, 1)],  # NT_PPC_VMX
    0x102: [(32, 8)],  # NT_PPC_VSX
    0x101: [(32, 4), (1, 8), (1, 4)],  # NT_PPC_SPE
}


def _swap_fields(desc: bytes, fields: list[tuple[int, int]]) -> bytes:
    out = bytearray()
    p = 0
    for count, size in fields:
        for _ in range(count):
            out += desc[p : p + size][::-1]
            p += size
    assert p == len(desc)
    return bytes(out)


def _ppc_pid_zero(notes: list[Note], e: str, machine: int, big: bool) -> tuple[list[Note], bool]:
    """QEMU 7.2's ppc_write_elf_prstatus did not set pr_pid (10.2 sets the CPU index + 1)."""
    if machine != 21:
        return notes, big
    return [(n, t, d[:32] + bytes(4) + d[36:] if t == 1 else d) for n, t, d in notes], big


def _s390x_pid_host_order(
    notes: list[Note], e: str, machine: int, big: bool
) -> tuple[list[Note], bool]:
    """QEMU 7.2 stored the s390x pr_pid without cpu_to_be32: little-endian on x86 hosts."""
    if machine != 22:
        return notes, big
    fixed = []
    for n, t, d in notes:
        if n == b"CORE" and t == 1:
            d = d[:32] + d[32:36][::-1] + d[36:]
        fixed.append((n, t, d))
    return fixed, big


def _ppc_pseries_big_endian(
    notes: list[Note], e: str, machine: int, big: bool
) -> tuple[list[Note], bool]:
    """QEMU 7.2 picked the ppc64 dump byte order from HID0[HILE] on pseries too (the
    virtual hypervisor left MSR[HV] in the CPU's mask), so a guest with LPCR[ILE]
    (little-endian) was dumped big-endian; 10.2 uses LPCR[ILE].  Every field is
    byte-swapped, none moves."""
    if machine != 21 or big:
        return notes, big
    return [(n, t, _swap_fields(d, PPC_FIELDS[t])) for n, t, d in notes], True


#: Each is applied to qevm's notes (and byte order) only when QEMU's differ and QEMU < 10.
QEMU72_DIFFERENCES: list[Callable[[list[Note], str, int, bool], tuple[list[Note], bool]]] = [
    _ppc_pid_zero,
    _s390x_pid_host_order,
    _ppc_pseries_big_endian,
]


def _as_qemu72(notes: list[Note], e: str, machine: int) -> tuple[list[Note], bool]:
    big = e == ">"
    for diff in QEMU72_DIFFERENCES:
        notes, big = diff(notes, e, machine, big)
    return notes, big


# -- the comparison ---------------------------------------------------------------------


def compare_with_qemu(elf_path: pathlib.Path, dump: dict, qemu_version: dict) -> None:
    """qevm's ELF against QEMU's summarised dump: machine, byte order, notes, PT_LOADs."""
    ours = Elf(elf_path)
    try:
        assert ours.machine == dump["e_machine"]
        blob = bytes.fromhex(dump["notes"])
        q_e = ">" if dump["big_endian"] else "<"
        theirs, used = parse_notes(blob, q_e)
        notes = [(bytes(n), t, bytes(d)) for n, t, d in ours.notes]
        expected, big = notes, ours.e == ">"
        if (notes, big) != (theirs, dump["big_endian"]) and qemu_version["qemu"]["major"] < 10:
            expected, big = _as_qemu72(notes, ours.e, ours.machine)
        assert big == dump["big_endian"]
        assert len(expected) == len(theirs)
        for i, (a, b) in enumerate(zip(expected, theirs)):
            assert a == b, f"note {i} ({b[0]!r}, type {b[1]:#x})"
        # QEMU sizes PT_NOTE as CPUs x the first CPU's notes (cpu_get_note_size): with
        # a shorter SVE vector on a later CPU the rest of the segment is not notes
        assert used == len(blob) or _sized_by_first_cpu(theirs, blob)
        for load in dump["loads"]:
            h = hashlib.sha256()
            for o in range(0, load["size"], 1 << 24):
                h.update(ours.read(load["paddr"] + o, min(1 << 24, load["size"] - o)))
            # QEMU 7.2 wrote the memory right after the notes, not where its PT_LOADs
            # point when it reserved more note room than it used (gen_notes.summarise_elf)
            where = "sha256_written" if used != len(blob) else "sha256"
            assert h.hexdigest() == load[where], hex(load["paddr"])
    finally:
        ours.close()


def _sized_by_first_cpu(theirs: list[Note], blob: bytes) -> bool:
    """Whether ``blob`` is exactly (number of CPUs) x (bytes of the first CPU's notes)."""
    cpus = sum(1 for n, t, _ in theirs if n == b"CORE" and t == 1)
    per_cpu = theirs[: len(theirs) // cpus]
    first = sum(12 + -(-(len(n) + 1) // 4) * 4 + -(-len(d) // 4) * 4 for n, _, d in per_cpu)
    return len(blob) == cpus * first


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("notes")
    cache: dict[str, pathlib.Path] = {}

    def get(name: str) -> pathlib.Path:
        if name not in cache:
            cache[name] = root / f"{name}.elf"
            write_core(str(STREAMS[name]), cache[name])
        return cache[name]

    return get


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_notes_equal_qemu_dump(name, made):
    info = json.loads((NOTES_DIR / f"{name}.json").read_text())
    compare_with_qemu(made(name), info["dump"], info["qemu_version"])


def test_every_register_of_every_note_was_written():
    """The recipes put a distinct value in every register the notes carry."""
    assert set(STREAMS) == {
        "ppc64-pseries-notes",
        "ppc64le-pseries-notes",
        "s390x-notes",
        "riscv64-virt-notes",
        "aarch64-max-sve-notes",
        "loongarch64-virt-notes",
    }
    written = json.loads((NOTES_DIR / "aarch64-max-sve-notes.json").read_text())
    assert {"x0", "sp", "pc", "cpsr", "z31", "p15", "ffr", "fpsr", "fpcr"} <= set(
        written["registers_written"]
    )
    written = json.loads((NOTES_DIR / "loongarch64-virt-notes.json").read_text())
    assert {"r1", "r31", "badv", "f0", "f31", "fcc0", "fcc7", "fcsr"} <= set(
        written["registers_written"]
    )


@pytest.mark.qemu
@pytest.mark.parametrize("name", ["ppc64le-pseries-notes", "s390x-notes", "aarch64-max-sve-notes"])
def test_live_notes_equal_qemu_dump(name, tmp_path):
    """Made again with the installed QEMU: its dump and qevm's notes of the stream agree."""
    import gen_notes

    binary = gen_notes.RECIPES[name].binary
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed")
    stream = gen_notes.make(name, tmp_path)
    info = json.loads((tmp_path / f"{name}.json").read_text())
    write_core(str(stream), tmp_path / "c.elf")
    compare_with_qemu(tmp_path / "c.elf", info["dump"], info["qemu_version"])
