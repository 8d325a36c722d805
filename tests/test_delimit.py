"""Where device sections end, and errors that name the right place.

The streams are in tests/data/robust (made by tests/gen_robust.py with QEMU 7.2).
"""

from __future__ import annotations

import io
import json
import lzma
import re
import shutil
import struct
import subprocess
import sys

import pytest
from conftest import DATA, GENERATED, LIVE, meta, unpack
from qemuvm import Vm
from test_framing import check_node_tiles, check_records_tile

import qevm
from qevm import delimit
from qevm.stream import EofRecord

ROBUST = DATA / "robust"
TWO_IDE = ROBUST / "isapc-two-ide-7.2.mig.xz"
FOOTER_IN_TIMER = ROBUST / "pc-7.2-footer-in-timer.mig.xz"


def _qevm(*args: object, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qevm", *map(str, args)], input=stdin, capture_output=True
    )


def _all_decoded(mig: qevm.Migration) -> None:
    check_records_tile(mig.records, 0, mig.source.size)
    assert not mig.errors and mig.has_description
    for dev in mig.devices():
        assert dev.state is not None, dev.name
        assert dev.state.size == dev.record.body_size, dev.name
        check_node_tiles(dev.state)


# -- two sections with the same idstr and instance id ---------------------------------
def _identify_data(dev: qevm.Device) -> bytes | None:
    for drive in dev.state.get("bus.ifs"):
        data = drive.get("identify_data")
        if data is not None:
            return bytes(data)
    return None


def test_sections_sharing_name_and_instance_get_their_own_entries():
    with qevm.open(unpack(TWO_IDE)) as mig:
        _all_decoded(mig)
        ides = mig.devices("isa-ide")
        assert [d.instance_id for d in ides] == [0, 0]
        entries = [d for d in mig.description.devices if d.name == "isa-ide"]
        assert [d.record.desc for d in ides] == entries
        # Only the controller with the drive (the second saved) has identify data:
        # the drive SeaBIOS identified, with the serial QEMU's qtree shows.
        assert _identify_data(ides[0]) is None
        data = _identify_data(ides[1])
        text = bytes(data[i ^ 1] for i in range(len(data)))  # ATA strings: bytes swapped
        serial = re.search(r'serial = "(\w+)"', meta(TWO_IDE)["qtree"]).group(1)
        assert serial.encode() in text and b"QEMU HARDDISK" in text


def test_compat_decodes_past_them():
    res = _qevm("state", "--compat", unpack(TWO_IDE))
    assert res.returncode == 0, res.stderr
    state = json.loads(res.stdout)
    ides = [k for k in state if k.startswith("isa-ide ")]
    assert len(ides) == 2
    drives = [state[k]["bus.ifs"] for k in ides]
    assert all("identify_data" not in d for d in drives[0])
    assert "identify_data" in drives[1][0]
    assert list(state)[-1].startswith("globalstate ")


# -- a footer pattern inside device state -----------------------------------------
def test_footer_pattern_in_device_state_does_not_cut_the_section():
    path = unpack(FOOTER_IN_TIMER)
    edit = meta(FOOTER_IN_TIMER)["edit"]
    data = path.read_bytes()
    with qevm.open(path) as mig:
        _all_decoded(mig)
        timer = mig.device("timer")
        rec = timer.record
        footer = struct.pack(">BI", 0x7E, timer.section_id)
        assert data.find(footer, rec.body_offset) == edit["offset"] < rec.body_end
        assert data[edit["offset"] : edit["offset"] + 8].hex() == edit["bytes"]
        unused = next(f for f in timer.state.fields if f.desc.type == "unused_buffer")
        assert unused.offset == edit["offset"] and bytes(unused.value).hex() == edit["bytes"]
        want = mig.section_records()
        want = [(r.entry.idstr, r.offset, r.end) for r in mig.section_records()]
    # every way of reading it agrees: a pipe, a pipe with --desc, info
    ref = _qevm("state", "--json", path)
    assert ref.returncode == 0, ref.stderr
    assert _qevm("state", "--json", "-", stdin=data).stdout == ref.stdout
    desc = path.parent / "footer-in-timer.desc.json"
    desc.write_bytes(_qevm("desc", path).stdout)
    stripped = data[: data.index(b"\x00\x06", want[-1][2])]  # up to the EOF before the JSON
    assert _qevm("state", "--json", "--desc", desc, "-", stdin=stripped + b"\x00").stdout == (
        ref.stdout
    )
    info = json.loads(_qevm("info", "--json", "-", stdin=data).stdout)
    got = [(s["name"], s["offset"], s["offset"] + s["length"]) for s in info["sections"]]
    assert [g for g in got if g[0] != "ram"] == [w for w in want if w[0] != "ram"]


@pytest.mark.qemu
def test_qemu_loads_the_stream_with_the_footer_pattern(tmp_path):
    """The edited stream is valid: QEMU 7.2 skips the unused bytes and loads it."""
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    path = unpack(FOOTER_IN_TIMER)
    argv = meta(FOOTER_IN_TIMER)["argv"][1:]
    with Vm(binary, [*argv, "-display", "none", "-incoming", "defer"], tmp_path, "dst") as vm:
        assert vm.load_file(path) == "completed", vm.log()


# -- errors in the right place ------------------------------------------------------
def _device_records(path) -> list:
    with qevm.open(path) as mig:
        return [
            (d.entry.label, d.record.offset, d.record.body_offset, d.record.end)
            for d in mig.devices()
        ]


@pytest.mark.parametrize("how", ["idstr length 0", "record type 0x09", "idstr control byte"])
def test_corrupt_section_header_is_blamed_on_itself(tmp_path, how):
    path = unpack(FOOTER_IN_TIMER)
    data = path.read_bytes()
    devices = _device_records(path)
    for i in (3, len(devices) // 2, len(devices) - 2):
        name, off, _, _ = devices[i]
        bad = bytearray(data)
        if how == "idstr length 0":
            bad[off + 5] = 0
        elif how == "record type 0x09":
            bad[off] = 0x09
        else:
            bad[off + 6] = 0x01
        p = tmp_path / "bad.mig"
        p.write_bytes(bad)
        for opened in (p, "-"):
            with pytest.raises(qevm.QevmError) as e:
                if opened == "-":
                    res = _qevm("info", "-", stdin=bytes(bad))
                    raise qevm.QevmError(res.stderr.decode())
                qevm.open(p).close()
            text = str(e.value)
            assert f"at offset {off + (0 if how == 'record type 0x09' else 5):#x}" in text, text
            assert devices[i - 1][0] not in text.split(":")[1], text
            assert "footer" not in text, text


def test_cut_inside_a_device_section_says_the_input_ends(tmp_path):
    path = unpack(FOOTER_IN_TIMER)
    data = path.read_bytes()
    devices = _device_records(path)
    p = tmp_path / "cut.mig"
    for name, _, body, end in devices[1::4]:
        for cut in (body + 1, (body + end) // 2, end - 1):
            p.write_bytes(data[:cut])
            with pytest.raises(qevm.TruncatedError, match="input ends") as e:
                qevm.open(p).close()
            assert e.value.offset <= cut and e.value.section == name, str(e.value)
            res = _qevm("state", "--json", "-", stdin=data[:cut])
            err = res.stderr.decode()
            assert res.returncode == 1 and "input ends" in err and repr(name) in err, err


def test_cut_inside_a_device_section_without_description(tmp_path):
    """Delimited by footers only (no description anywhere): still "the input ends"."""
    path = unpack(FOOTER_IN_TIMER)
    data = path.read_bytes()
    name, _, body, end = _device_records(path)[-3]
    res = _qevm("info", "-", stdin=data[: (body + end) // 2])
    err = res.stderr.decode()
    assert res.returncode == 1 and "input ends inside this section" in err, err
    assert repr(name) in err


def test_offsets_inside_compressed_input_are_exact(tmp_path):
    data = unpack(FOOTER_IN_TIMER).read_bytes()
    packed = lzma.compress(data, preset=1)
    for part in (3, 2):
        cut = packed[: len(packed) * (part - 1) // part]
        p = tmp_path / "cut.mig.xz"
        p.write_bytes(cut)
        # every byte the xz data holds, as Python's lzma gives them
        have = len(lzma.LZMADecompressor().decompress(cut))
        assert 0 < have < len(data)
        with pytest.raises(qevm.QevmError, match="xz data is corrupt or truncated") as e:
            qevm.open(p).close()
        assert e.value.offset == have


def test_bytes_after_eof_are_an_error(tmp_path):
    path = unpack(FOOTER_IN_TIMER)
    data = path.read_bytes()
    with qevm.open(path) as mig:
        eof = next(r for r in mig.records if isinstance(r, EofRecord))
    p = tmp_path / "junk.mig"
    p.write_bytes(data[: eof.end] + b"garbage")
    with pytest.raises(qevm.FormatError, match="7 bytes after EOF") as e:
        qevm.open(p).close()
    assert e.value.offset == eof.end
    res = _qevm("info", p)
    assert res.returncode == 1 and b"7 bytes after EOF" in res.stderr


# -- pipes: the description read ahead, and what has none ---------------------------
VIRTIO_MEM = ROBUST / "q35-10.0-virtio-mem-early.mig.xz"


def _state(mig: qevm.Migration) -> list:
    return [
        (d.entry.label, d.record.offset, d.record.end, d.state and native_json(d.state))
        for d in mig.devices()
    ]


def native_json(node):
    from qevm.render import native

    return native.node_json(node)


@pytest.mark.parametrize(
    "path,desc",
    [
        (VIRTIO_MEM, None),  # a FULL section among RAM's records (early_setup)
        (LIVE["postcopy-paused-111"], None),  # PACKAGED device state, no description
        (GENERATED["pc-2.3-nofooter"], None),  # no footers: delimited by decoding
        (GENERATED["pc-2.2-nodesc"], GENERATED["pc-2.2-desc"]),  # neither: --desc
        (GENERATED["pc-7.2-block-bitmap"], None),  # block and dirty-bitmap sections
        (FOOTER_IN_TIMER, None),
    ],
    ids=lambda p: getattr(p, "name", "-"),
)
@pytest.mark.parametrize("lookahead", [None, 1 << 16])
def test_a_pipe_reads_as_the_file(path, desc, lookahead, monkeypatch):
    """Also when the description is further away than the pipe is read ahead."""
    if lookahead:
        monkeypatch.setattr(delimit, "LOOKAHEAD", lookahead)
    path = unpack(path)
    desc = unpack(desc) if desc else None
    with qevm.open(path, desc=desc) as mig:
        want = _state(mig)
        assert not mig.errors
    with open(path, "rb") as f, qevm.open(io.BufferedReader(f), desc=desc) as mig:
        assert not mig.source.seekable
        assert _state(mig) == want
        assert not mig.errors


def test_early_device_section_among_ram_records():
    with qevm.open(unpack(VIRTIO_MEM)) as mig:
        _all_decoded(mig)
        recs = [r.entry.idstr for r in mig.section_records()]
        early = recs.index("0000:00:01.0/virtio-mem-device-early")
        assert recs[early - 1 : early + 2] == ["ram", recs[early], "ram"]
        # QEMU checks these on load; the memory backend of the recipe is 128 MiB
        checks = mig.device("0000:00:01.0/virtio-mem-device-early").state.get("tmp")
        assert "size=128M" in " ".join(meta(VIRTIO_MEM)["argv"])
        assert checks.get("region_size") == 128 << 20


def test_a_broken_description_is_blamed_on_its_byte(tmp_path):
    path = unpack(FOOTER_IN_TIMER)
    data = bytearray(path.read_bytes())
    at = data.rindex(b"}]")  # the end of the devices list: make it a syntax error
    data[at + 1] = ord("#")
    p = tmp_path / "bad.mig"
    p.write_bytes(data)
    with pytest.raises(qevm.DescriptionError, match="not valid JSON") as e:
        qevm.open(p).close()
    assert e.value.offset == at + 1
    with qevm.open(p, strict=False) as mig:
        assert [err.offset for err in mig.errors] == [at + 1]
        assert mig.devices() and all(d.state is None and d.error is None for d in mig.devices())
    res = _qevm("info", "--json", p)
    assert res.returncode == 1
    assert "error" in json.loads(res.stdout)["description"]
