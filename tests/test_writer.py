"""Writing streams back: byte-exact round trips and the description's JSON text."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import pathlib
import struct

import pytest
import zstandard
from conftest import CORPUS, DATA, HAVE_CORPUS, all_stream_paths, switched_to_postcopy, unpack

import qevm
from qevm.source.base import FileSource
from qevm.source.qcow2 import open_snapshot
from qevm.vmstate.desc import parse_description, parse_json
from qevm.vmstate.jsontext import JSONWRITER, QJSON, detect_style, dump
from qevm.writer import StreamWriter, open_for_writing, write_stream

STREAM_FILES = all_stream_paths()


def sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def rewrite(spec, out: pathlib.Path, **kw) -> int:
    with open_for_writing(spec, **kw) as mig:
        with open(out, "wb") as f:
            return StreamWriter(mig).write(f)


@pytest.mark.parametrize("name", sorted(STREAM_FILES))
def test_unedited_stream_is_byte_identical(name, tmp_path):
    path = unpack(STREAM_FILES[name])
    out = tmp_path / "out.mig"
    n = rewrite(path, out)
    assert n == path.stat().st_size
    assert sha256_file(out) == sha256_file(path)


def test_mapped_ram_output_stays_sparse(tmp_path):
    path = unpack(STREAM_FILES["q35-mapped-ram-multifd-11.1"])
    out = tmp_path / "out.mig"
    rewrite(path, out)
    assert sha256_file(out) == sha256_file(path)
    # 128 MiB of guest RAM, a few MiB of it used: the holes are kept
    assert out.stat().st_size > 128 << 20
    assert out.stat().st_blocks * 512 < 16 << 20


def test_streaming_input_is_spooled(tmp_path):
    path = unpack(STREAM_FILES["xbzrle-111"])
    out = tmp_path / "out.mig"
    with open(path, "rb") as f:
        rewrite(io.BufferedReader(f), out)  # a file object reads as a forward-only stream
    assert sha256_file(out) == sha256_file(path)


@pytest.mark.parametrize("tail", [b"\x00\x00junk after the description", b""])
def test_bytes_after_the_stream_are_an_error_and_kept(tail, tmp_path):
    """Whatever follows the description (or EOF, when it is not one) is an error
    naming where it starts; read anyway, it comes back too."""
    data = unpack(STREAM_FILES["q35-11.1"]).read_bytes()
    if not tail:
        # cut the description: EOF is followed by bytes that are not one
        with qevm.open(unpack(STREAM_FILES["q35-11.1"])) as mig:
            data = data[: mig.records[-1].offset] + b"\x00 is not a description"
    src = tmp_path / "in.mig"
    src.write_bytes(data + tail)
    start = len(data) if tail else len(data) - len(b"\x00 is not a description")
    with pytest.raises(qevm.FormatError, match="not part of the stream") as e:
        qevm.open(src)
    assert e.value.offset == start
    out = tmp_path / "out.mig"
    with qevm.open(src, strict=False) as mig:
        assert [err.offset for err in mig.errors] == [start]
        write_stream(mig, out)
    assert out.read_bytes() == data + tail


def test_write_stream_refuses_to_overwrite_its_input(tmp_path):
    path = tmp_path / "in.mig"
    path.write_bytes(unpack(STREAM_FILES["q35-11.1"]).read_bytes())
    with qevm.open(path) as mig, pytest.raises(qevm.UsageError, match="overwrite the input"):
        write_stream(mig, path)


# -- containers ---------------------------------------------------------------------
def _libvirt_images() -> dict[str, pathlib.Path]:
    found = {p.name: p for p in sorted((DATA / "libvirt").glob("*.img*"))}
    if HAVE_CORPUS:
        for p in sorted((CORPUS / "libvirt").iterdir()):
            if p.name.startswith(("save-", "managedsave-", "snapshot-", "dump-default")):
                found.setdefault(p.name, p)
    return found


LIBVIRT = _libvirt_images()
_DECOMPRESS = {
    1: gzip.decompress,
    2: bz2.decompress,
    3: lzma.decompress,
    5: lambda d: zstandard.ZstdDecompressor().decompressobj().decompress(d),
}


def _inner_stream(path: pathlib.Path) -> bytes | None:
    """The QEMU stream inside a libvirt image, read straight from its header,
    or None for raw/sparse images (where the writer reproduces the whole file)."""
    data = path.read_bytes()
    if data.startswith(b"QEVM"):
        return None
    if data.startswith(b"\x28\xb5\x2f\xfd"):  # a whole-file zstd dump
        return _DECOMPRESS[5](data)
    assert data.startswith(b"LibvirtQemudSave")
    data_len, _, fmt = struct.unpack_from("<III", data, 20)
    body = data[92 + data_len :]
    if fmt in (0, 6):
        return None
    if fmt == 4:  # lzop: no module in Python's standard library
        from qevm.source.lzop import LzopReader

        return LzopReader(io.BytesIO(body)).read()
    return _DECOMPRESS[fmt](body)


@pytest.mark.parametrize("name", sorted(LIBVIRT))
def test_libvirt_image_round_trip(name, tmp_path):
    path = unpack(LIBVIRT[name])
    out = tmp_path / "out"
    rewrite(path, out)
    inner = _inner_stream(path)
    if inner is None:
        # raw and sparse images keep their header: the whole file comes back
        assert sha256_file(out) == sha256_file(path)
    else:
        assert sha256_file(out) == hashlib.sha256(inner).hexdigest()


SAVEVM = [DATA / "streams" / "savevm-11.1.qcow2.xz"]


@pytest.mark.parametrize("snapshot", ["snap1", "snap2"])
def test_savevm_snapshot_round_trip(snapshot, tmp_path):
    path = unpack(SAVEVM[0])
    out = tmp_path / "out.mig"
    rewrite(path, out, snapshot=snapshot)
    with FileSource(path) as img:
        vmstate = open_snapshot(img, snapshot)
        want = bytes(vmstate.read_at(0, vmstate.size))
    assert out.read_bytes() == want


def test_sparse_image_from_a_pipe_is_relocated(tmp_path):
    """A mapped-ram image read from a pipe loses its container header: the
    stream then starts at 0, so the mapped-ram offsets are laid out anew."""
    path = unpack(DATA / "libvirt" / "save-sparse.img.xz")
    out = tmp_path / "out.mig"
    with open(path, "rb") as f:
        rewrite(io.BufferedReader(f), out)
    with qevm.open(path, index_ram=True) as a, qevm.open(out, index_ram=True) as b:
        assert b.source.start == 0 and b.records[-1].end == out.stat().st_size
        for blk in b.ram_blocks:
            m = blk.mapped
            assert m is not None and m.pages_offset % (1 << 20) == 0
            assert m.bitmap_offset == m.at + 28
        assert [x.name for x in a.ram_blocks] == [x.name for x in b.ram_blocks]
        for x in a.ram_blocks:
            n = x.used_length
            assert a.page_index.read(x.name, 0, n) == b.page_index.read(x.name, 0, n), x.name
        assert [(d.name, d.record.end - d.record.offset) for d in a.devices()] == [
            (d.name, d.record.end - d.record.offset) for d in b.devices()
        ]


# -- the description's text ---------------------------------------------------------
@pytest.mark.parametrize(
    "name", sorted(n for n, p in STREAM_FILES.items() if not switched_to_postcopy(p))
)
def test_regenerated_description_equals_the_original(name):
    with qevm.open(unpack(STREAM_FILES[name]), decode_devices=False) as mig:
        desc = mig.description
        assert desc is not None
        assert detect_style(desc.text) == JSONWRITER
        assert dump(desc.raw, JSONWRITER) == desc.text


# Written by hand after QEMU 6.0+'s qobject/json-writer.c: ", " and ": ",
# \" and \\, the short escapes, everything else below 0x20 or from 0x7f as
# upper-case \uXXXX, a surrogate pair above U+FFFF, "/" as is.
JSONWRITER_SAMPLE = (
    b'{"page_size": 4096, "devices": [{"name": "a/b \\"q\\" \\\\ \\t\\n\\u007F\\u00E9'
    b'\\uD83D\\uDE00\\u0001", "instance_id": 0, "vmsd_name": "x", "version": 1, '
    b'"fields": [{"name": "l", "type": "qtailq", "vmsd_name": "e", "version": 1, '
    b'"fields": [], "vmsd_name": "e", "version": 1, "fields": [], "size": 2}, '
    b'{"name": "s", "type": "struct", "struct": {}, "size": 1}, '
    b'{"name": "n", "type": "int64", "size": -8}]}]}'
)

# Written by hand after QEMU 2.3-5.2's migration/qjson.c: "{ " and " }",
# " : ", no escaping, "{  }" for an empty object.
QJSON_SAMPLE = (
    b'{ "page_size" : 4096, "devices" : [ { "name" : "timer", "instance_id" : 0, '
    b'"vmsd_name" : "timer", "version" : 2, "fields" : [ { "name" : "cpu_ticks_offset", '
    b'"type" : "int64", "size" : 8 }, { "name" : "s", "type" : "struct", '
    b'"struct" : {  }, "size" : 1 }, { "name" : "e", "type" : "buffer", "size" : 0 } ] }, '
    b'{ "name" : "slirp", "instance_id" : 0, "size" : 131, "fields" : [ '
    b'{ "name" : "data", "size" : 131, "type" : "buffer" } ] } ] }'
)


@pytest.mark.parametrize("text,style", [(JSONWRITER_SAMPLE, JSONWRITER), (QJSON_SAMPLE, QJSON)])
def test_both_json_styles_round_trip(text, style):
    raw = parse_json(text)
    assert detect_style(text) == style
    assert dump(raw, style) == text
    if style == JSONWRITER:
        device = raw["devices"][0]
        assert device["name"] == 'a/b "q" \\ \t\n\x7f\xe9\U0001f600\x01'
        # duplicate keys survive (QEMU writes one nested VMSD per list element)
        assert [k for k, _ in device["fields"][0].pairs].count("vmsd_name") == 2
    else:
        assert parse_description(text).devices[1].legacy_size == 131


def test_changed_description_is_regenerated(tmp_path):
    path = unpack(STREAM_FILES["q35-11.1"])
    out = tmp_path / "out.mig"
    with qevm.open(path) as mig:
        desc = mig.description
        desc.device("timer", 0).raw.set("version", 2)  # the same value: same text
        desc.modified = True
        write_stream(mig, out)
    assert sha256_file(out) == sha256_file(path)
    with qevm.open(path) as mig:
        desc = mig.description
        at = mig.records[-1].offset
        desc.device("timer", 0).raw.set("version", 12345)
        desc.modified = True
        write_stream(mig, out)
    old, new = path.read_bytes(), out.read_bytes()
    assert new[:at] == old[:at]
    assert new[at] == 0x06
    assert struct.unpack(">I", new[at + 1 : at + 5])[0] == len(new) - at - 5
    text = b'"name": "timer", "instance_id": 0, "vmsd_name": "timer", "version": '
    assert new[at + 5 :] == old[at + 5 :].replace(text + b"2,", text + b"12345,")
    assert len(new) == len(old) + 4


def test_no_stray_temporary_files(tmp_path):
    path = unpack(STREAM_FILES["q35-11.1"])
    with qevm.open(path) as mig:
        write_stream(mig, tmp_path / "x.mig")
    assert os.listdir(tmp_path) == ["x.mig"]
