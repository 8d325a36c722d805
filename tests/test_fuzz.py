"""The fuzzer (bench/fuzz.py) on a short fixed budget, and its findings as regression tests.

Every finding of a campaign is rebuilt here from a committed stream by the
mutation recorded for it, and must now end as qevm's own clean error (or a
result), not as an internal error.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
from conftest import DATA, cli, unpack

from qevm.stream import DescriptionRecord

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _clean(rc: int, err: str) -> None:
    assert rc in (0, 1, 2), err
    assert "internal error" not in err and "Traceback" not in err, err


def with_description(src: Path, out: Path, edit) -> Path:
    """``src`` with its JSON description changed by ``edit(doc)`` (its length rewritten)."""
    import qevm

    with qevm.open(src, decode_devices=False) as mig:
        rec = next(r for r in mig.records if isinstance(r, DescriptionRecord))
    data = src.read_bytes()
    doc = json.loads(data[rec.offset + 5 : rec.end])
    edit(doc)
    text = json.dumps(doc).encode()
    out.write_bytes(data[: rec.offset + 1] + struct.pack(">I", len(text)) + text + data[rec.end :])
    return out


# -- findings -----------------------------------------------------------------------------

S390 = DATA / "notes" / "s390x-notes.mig.xz"
RISCV = DATA / "notes" / "riscv64-virt-notes.mig.xz"
AARCH64_SVE = DATA / "notes" / "aarch64-max-sve-notes.mig.xz"


def _cpu_field(doc: dict, instance: int, sub: int, field: int) -> dict:
    dev = [d for d in doc["devices"] if d["name"] == "cpu"][instance]
    return dev["subsections"][sub]["fields"][field]


@pytest.mark.parametrize(
    "instance,field,key,value",
    [
        (0, 7, "type", "bitmap"),  # seed 1 case 523: a uint64 vector half read as a bitmap
        (1, 24, "type", "../x"),  # case 793: an unknown type, read as opaque bytes
        (0, 7, "type", "int32"),  # case 1521: a narrower integer
    ],
)
def test_cpu_fields_of_other_types(instance, field, key, value, tmp_path, capsys):
    """A description whose 'cpu' fields have other types than the architecture's VMSD:
    the registers cannot be read (a DescriptionError), the memory still can."""

    def edit(doc):
        _cpu_field(doc, instance, 1, field)[key] = value

    path = with_description(unpack(S390), tmp_path / "m.mig", edit)
    rc, _, err = cli(capsys, "memory", path, "-o", tmp_path / "c.elf")
    _clean(rc, err)
    assert rc == 0 and "no CPU notes" in err and "does not have the fields of a s390x CPU" in err
    rc, _, err = cli(capsys, "cpu", path)
    assert rc == 2 and "does not have the fields of a s390x CPU" in err


def test_corrupt_gzip_inside_a_libvirt_image(tmp_path, capsys):
    """Seed 1 case 1076: bits flipped in the gzip data of a libvirt image made zlib
    raise its own error (not OSError), which escaped as an internal error."""
    img = bytearray((DATA / "libvirt" / "save-gzip.img").read_bytes())
    (data_len,) = struct.unpack_from("<I", img, 20)
    img[92 + data_len + 100] ^= 0xFF  # inside the first deflate block's code lengths
    (tmp_path / "bad.img").write_bytes(img)
    for cmd in ("info", "state", "ram"):
        rc, _, err = cli(capsys, cmd, tmp_path / "bad.img")
        assert rc == 2 and "gzip data is corrupt or truncated: Error -3" in err, err


def test_ram_block_with_an_empty_name(tmp_path, capsys):
    """Seed 7 case 64: the RAM block renamed to '' everywhere: the block list cannot be
    read, and ``ram`` ended with "RAM was not indexed" (an index was asked for but no
    page record made one)."""
    data = unpack(S390).read_bytes().replace(b"\x08s390.ram", b"\x00")
    (tmp_path / "e.mig").write_bytes(data)
    rc, _, err = cli(capsys, "ram", tmp_path / "e.mig")
    assert rc == 1 and "empty RAM block name" in err and "not indexed" not in err


def test_page_flags_beyond_the_first_guess_of_the_page_size(tmp_path, capsys):
    """Seed 2026 case 54249: a bit flipped above the flags of the first RAM page record
    (ZERO of s390.ram, 0x2 -> 0x802) of a stream whose page size nothing states (its
    description, which would, broken by a second flip).  The flags were first masked
    with the known flag bits (ZERO), then again once the page size was found, and
    0x802 named no record kind: KeyError in every command.  Now it is an unknown
    record, as QEMU says ("Unknown combination of migration flags")."""
    sys.path.insert(0, str(BENCH))
    try:
        from fuzz_seeds import shrink  # the fuzzer's seed: long runs of CONTINUE records cut
    finally:
        sys.path.remove(str(BENCH))
    data = bytearray(shrink(unpack(S390).read_bytes(), tmp_path / "seed.mig"))
    at = data.index(b"\x08s390.ram", 0x40) - 8  # the first page record's address word
    assert struct.unpack_from(">Q", data, at)[0] == 0x2  # ZERO, address 0
    struct.pack_into(">Q", data, at, 0x802)
    end = data.rindex(b"}")  # the description's last byte: the JSON no longer parses
    assert end > len(data) - 8
    data[end] = ord("u")
    (tmp_path / "f.mig").write_bytes(data)
    for cmd in ("info", "state", "ram"):
        rc, _, err = cli(capsys, cmd, tmp_path / "f.mig")
        _clean(rc, err)
        assert rc in (1, 2) and "unknown RAM record flags 0x802" in err, err
    rc, _, err = cli(capsys, "extract", tmp_path / "f.mig", "-o", tmp_path / "out")
    _clean(rc, err)
    assert rc in (1, 2) and "unknown RAM record flags 0x802" in err


def test_array_of_no_elements(tmp_path, capsys):
    """Seed 2026 case 51987: a description whose array of uint64 had ``array_len`` 0
    (QEMU writes it only above 1).  The empty array passed the size check and its
    first element was looked at: IndexError in every command.  Now it is read as
    empty (as analyze-migration.py reads it), and the bytes it leaves are refused
    where they do not fit."""

    def edit(doc):
        cpu = next(d for d in doc["devices"] if d["name"] == "cpu")
        vfp = next(s for s in cpu["subsections"] if s["vmsd_name"] == "cpu/vfp")
        f = next(f for f in vfp["fields"] if f["name"] == "env.vfp.zregs[19].d")
        assert f["array_len"] > 1
        f["array_len"] = 0

    path = with_description(unpack(AARCH64_SVE), tmp_path / "a.mig", edit)
    for cmd in ("info", "state", "cpu"):
        rc, _, err = cli(capsys, cmd, path)
        _clean(rc, err)
        assert rc == 1 and "field 'cpu/" in err, err
    rc, _, err = cli(capsys, "memory", path, "-o", tmp_path / "c.elf")
    _clean(rc, err)


@pytest.mark.parametrize("where", [0.25, 0.5, 0.75])
def test_corrupt_zstd_is_read_once_up_to_the_damage(where, tmp_path):
    """Seed 7 case 93: a chunk of a zstd file repeated.  Each device section after the
    damage asked the failed decompressor again, each time with a new 32 MiB read-ahead
    buffer kept alive by the error: memory grew until the process died.  Now the first
    failure ends the input; under a 1.5 GiB address-space limit every command ends
    cleanly."""
    import subprocess

    import zstandard

    packed = zstandard.ZstdCompressor(level=3).compress(unpack(RISCV).read_bytes())
    at = int(len(packed) * where)
    (tmp_path / "z.mig").write_bytes(packed[: at + 0x1F2] + packed[at:])
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (1536 << 20,) * 2); "
    for cmd in ("info", "state", "ram"):
        code = limit + f"from qevm.cli import main; raise SystemExit(main(['{cmd}', 'z.mig']))"
        r = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert r.returncode in (1, 2), r.stderr[-2000:]
        assert "zstd data is corrupt or truncated" in r.stderr
        assert r.stderr.count("zstd data is corrupt") <= 3  # once, not once per section


# -- the fuzzer itself, on a short fixed budget ------------------------------------------------


def test_fuzz_short_campaign(tmp_path):
    """Cases of every mutation kind, deterministic with the seed: no finding.

    CI's budget; the long campaigns' figures are in bench/README.md.
    """
    sys.path.insert(0, str(BENCH))
    try:
        import fuzz
    finally:
        sys.path.remove(str(BENCH))
    rc = fuzz.main(["--cases", "84", "--seed", "7", "--jobs", "2", "--out", str(tmp_path)])
    state = json.loads((tmp_path / "state.json").read_text())
    findings = sorted(p.name for p in (tmp_path / "findings").glob("*")) if rc else []
    assert rc == 0, findings
    assert state["next_case"] == 84
    assert all(sum(c.values()) > 0 for c in state["counts"].values())
