"""Keep going: one section that cannot be read does not hide the others.

Real streams (q35-11.1, and the pc stream of tests/data/robust) are damaged
the ways broken files are: a device section that does not decode in the
middle, a section header that is garbage, a cut inside the device sections.
What can be read must come out exactly as from the intact stream, the
damaged part marked with its error, and the exit status says it was partial.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import LIVE, STREAMS, unpack
from test_framing import check_records_tile

import qevm
from qevm.render import native
from qevm.sections.ram.section import last_named_block
from qevm.stream import BrokenRecord

NAME = "q35-11.1"


def _qevm(*args: object, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qevm", *map(str, args)], input=stdin, capture_output=True
    )


@pytest.fixture(scope="module")
def intact():
    """The stream's bytes, its state as JSON, and its device sections."""
    path = unpack(STREAMS[NAME])
    res = _qevm("state", "--json", path)
    assert res.returncode == 0
    with qevm.open(path) as mig:
        devices = [
            (d.entry.label, d.record.offset, d.record.body_offset, d.record.end, d.state)
            for d in mig.devices()
        ]
    return path.read_bytes(), json.loads(res.stdout), devices


def _by_label(state: dict) -> dict[str, dict]:
    return {
        f"{d['name']}#{d['instance_id']}" if d["instance_id"] else d["name"]: d
        for d in state["devices"]
    }


def _broken_subsection(devices) -> tuple[str, int]:
    """A device in the middle whose state has a subsection: its label and marker offset."""
    middle = devices[len(devices) // 3 :]
    for label, _, _, _, st in middle:
        for node in st.walk():
            if node.subsections:
                return label, node.subsections[0].offset
    raise AssertionError("no device with a subsection")


def _run_both(path, data: bytes, *opts: object) -> list[dict]:
    """``state --json`` of a file and of the same bytes through a pipe (must agree)."""
    out = []
    for args, stdin in (((path,), None), (("-",), data)):
        res = _qevm("state", "--json", *opts, *args, stdin=stdin)
        assert res.returncode == 1, res.stderr
        state = json.loads(res.stdout)
        errors = res.stderr.decode().strip().splitlines()
        assert [f"qevm: error: {e['message']}" for e in state["errors"]] == errors
        out.append(state)
    assert out[0] == out[1]
    return out


def test_a_section_that_does_not_decode(tmp_path, intact):
    data, ref, devices = intact
    label, marker = _broken_subsection(devices)
    assert data[marker] == 0x05  # QEMU_VM_SUBSECTION
    bad = bytearray(data)
    bad[marker] = 0x06
    p = tmp_path / "bad.mig"
    p.write_bytes(bad)
    with pytest.raises(qevm.FormatError, match="where subsection") as e:
        qevm.open(p).close()
    assert e.value.offset == marker and e.value.section == label
    with qevm.open(p, strict=False) as mig:
        check_records_tile(mig.records, 0, len(bad))
        assert [e.section for e in mig.errors] == [label]
        failed = [d for d in mig.devices() if d.error is not None]
        assert [d.entry.label for d in failed] == [label]
        assert failed[0].record.footer  # resumed right after its own footer
    state, _ = _run_both(p, bytes(bad))
    got, want = _by_label(state), _by_label(ref)
    assert list(got) == list(want)
    assert "error" in got[label] and "fields" not in got[label]
    for k in want:
        if k != label:
            assert got[k] == want[k], k
    assert state["live_sections"] == ref["live_sections"]
    # the text tree marks it too, and the other commands go on
    text = _qevm("state", p)
    assert text.returncode == 1 and b"  error: at offset" in text.stdout
    assert _qevm("cpu", p).returncode == 1
    info = json.loads(_qevm("info", "--json", p).stdout)
    assert [s["name"] for s in info["sections"] if "error" in s] == [label.split("#")[0]]


def test_a_garbage_section_header(tmp_path, intact):
    data, ref, devices = intact
    i = len(devices) // 2
    label, off, _, end, _ = devices[i]
    bad = bytearray(data)
    bad[off] = 0x09  # no record type
    p = tmp_path / "bad.mig"
    p.write_bytes(bad)
    with qevm.open(p, strict=False) as mig:
        check_records_tile(mig.records, 0, len(bad))
        broken = [r for r in mig.records if isinstance(r, BrokenRecord)]
        assert [(r.offset, r.end) for r in broken] == [(off, end)]
        assert len(mig.errors) == 1 and mig.errors[0].offset == off
    state, _ = _run_both(p, bytes(bad))
    got, want = _by_label(state), _by_label(ref)
    assert list(got) == [k for k in want if k != label]
    assert all(got[k] == want[k] for k in got)


def test_a_cut_inside_the_device_sections(tmp_path, intact):
    data, ref, devices = intact
    i = 2 * len(devices) // 3
    label, _, body, end, _ = devices[i]
    cut = data[: (body + end) // 2]
    p = tmp_path / "cut.mig"
    p.write_bytes(cut)
    with qevm.open(p, strict=False) as mig:
        check_records_tile(mig.records, 0, len(cut))
        assert len(mig.errors) == 1 and "input ends" in str(mig.errors[0])
        assert mig.errors[0].section == label
    # The description went with the end: the sections are delimited, not decoded...
    state, _ = _run_both(p, cut)
    got, want = _by_label(state), _by_label(ref)
    before = list(want)[:i]
    assert list(got) == [*before, label]
    for k in before:
        assert got[k]["opaque"] and got[k]["size"] == want[k]["size"], k
    assert "input ends" in got[label]["error"]
    assert state["live_sections"] == ref["live_sections"]
    # ...unless one is given: that of the intact stream (the same QEMU and machine)
    desc = tmp_path / "desc.json"
    desc.write_bytes(_qevm("desc", unpack(STREAMS[NAME])).stdout)
    state, _ = _run_both(p, cut, "--desc", desc)
    got = _by_label(state)
    assert list(got) == [*before, label]
    assert all(got[k] == want[k] for k in before)
    assert "input ends" in got[label]["error"]
    # RAM was complete: extract still writes every block, and says the result is partial
    out = tmp_path / "x"
    res = _qevm("extract", p, "-o", out)
    assert res.returncode == 1 and b"input ends" in res.stderr
    assert (out / "pc.ram").stat().st_size > 0


def test_nothing_usable_is_exit_2(tmp_path, intact):
    data, _, _ = intact
    p = tmp_path / "bad.mig"
    p.write_bytes(data[:8] + b"\x09" * 64)
    res = _qevm("info", p)
    assert res.returncode == 2 and b"unknown record type 0x09" in res.stderr


def test_a_broken_ram_part(tmp_path):
    """A RAM record with impossible flags in one PART: the other PARTs are read as in the
    intact stream, the device sections too, and no page goes to a wrong block."""
    path = unpack(LIVE["xbzrle-111"])
    data = path.read_bytes()
    with qevm.open(path) as mig:
        ram = next(e for e in mig.entries.values() if e.idstr == "ram")
        parts = [r for r in ram.records if r.type_name == "PART"]
        want = [(r.offset, dict(r.content.records)) for r in ram.records]
        want_devices = [(d.entry.label, native.node_json(d.state)) for d in mig.devices()]
    bad_part = parts[2]
    bad = bytearray(data)
    bad[bad_part.body_offset + 7] |= 0x80  # flags of its first record: no such kind
    p = tmp_path / "bad.mig"
    p.write_bytes(bad)
    with qevm.open(p, strict=False) as mig:
        check_records_tile(mig.records, 0, len(bad))
        assert [(e.offset, e.section) for e in mig.errors] == [(bad_part.body_offset, "ram")]
        ram = next(e for e in mig.entries.values() if e.idstr == "ram")
        got = [
            (r.offset, dict(r.content.records) if r.error is None else None) for r in ram.records
        ]
        assert got == [(o, None if o == bad_part.offset else c) for o, c in want]
        assert [(d.entry.label, native.node_json(d.state)) for d in mig.devices()] == want_devices
    res = _qevm("info", p)
    assert res.returncode == 1 and b"ERROR" in res.stdout


@pytest.mark.parametrize("name", ["q35-11.1", "pc-devices-7.2", "s390x-11.1"])
def test_block_in_effect_after_skipped_ram_records(name):
    """After a gap, CONTINUE pages belong to the block the last named record in the
    skipped bytes named: found by searching them, it is what reading them gives."""
    with qevm.open(unpack(STREAMS[name])) as mig:
        ram = next(e for e in mig.entries.values() if e.idstr == "ram")
        part = max((r for r in ram.records if r.type_name == "PART"), key=lambda r: r.body_size)
        read = ram.state.last  # END holds no pages here: the last block PART named
        assert all(not r.content.records.get("page") for r in ram.records if r.offset > part.offset)
        found = last_named_block(ram.state, mig.source, part.body_offset, part.body_end)
        assert found is read and found is not None
        # and nothing before the first named record
        first = part.body_offset + 8 + 1 + len(ram.state.blocks[next(iter(ram.state.blocks))].name)
        assert last_named_block(ram.state, mig.source, part.body_offset + 1, first - 8) is None
