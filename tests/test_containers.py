"""Containers around the stream: libvirt save images, lzop (qcow2: test_qcow2.py)."""

from __future__ import annotations

import io
import pathlib
import random
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET

import pytest
from conftest import CORPUS, DATA, HAVE_CORPUS, cli, pattern1m, unpack

import qevm
from qevm.errors import ContainerError, QevmError, TruncatedError
from qevm.sections.ram.consumer import PageConsumer
from qevm.source import open_source
from qevm.source.base import FileSource
from qevm.source.libvirt import FORMATS
from qevm.source.lzop import LzoError, LzopReader, lzo1x_decompress

SAVEVM = DATA / "streams" / "savevm-11.1.qcow2.xz"
LZOP = DATA / "lzop"
PATTERN_AT = 0x1000000
XML_DIR = DATA / "libvirt"


# -- helpers ----------------------------------------------------------------
class Grab(PageConsumer):
    """Keeps the bytes of pc.ram pages in [lo, hi) as they stream by."""

    streaming = True

    def __init__(self, page_size: int, lo: int, hi: int) -> None:
        super().__init__(page_size)
        self.lo, self.hi = lo, hi
        self.pages: dict[int, bytes] = {}

    def page(self, block, addr, offset, r, src=0):
        if block.name == "pc.ram" and self.lo <= addr < self.hi:
            i = offset - r.base
            self.pages[addr] = bytes(r.buf[i : i + self.page_size])

    def page_run(self, block, addrs, offsets, r, src=0):
        for a, o in zip(addrs.tolist(), offsets.tolist()):
            self.page(block, a, o, r, src)

    def read(self, lo: int, n: int) -> bytes:
        ps = self.page_size
        return b"".join(self.pages.get(a, bytes(ps)) for a in range(lo, lo + n, ps))


def decode_with_pattern(path, **kw) -> tuple[qevm.Migration, bytes]:
    """Open ``path``, check every device decoded, return the 1 MiB of pc.ram at PATTERN_AT."""
    n = len(pattern1m())
    seekable = False
    if isinstance(path, (str, pathlib.Path)):
        with open_source(path, **kw) as probe:
            seekable = probe.seekable
    if seekable:
        mig = qevm.open(path, index_ram=True, **kw)
        ram = bytes(mig.page_index.read("pc.ram", PATTERN_AT, n))
    else:
        grabs: list[Grab] = []

        def consumer(ctx, ps):
            grabs.append(Grab(ps, PATTERN_AT, PATTERN_AT + n))
            return grabs[-1]

        mig = qevm.open(path, ram_consumer=consumer, **kw)
        ram = grabs[0].read(PATTERN_AT, n)
    devices = list(mig.devices())
    assert devices
    assert all(d.state is not None for d in devices), "a device was left undecoded"
    assert not mig.warnings
    return mig, ram


def image(path: pathlib.Path) -> FileSource:
    return FileSource(unpack(path))


# -- libvirt save images --------------------------------------------------------
def _libvirt_images() -> dict[str, pathlib.Path]:
    found = {p.name: p for p in sorted(XML_DIR.glob("*.img*"))}
    if HAVE_CORPUS:
        d = CORPUS / "libvirt"
        for pattern in ("save-*", "managedsave-*", "snapshot-*", "dump-default*"):
            for p in sorted(d.glob(pattern)):
                found.setdefault(p.name, p)
    return found


LIBVIRT = _libvirt_images()
EMBEDDED_XML = (XML_DIR / "embedded-domain.xml").read_text()
EMBEDDED_COOKIE = (XML_DIR / "embedded-cookie.xml").read_text()


@pytest.mark.parametrize("name", sorted(LIBVIRT))
def test_libvirt_image(name, capsys):
    path = unpack(LIBVIRT[name])
    mig, ram = decode_with_pattern(path)
    with mig:
        info = mig.source.info
        assert mig.machine == "pc-q35-11.1"
    assert ram == pattern1m()
    if name.startswith("dump-"):
        # virsh dump writes a bare stream (compressed as a whole for zstd)
        assert "xml" not in info
        return
    root = ET.fromstring(EMBEDDED_XML)
    assert info["domain"] == root.findtext("name") == "lvpat"
    assert info["uuid"] == root.findtext("uuid")
    assert info["complete"] is True
    assert info["version"] == 2
    assert info["was_running"] is ("paused" not in name)
    words = name.split(".")[0].split("-")
    assert info["format"] == next(w for w in words if w in FORMATS)
    assert mig.source.container.startswith(f"libvirt save image ({info['format']})")
    rc, out, _ = cli(capsys, "libvirt-xml", str(path))
    assert rc == 0 and out == EMBEDDED_XML
    rc, out, _ = cli(capsys, "libvirt-xml", str(path), "--cookie")
    assert rc == 0 and out == EMBEDDED_COOKIE
    rc, out, _ = cli(capsys, "info", str(path))
    assert rc == 0
    assert re.search(r"^  domain\s+lvpat$", out, re.M)
    assert re.search(rf"^  uuid\s+{info['uuid']}$", out, re.M)
    assert "<domain" not in out


def test_sparse_offsets_are_file_offsets():
    path = unpack(XML_DIR / "save-sparse.img.xz")
    with qevm.open(path) as mig:
        assert mig.source.start == mig.source.info["stream_at"] == 0x106F6
        pc = next(b for b in mig.ram_blocks if b.name == "pc.ram")
        assert pc.mapped is not None and pc.mapped.pages_offset == 0x100000
    with open(path, "rb") as f:
        f.seek(0x1100000)
        assert f.read(32) == pattern1m()[:32]


def test_libvirt_from_a_pipe():
    data = (XML_DIR / "save-zstd.img").read_bytes()
    mig, ram = decode_with_pattern(io.BytesIO(data))
    with mig:
        assert mig.source.info["domain"] == "lvpat"
        assert mig.source.info["format"] == "zstd"
    assert ram == pattern1m()


def _header_fields(data: bytes, order: str = "<") -> list[int]:
    return list(struct.unpack_from(order + "5I", data, 16))


def _with_header(tmp_path, src: pathlib.Path, fields=None, magic=None, order="<", cut=None):
    """A copy of ``src`` with its libvirt header changed (zero runs stay sparse)."""
    p = tmp_path / "bad.img"
    with open(unpack(src), "rb") as fin, open(p, "wb") as fout:
        left = cut
        while left is None or left > 0:
            chunk = fin.read(1 << 22 if left is None else min(1 << 22, left))
            if not chunk:
                break
            if left is not None:
                left -= len(chunk)
            if chunk.count(0) == len(chunk):
                fout.seek(len(chunk), 1)
            else:
                fout.write(chunk)
        fout.truncate()
        fout.seek(0)
        if magic is not None:
            fout.write(magic)
        if fields is not None:
            fout.seek(16)
            fout.write(struct.pack(order + "5I", *fields))
    return p


def test_libvirt_big_endian_partial_and_version1(tmp_path):
    gz = XML_DIR / "save-gzip.img"
    fields = _header_fields(gz.read_bytes())
    be = _with_header(tmp_path, gz, fields, order=">")
    with qevm.open(be) as mig:
        assert mig.source.info["byte_order"] == "big"
        assert mig.source.info["format"] == "gzip"
    part = _with_header(tmp_path, gz, magic=b"LibvirtQemudPart")
    with qevm.open(part) as mig:
        assert mig.source.info["complete"] is False
        assert "incomplete" in mig.source.container
    # version 1 images predate compression: the format field is ignored
    sparse = XML_DIR / "save-sparse.img.xz"
    with open(unpack(sparse), "rb") as f:
        v1 = _header_fields(f.read(92))
    v1[0], v1[3] = 1, 5
    with qevm.open(_with_header(tmp_path, sparse, v1)) as mig:
        assert mig.source.info["format"] == "raw"
        assert mig.source.info["version"] == 1


def test_libvirt_without_cookie(tmp_path, capsys):
    gz = XML_DIR / "save-gzip.img"
    fields = _header_fields(gz.read_bytes())
    fields[4] = 0
    p = _with_header(tmp_path, gz, fields)
    rc, out, _ = cli(capsys, "libvirt-xml", str(p))
    assert rc == 0 and out == EMBEDDED_XML
    rc, _, err = cli(capsys, "libvirt-xml", str(p), "--cookie")
    assert rc == 2 and "no cookie" in err


def test_libvirt_xml_of_a_plain_stream(capsys):
    rc, _, err = cli(capsys, "libvirt-xml", str(unpack(DATA / "streams" / "q35-11.1.mig.xz")))
    assert rc == 2 and "not a libvirt save image" in err


@pytest.mark.parametrize(
    "field,value,offset,message",
    [
        (0, 3, 16, "version 50331648"),
        (0, 0, 16, "version 0"),
        (3, 9, 28, "format 9"),
        (1, 0, 20, "data_len 0"),
        (1, 1 << 30, 20, "data_len"),
        (4, 1 << 20, 32, "cookie offset"),
    ],
)
def test_bad_libvirt_headers(tmp_path, field, value, offset, message):
    gz = XML_DIR / "save-gzip.img"
    fields = _header_fields(gz.read_bytes())
    fields[field] = value
    with pytest.raises(ContainerError, match=message) as e:
        qevm.open(_with_header(tmp_path, gz, fields))
    assert e.value.offset == offset


def test_truncated_libvirt_images(tmp_path):
    gz = XML_DIR / "save-gzip.img"
    with pytest.raises(TruncatedError, match="header") as e:
        qevm.open(_with_header(tmp_path, gz, cut=60))
    assert e.value.offset == 0
    with pytest.raises(TruncatedError, match="domain XML") as e:
        qevm.open(_with_header(tmp_path, gz, cut=1000))
    assert e.value.offset == 92
    with pytest.raises(TruncatedError, match="domain XML"):
        qevm.open(io.BytesIO(gz.read_bytes()[:1000]))
    with pytest.raises(QevmError):
        qevm.open(_with_header(tmp_path, gz, cut=200000))
    with pytest.raises(ContainerError, match="not a libvirt save image") as e:
        qevm.open(unpack(SAVEVM), format="libvirt")
    assert e.value.offset == 0


# -- lzop -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vm1_state() -> bytes:
    with open_source(unpack(DATA / "qcow2" / "c512.qcow2.xz"), snapshot="vm1") as src:
        return bytes(src.read_at(0, src.size))


@pytest.mark.parametrize("name", ["microvm-vm1.mig.lzo", "microvm-vm1-crc32.mig.lzo"])
def test_lzop_vectors(name, vm1_state):
    with open(LZOP / name, "rb") as f:
        assert LzopReader(f).read() == vm1_state
    with qevm.open(LZOP / name) as mig:
        assert mig.source.container == "lzop"
        assert mig.machine == "microvm"
        assert all(d.state is not None for d in mig.devices())


def test_lzop_concatenated_and_trailing_bytes(vm1_state):
    one = (LZOP / "microvm-vm1.mig.lzo").read_bytes()
    two = (LZOP / "microvm-vm1-crc32.mig.lzo").read_bytes()
    r = LzopReader(io.BytesIO(one + two + b"\0" * 100 + b"garbage"))
    assert r.read() == vm1_state * 2
    assert r.members == 2


def _first_block(data: bytes) -> int:
    """Offset of the first block header of an lzop file without name or extra field."""
    flags = struct.unpack_from(">I", data, 9 + 8)[0]
    assert not flags & 0x840
    return 9 + 8 + 4 + 12 + 1 + data[9 + 8 + 4 + 12] + 4


def test_lzop_corruption_is_caught():
    data = (LZOP / "microvm-vm1.mig.lzo").read_bytes()
    blk = _first_block(data)
    dst, src_len = struct.unpack_from(">II", data, blk)
    assert src_len < dst
    cases = [
        (16, "header checksum"),  # the compression level
        (blk + 8, "Adler-32 .* does not match the decompressed data"),
        (blk + 12 + src_len // 2, "lzop"),
    ]
    for pos, message in cases:
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        with pytest.raises(ContainerError, match=message):
            LzopReader(io.BytesIO(bytes(bad))).read()
    huge = bytearray(data)
    struct.pack_into(">I", huge, blk, 65 << 20)
    with pytest.raises(ContainerError, match="uncompressed bytes") as e:
        LzopReader(io.BytesIO(bytes(huge))).read()
    assert e.value.offset == blk
    with pytest.raises(TruncatedError, match="end marker"):
        LzopReader(io.BytesIO(data[:-4])).read()
    with pytest.raises(TruncatedError, match="block data"):
        LzopReader(io.BytesIO(data[: blk + 100])).read()
    with pytest.raises(ContainerError, match="not an lzop file"):
        LzopReader(io.BytesIO(b"\x89LZX" + data[4:]))
    # through the stream machinery the error stays a QevmError with an offset
    with pytest.raises(ContainerError) as e:
        qevm.open(io.BytesIO(data[: len(data) // 2]))
    assert e.value.offset is not None


def test_lzo1x_blocks():
    # a first-byte literal run, an overlapping M2 match (distance 3), then the end marker
    lit = b"abcdefgh"
    block = bytes([17 + len(lit)]) + lit + bytes([0x60 | (2 << 2), 0]) + b"\x11\x00\x00"
    assert lzo1x_decompress(block, 12) == lit + b"fghf"
    with pytest.raises(LzoError, match="decompresses to 12 bytes"):
        lzo1x_decompress(block, 13)
    with pytest.raises(LzoError, match="before the start"):
        lzo1x_decompress(bytes([17 + 2]) + b"ab" + bytes([0x40 | (7 << 2), 9]) + b"\x11\0\0", 6)
    with pytest.raises(LzoError, match="ends before its end marker"):
        lzo1x_decompress(block[:-2], 12)
    with pytest.raises(LzoError, match="overruns"):
        lzo1x_decompress(block, 5)


@pytest.mark.skipif(not shutil.which("lzop"), reason="needs the lzop program")
@pytest.mark.parametrize("opts", [["-1"], ["-9"], ["-1", "--crc32"], ["-1", "-F"]])
def test_lzop_program_round_trip(opts):
    rnd = random.Random(3)
    text = b"".join(b"line %d of some text %s\n" % (i, b"x" * (i % 40)) for i in range(20000))
    data = text + bytes(300000) + rnd.randbytes(100000) + pattern1m()[:200000] + b"ab" * 70000
    packed = subprocess.run(["lzop", "-c", *opts], input=data, capture_output=True, check=True)
    assert LzopReader(io.BytesIO(packed.stdout)).read() == data
