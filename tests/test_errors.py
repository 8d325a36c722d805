"""Bad input gives a QevmError naming the offset, never another exception."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from conftest import STREAMS, unpack

import qevm
from qevm.errors import FormatError, QevmError, TruncatedError, UnsupportedError
from qevm.stream import EofRecord

SMALL = "riscv64-virt-11.1"


@pytest.fixture(scope="module")
def stream_bytes() -> bytes:
    return unpack(STREAMS[SMALL]).read_bytes()


@pytest.fixture(scope="module")
def layout(stream_bytes):
    with qevm.open(unpack(STREAMS[SMALL])) as mig:
        eof = next(r for r in mig.records if isinstance(r, EofRecord))
        devices = [(d.record.offset, d.record.end) for d in mig.devices()]
    return eof.offset, devices


def _open_bytes(tmp_path, data: bytes, name: str = "bad.mig"):
    p = tmp_path / name
    p.write_bytes(data)
    return qevm.open(p)


def test_empty_file(tmp_path):
    with pytest.raises(FormatError) as e:
        _open_bytes(tmp_path, b"")
    assert e.value.offset == 0


def test_random_file(tmp_path):
    rnd = random.Random(1).randbytes(4096)
    with pytest.raises(FormatError, match="not a QEMU migration stream") as e:
        _open_bytes(tmp_path, rnd)
    assert "offset 0x0" in str(e.value)


def test_version_2_is_unsupported(tmp_path):
    with pytest.raises(UnsupportedError, match="version 2"):
        _open_bytes(tmp_path, b"QEVM\x00\x00\x00\x02\x00")


def test_truncations_before_eof_fail_cleanly(tmp_path, stream_bytes, layout):
    eof, devices = layout
    rnd = random.Random(2)
    cuts = {8, 9, 12, 20, 100, eof, eof - 1, eof - 5}
    for start, end in devices[:10]:
        cuts.update({start + 1, start + 5, (start + end) // 2, end - 1})
    cuts.update(rnd.randrange(8, eof) for _ in range(40))
    for cut in sorted(cuts):
        with pytest.raises(QevmError) as e:
            _open_bytes(tmp_path, stream_bytes[:cut]).close()
        assert e.value.offset is not None, (cut, str(e.value))
        assert e.value.offset <= cut + 1, (cut, str(e.value))


def test_truncated_description(tmp_path, stream_bytes, layout):
    eof, _ = layout
    with pytest.raises(TruncatedError):
        _open_bytes(tmp_path, stream_bytes[: eof + 100]).close()


def test_flipped_bytes_in_device_state(tmp_path, stream_bytes, layout):
    _, devices = layout
    rnd = random.Random(3)
    for _ in range(150):
        start, end = rnd.choice(devices)
        pos = rnd.randrange(start, end)
        data = bytearray(stream_bytes)
        data[pos] ^= 1 << rnd.randrange(8)
        try:
            _open_bytes(tmp_path, bytes(data)).close()
        except QevmError as e:
            assert e.offset is not None, str(e)


def test_wrong_lengths(tmp_path, stream_bytes, layout):
    eof, devices = layout
    # the JSON length field, made too large
    data = bytearray(stream_bytes)
    data[eof + 2] = 0x7F
    with pytest.raises(QevmError):
        _open_bytes(tmp_path, bytes(data)).close()
    # a device section's idstr length byte
    start = devices[3][0]
    data = bytearray(stream_bytes)
    data[start + 5] = 0xFF
    with pytest.raises(QevmError) as e:
        _open_bytes(tmp_path, bytes(data)).close()
    assert e.value.offset is not None


def test_cli_error_is_one_line_exit_2(tmp_path, stream_bytes):
    p = tmp_path / "bad.mig"
    p.write_bytes(b"QEVM\x00\x00\x00\x02" + stream_bytes[8:])
    res = subprocess.run(
        [sys.executable, "-m", "qevm", "state", "--json", str(p)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "offset 0x4" in lines[0] and "Traceback" not in res.stderr
    assert res.stdout == ""


def test_cli_cut_stream_is_a_partial_result_exit_1(tmp_path, stream_bytes):
    p = tmp_path / "cut.mig"
    p.write_bytes(stream_bytes[: len(stream_bytes) // 2])
    res = subprocess.run(
        [sys.executable, "-m", "qevm", "state", "--json", str(p)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "offset" in lines[0] and "Traceback" not in res.stderr
    assert "input ends" in lines[0]
    state = json.loads(res.stdout)
    assert [e["message"] for e in state["errors"]] == [lines[0].removeprefix("qevm: error: ")]


def test_cli_missing_file(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "qevm", "info", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "no such file" in res.stderr


def _with_description(stream_bytes: bytes, eof: int, text: bytes) -> bytes:
    """The stream up to and including EOF, then ``text`` as its description."""
    return stream_bytes[: eof + 1] + b"\x06" + len(text).to_bytes(4, "big") + text


def test_hostile_descriptions_are_refused(tmp_path, stream_bytes, layout):
    eof, _ = layout
    with qevm.open(unpack(STREAMS[SMALL]), decode_devices=False) as mig:
        first = mig.devices()[0]
        name, inst = first.name, first.instance_id
    head = (
        f'{{"page_size": 4096, "devices": [{{"name": "{name}", "instance_id": {inst}, '
        '"vmsd_name": "x", "version": 1, "fields": ['
    ).encode()
    huge = head + b'{"name": "a", "array_len": 1099511627776, "type": "uint8", "size": 1}]}]}'
    deep_field = b'{"name": "s", "type": "struct", "struct": {"vmsd_name": "d", "fields": ['
    deep = head + deep_field * 3000 + b']}, "size": 1}' * 3000 + b"]}]}"
    for text, pattern in ((huge, "cannot fit"), (deep, "nested too deeply")):
        with pytest.raises(QevmError, match=pattern) as e:
            _open_bytes(tmp_path, _with_description(stream_bytes, eof, text)).close()
        assert e.value.offset is not None


def test_nested_packaged_blobs_are_bounded(tmp_path):
    inner = b""
    for _ in range(100):
        inner = (
            b"\x08"
            + (7).to_bytes(2, "big")
            + (4).to_bytes(2, "big")
            + len(inner).to_bytes(4, "big")
            + inner
        )
    with pytest.raises(FormatError, match="nested too deeply"):
        _open_bytes(tmp_path, b"QEVM\x00\x00\x00\x03" + inner + b"\x00")
