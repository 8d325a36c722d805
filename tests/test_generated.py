"""Streams of old machine types and switched-off options (made by tests/gen_streams.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import GENERATED, meta, pattern1m, unpack
from test_framing import check_node_tiles

import qevm
from qevm.errors import DescriptionError


def _pattern(name: str) -> bytes:
    return pattern1m()[: meta(GENERATED[name])["pattern_bytes"]]


@pytest.mark.parametrize("name", ["pc-2.3-nofooter", "pc-7.2-noconfig"])
def test_no_footers_decodes_with_the_description_from_the_end(name):
    with qevm.open(unpack(GENERATED[name]), index_ram=True) as mig:
        assert mig.footers is False
        assert mig.configuration is None
        for dev in mig.devices():
            assert dev.state is not None, dev.name
            check_node_tiles(dev.state)
            assert dev.state.size == dev.record.body_size
        want = _pattern(name)
        assert mig.page_index.read("pc.ram", 0x1000000, len(want)) == want


@pytest.mark.parametrize("name", ["pc-2.3-nofooter", "pc-7.2-noconfig"])
def test_no_footers_from_a_pipe(name):
    path = unpack(GENERATED[name])
    ref = subprocess.run(
        [sys.executable, "-m", "qevm", "state", "--json", str(path)], capture_output=True
    )
    with open(path, "rb") as f:
        piped = subprocess.run(
            [sys.executable, "-m", "qevm", "state", "--json", "-"], stdin=f, capture_output=True
        )
    assert ref.returncode == 0 and piped.returncode == 0, piped.stderr
    assert piped.stdout == ref.stdout


def test_no_description_needs_desc():
    path = unpack(GENERATED["pc-2.2-nodesc"])
    with pytest.raises(DescriptionError, match="--desc") as e:
        qevm.open(path)
    assert e.value.offset is not None and e.value.section == "timer"


def test_desc_from_another_stream_of_the_same_machine():
    path = unpack(GENERATED["pc-2.2-nodesc"])
    other = unpack(GENERATED["pc-2.2-desc"])
    with qevm.open(path, desc=other) as mig, qevm.open(other) as ref:
        assert not mig.has_description and mig.description is not None
        got = [(d.name, d.instance_id, d.record.body_size) for d in mig.devices()]
        want = [(d.name, d.instance_id, d.record.body_size) for d in ref.devices()]
        assert got == want
        for dev in mig.devices():
            check_node_tiles(dev.state)


def test_desc_from_saved_qevm_desc_output(tmp_path):
    other = unpack(GENERATED["pc-2.2-desc"])
    out = subprocess.run([sys.executable, "-m", "qevm", "desc", str(other)], capture_output=True)
    assert out.returncode == 0
    saved = tmp_path / "desc.json"
    saved.write_bytes(out.stdout)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "qevm",
            "state",
            "--json",
            "--desc",
            str(saved),
            str(unpack(GENERATED["pc-2.2-nodesc"])),
        ],
        capture_output=True,
    )
    assert res.returncode == 0, res.stderr
    assert b'"opaque"' not in res.stdout


def test_block_migration_and_dirty_bitmap_sections():
    with qevm.open(unpack(GENERATED["pc-7.2-block-bitmap"])) as mig:
        block = next(e for e in mig.entries.values() if e.idstr == "block")
        bitmap = next(e for e in mig.entries.values() if e.idstr == "dirty-bitmap")
        # the 2 MiB disk goes as two 1 MiB chunks, data or zero
        chunks = sum(
            sum(r.content["blocks"].values()) + sum(r.content["zero_blocks"].values())
            for r in block.records
        )
        assert chunks == 2
        kinds = [c["kind"] for r in bitmap.records for c in r.content["chunks"]]
        assert kinds[0] == "start" and kinds[-1] == "complete"
        start = bitmap.records[0].content["chunks"][0]
        assert (start["node"], start["bitmap"], start["granularity"]) == ("disk0", "bm0", 65536)
        advise = [c for c in mig.commands() if c.name == "POSTCOPY_ADVISE"]
        assert advise and advise[0].info == {"ram": False}


def test_description_page_size_must_agree_with_the_ram_read(tmp_path):
    """Without a configuration section a pipe's RAM is read with an assumed page size;
    a description that says otherwise is refused, not silently believed."""
    data = unpack(GENERATED["pc-7.2-noconfig"]).read_bytes()
    assert data.count(b'"page_size": 4096') == 1
    bad = tmp_path / "bad.mig"
    bad.write_bytes(data.replace(b'"page_size": 4096', b'"page_size": 8192'))
    with open(bad, "rb") as f:
        res = subprocess.run(
            [sys.executable, "-m", "qevm", "state", "--json", "-"],
            stdin=f,
            capture_output=True,
            text=True,
        )
    assert res.returncode == 1  # the devices are there, the description is refused
    assert "page size" in res.stderr and "offset" in res.stderr
