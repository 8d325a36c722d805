"""RAM: every encoding decodes; block files equal the reference; patterns and live RAM match."""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import struct
import subprocess
import sys

import pytest
from conftest import DATA, LIVE, STREAMS, expected, meta, pattern1m, unpack
from mtree import block_at, loaded_patterns

import qevm
from qevm.cli import main as cli_main
from qevm.ramio import block_path, block_paths
from qevm.stream import EofRecord

WITH_BLOCKS = sorted(n for n in STREAMS if expected(n, "blocks"))
WITH_PATTERN = sorted(n for n in STREAMS if loaded_patterns(meta(STREAMS[n])["argv"]))
LIVE_TRUTH = sorted(n for n in LIVE if (DATA / "live" / f"{n}.pmem-sha256.json").exists())


def _sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def pattern_bytes(name: str) -> bytes:
    if name == "pattern1m.bin":
        return pattern1m()
    return (DATA / "patterns" / name).read_bytes()


@pytest.mark.parametrize("name", WITH_BLOCKS)
def test_extracted_blocks_equal_reference(name, tmp_path):
    ref = json.loads(lzma.decompress(expected(name, "blocks").read_bytes()))
    assert cli_main(["extract", str(unpack(STREAMS[name])), "-o", str(tmp_path)]) == 0
    for block, want in ref.items():
        p = tmp_path / block
        assert p.stat().st_size == want["size"], block
        assert _sha(p) == want["sha256"], block


@pytest.mark.parametrize("name", WITH_PATTERN)
def test_pattern_at_its_address(name):
    m = meta(STREAMS[name])
    with qevm.open(unpack(STREAMS[name]), index_ram=True, decode_devices=False) as mig:
        in_stream = {b.name: b.in_stream for b in mig.ram_blocks}
        for fname, gpa in loaded_patterns(m["argv"]):
            block, off = block_at(m["mtree"], gpa)
            if not in_stream[block]:
                # x-ignore-shared: the guest RAM lives in shared memory, not the stream
                assert "x-ignore-shared" in mig.capabilities, (name, block)
                continue
            want = pattern_bytes(fname)
            assert mig.page_index.read(block, off, len(want)) == want, (name, block, hex(off))


def _channels(name: str) -> list[str]:
    folder = LIVE[name].parent
    return [str(unpack(p)) for p in sorted(folder.glob(f"{name}.ch*.bin.xz"))]


@pytest.mark.parametrize("name", LIVE_TRUTH)
def test_live_ram_equals_destination(name):
    truth = json.loads((DATA / "live" / f"{name}.pmem-sha256.json").read_text())
    lo, hi = truth["zeroed"]
    step = truth["chunk_size"]
    with qevm.open(
        unpack(LIVE[name]), index_ram=True, channels=_channels(name), decode_devices=False
    ) as mig:
        assert not mig.missing_pages()
        for i, digest in enumerate(truth["sha256"]):
            data = bytearray(mig.page_index.read("pc.ram", i * step, step))
            if i * step < hi and lo < (i + 1) * step:
                data[max(lo - i * step, 0) : min(hi - i * step, step)] = bytes(
                    min(hi - i * step, step) - max(lo - i * step, 0)
                )
            assert hashlib.sha256(data).hexdigest() == digest, (name, f"MiB {i}")


def test_multifd_without_channels_reports_missing_pages(capsys):
    path = unpack(LIVE["multifd-111"])
    with qevm.open(path, index_ram=True, decode_devices=False) as mig:
        missing = mig.missing_pages()
    assert missing.get("pc.ram") == 65536
    assert cli_main(["ram", str(path), "--json"]) == 0
    pcram = next(b for b in json.loads(capsys.readouterr().out)["blocks"] if b["name"] == "pc.ram")
    assert pcram["missing_ranges"] == [[0, 0x10000000]]


def test_encodings_are_seen():
    seen = {}
    for name in ("q35-compress-7.2", "q35-ignore-shared-7.2", "q35-mapped-ram-multifd-11.1"):
        with qevm.open(unpack(STREAMS[name]), decode_devices=False) as mig:
            seen[name] = {k for b in mig.ram_blocks for k, v in b.records.items() if v}
            if name == "q35-ignore-shared-7.2":
                # the guest RAM is memory-backend-file id=m0, share=on
                assert [b.name for b in mig.ram_blocks if not b.in_stream] == ["m0"]
                assert all(b.mr_addr is not None for b in mig.ram_blocks)
            if name == "q35-mapped-ram-multifd-11.1":
                assert all(b.mapped is not None for b in mig.ram_blocks)
    for name in ("xbzrle-111", "compress-72"):
        with qevm.open(unpack(LIVE[name]), decode_devices=False) as mig:
            seen[name] = {k for b in mig.ram_blocks for k, v in b.records.items() if v}
    assert "zlib" in seen["q35-compress-7.2"] and "zlib" in seen["compress-72"]
    assert "xbzrle" in seen["xbzrle-111"]
    assert seen["q35-mapped-ram-multifd-11.1"] >= {"page", "zero"}


@pytest.mark.parametrize(
    "name", ["xbzrle-111", "compress-72", "multifd-111", "q35-mapped-ram-11.1", "q35-11.1"]
)
def test_page_runs_cover_every_page_as_read_page_sees_it(name):
    """PageIndex.runs() against the page-by-page view of the same index."""
    path = unpack(LIVE[name] if name in LIVE else STREAMS[name])
    chans = _channels(name) if name in LIVE else []
    with qevm.open(path, index_ram=True, channels=chans, decode_devices=False) as mig:
        index = mig.page_index
        ps = index.page_size
        for b in mig.ram_blocks:
            if not b.in_stream:
                continue
            runs = list(index.runs(b.name))
            assert [r.first for r in runs] == [0] + [r.first + r.count for r in runs[:-1]]
            assert sum(r.count for r in runs) == -(-b.used_length // ps)
            kinds = {k: sum(r.count for r in runs if r.kind == k) for k in ("zero", "data")}
            counts = index.encoding_counts(b.name)
            assert kinds == {"zero": counts["zero"], "data": counts["page"]}, b.name
            for r in runs:
                if r.kind == "data":  # every page of the run where the run says it is
                    for i in range(r.count):
                        got = bytes(index.inputs[r.input].read_at(r.offset + i * r.stride, ps))
                        assert got == index.read_page(b.name, r.first + i), (b.name, r.first + i)
                elif r.kind in ("zero", "absent"):
                    assert index.read_page(b.name, r.first) == bytes(ps)


@pytest.mark.parametrize("name", ["xbzrle-111", "compress-72", "postcopy-paused-111"])
def test_pipe_extraction_equals_file_extraction(name, tmp_path):
    path = unpack(LIVE[name])
    a, b = tmp_path / "file", tmp_path / "pipe"
    assert cli_main(["extract", str(path), "-o", str(a)]) == 0
    with open(path, "rb") as f:
        res = subprocess.run(
            [sys.executable, "-m", "qevm", "extract", "-", "-o", str(b)],
            stdin=f,
            capture_output=True,
            text=True,
        )
    assert res.returncode == 0, res.stderr
    files_a = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    files_b = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert _sha(a / rel) == _sha(b / rel), rel


# Committed streams, plus two more when the corpus is there, and containers.
ONE_PASS = [
    ("live", "xbzrle-111", None),
    ("live", "compress-72", None),
    ("live", "postcopy-paused-111", None),
    ("streams", "q35-mapped-ram-multifd-11.1", None),
    ("streams", "q35-ignore-shared-7.2", None),
    ("streams", "ppc64-pseries-11.1", None),
    ("data", "libvirt/save-sparse.img.xz", None),
    ("data", "streams/savevm-11.1.qcow2.xz", "snap1"),
    ("data", "streams/savevm-11.1.qcow2.xz", "snap2"),
] + [
    (kind, name, None)
    for kind, name in (("live", "multipass-111"), ("streams", "q35-mapped-ram-11.1"))
    if name in (LIVE if kind == "live" else STREAMS)
]


@pytest.mark.parametrize("kind,name,snapshot", ONE_PASS)
def test_one_pass_extraction_equals_page_index(kind, name, snapshot, tmp_path, capsys):
    """extract writes pages as it reads them; the page index is the other way."""
    path = unpack({"live": LIVE, "streams": STREAMS}[kind][name] if kind != "data" else DATA / name)
    args = ["--snapshot", snapshot] if snapshot else []
    assert cli_main(["extract", str(path), "-o", str(tmp_path), *args]) == 0
    listed = capsys.readouterr().out.splitlines()
    with qevm.open(path, index_ram=True, decode_devices=False, snapshot=snapshot) as mig:
        index = mig.page_index
        rels = block_paths(b.name for b in mig.ram_blocks)
        for b in mig.ram_blocks:
            rel = rels[b.name][0]
            assert any(line.split("  (")[0] == rel for line in listed), rel
            with open(tmp_path / rel, "rb") as f:
                for off in range(0, b.used_length, 1 << 24):
                    n = min(1 << 24, b.used_length - off)
                    assert f.read(n) == index.read(b.name, off, n), (b.name, hex(off))


@pytest.mark.parametrize("name", ["q35-mapped-ram-multifd-11.1"])
def test_mapped_ram_from_a_pipe_equals_page_index(name, tmp_path):
    path = unpack(STREAMS[name])
    with open(path, "rb") as f:
        res = subprocess.run(
            [sys.executable, "-m", "qevm", "extract", "-", "-o", str(tmp_path)],
            stdin=f,
            capture_output=True,
        )
    assert res.returncode == 0, res.stderr
    with qevm.open(path, index_ram=True, decode_devices=False) as mig:
        assert any(b.mapped is not None for b in mig.ram_blocks)
        rels = block_paths(b.name for b in mig.ram_blocks)
        for b in mig.ram_blocks:
            data = (tmp_path / rels[b.name][0]).read_bytes()
            assert data == mig.page_index.read(b.name, 0, b.used_length), b.name


def _append_ram_pass(stream: bytes, eof: int, section: int, block: str, records: list) -> bytes:
    """``stream`` with one more RAM section (footer included) just before its EOF."""
    body = bytearray()
    for i, (page, data) in enumerate(records):
        flags = (0x08 if data else 0x02) | (0x20 if i else 0)
        body += struct.pack(">Q", page * 4096 | flags)
        if not i:
            body += bytes([len(block)]) + block.encode()
        body += data if data else b"\x00"
    body += struct.pack(">Q", 0x10)
    sid = struct.pack(">I", section)
    return stream[:eof] + b"\x02" + sid + body + b"\x7e" + sid + stream[eof:]


def test_pages_sent_again_end_with_their_last_content(tmp_path):
    """A later pass re-sends pages with new data, or as zero: the last copy wins."""
    src = unpack(STREAMS["riscv64-virt-11.1"])
    with qevm.open(src, index_ram=True) as mig:
        eof = next(r for r in mig.records if isinstance(r, EofRecord)).offset
        section = next(e.section_id for e in mig.entries.values() if e.idstr == "ram")
        block = "riscv_virt_board.ram"
        first, count = next((p, n) for p, n, *_ in mig.page_index.data_runs(block) if n > 200)
        before = mig.page_index.read(block, first * 4096, count * 4096)
    assert before.count(0) != len(before)
    # one zero page, one new page, then a run of zero records long enough to be
    # read vectorised (pages that held data), then new data again
    new = bytes(range(256)) * 16
    records = [(first + 3, b""), (first + 4, new)]
    records += [(first + 10 + i, b"") for i in range(150)]
    records += [(first + 20, new[::-1])]
    path = tmp_path / "resent.mig"
    path.write_bytes(_append_ram_pass(src.read_bytes(), eof, section, block, records))

    want = bytearray(before)
    for page, data in records:
        want[(page - first) * 4096 : (page - first + 1) * 4096] = data or bytes(4096)

    with qevm.open(path, index_ram=True) as mig:
        assert mig.page_index.read(block, first * 4096, count * 4096) == want
    out = tmp_path / "file"
    assert cli_main(["extract", str(path), "-o", str(out)]) == 0
    with open(path, "rb") as f:
        res = subprocess.run(
            [sys.executable, "-m", "qevm", "extract", "-", "-o", str(tmp_path / "pipe")],
            stdin=f,
            capture_output=True,
        )
    assert res.returncode == 0, res.stderr
    for d in (out, tmp_path / "pipe"):
        with open(d / block, "rb") as f:
            f.seek(first * 4096)
            assert f.read(count * 4096) == want, d


def test_block_paths_stay_inside():
    assert block_path("pc.ram") == ("pc.ram", False)
    assert block_path("/rom@etc/acpi/tables") == ("rom@etc/acpi/tables", False)
    assert block_path("0000:00:02.0/vga.vram") == ("0000:00:02.0/vga.vram", False)
    for bad in ("../../etc/passwd", "a/../../b", "/", "x\x00y", "..", "./."):
        rel, rewritten = block_path(bad)
        assert rewritten
        assert not os.path.isabs(rel) and ".." not in rel.split("/") and "\x00" not in rel
    paths = block_paths(["a", "a/b", "a"])
    assert len({p for p, _ in paths.values()}) == 2


def test_ram_command_hexdump_and_json(capsys):
    path = str(unpack(STREAMS["q35-11.1"]))
    assert cli_main(["ram", path, "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    pcram = next(b for b in j["blocks"] if b["name"] == "pc.ram")
    assert sum(pcram["pages"].values()) == pcram["size"] // 4096
    assert (
        cli_main(["ram", path, "--block", "pc.ram", "--offset", "0x1000000", "--length", "64"]) == 0
    )
    out = capsys.readouterr().out
    want = pattern1m()[:16].hex(" ")
    assert want[:23] in out
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "qevm",
            "ram",
            path,
            "--block",
            "pc.ram",
            "--offset",
            "0x1000000",
            "--length",
            "0x100000",
            "--raw",
        ],
        capture_output=True,
    )
    assert res.returncode == 0 and res.stdout == pattern1m()
