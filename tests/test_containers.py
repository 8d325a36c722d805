"""Containers around the stream: qcow2 internal snapshots, libvirt save images, lzop."""

from __future__ import annotations

import hashlib
import io
import pathlib
import random
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib

import pytest
from conftest import CORPUS, DATA, HAVE_CORPUS, pattern1m, unpack

import qevm
from qevm.cli import main
from qevm.errors import ContainerError, QevmError, TruncatedError, UsageError
from qevm.sections.ram.consumer import PageConsumer
from qevm.source import open_source
from qevm.source.base import FileSource
from qevm.source.libvirt import FORMATS
from qevm.source.lzop import LzoError, LzopReader, lzo1x_decompress
from qevm.source.qcow2 import (
    OFFSET_MASK,
    SnapshotVMState,
    list_snapshots,
    read_header,
    read_snapshots,
)

SAVEVM = DATA / "streams" / "savevm-11.1.qcow2.xz"
LAYOUTS = sorted((DATA / "qcow2").glob("*.qcow2.xz"))
LZOP = DATA / "lzop"
#: sha256 of the VM state of snapshot vm1 in tests/data/qcow2/c512.qcow2.xz
VM1_SHA256 = "9041ff8c28908b933912468800f63199e73ccf0c49b034c4eae3fa72a9203459"
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


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def image(path: pathlib.Path) -> FileSource:
    return FileSource(unpack(path))


# -- qcow2: the real savevm image ---------------------------------------------
def test_savevm_lists_both_snapshots(capsys):
    path = unpack(SAVEVM)
    with image(SAVEVM) as src:
        snaps = list_snapshots(src)
    assert [(s["id"], s["name"]) for s in snaps] == [("1", "snap1"), ("2", "snap2")]
    assert all(s["vm_state_size"] > 1 << 20 for s in snaps)
    assert all(s["disk_size"] == 32 << 20 for s in snaps)
    assert snaps[0]["vm_clock_nsec"] < snaps[1]["vm_clock_nsec"]
    assert snaps[0]["date"] <= snaps[1]["date"]

    rc, out, _ = cli(capsys, "snapshots", str(path))
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["id", "name", "date"]
    assert re.match(
        r"\s+1\s+snap1\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\s+00:00:01\.000\s+\d+", lines[1]
    )
    assert lines[2].split()[1] == "snap2"

    rc, out, _ = cli(capsys, "snapshots", str(path), "--json")
    assert rc == 0
    import json

    assert json.loads(out) == snaps


@pytest.mark.parametrize("snapshot", ["snap1", "2"])
def test_savevm_snapshot_decodes_with_pattern(snapshot):
    mig, ram = decode_with_pattern(unpack(SAVEVM), snapshot=snapshot)
    with mig:
        assert mig.machine == "pc-q35-11.1"
        src = mig.source
        assert src.container.startswith("qcow2 snapshot")
        assert src.info["snapshot"] in ("snap1", "snap2")
        assert src.info["state_at"] == 512 << 20  # first L1 entry past the 32 MiB disk
        assert mig.description is not None
    assert ram == pattern1m()


def test_qcow2_needs_a_snapshot():
    with pytest.raises(UsageError) as e:
        qevm.open(unpack(SAVEVM))
    assert "'snap1' (id 1)" in str(e.value) and "'snap2' (id 2)" in str(e.value)
    with pytest.raises(UsageError, match="no snapshot 'nope'.*'snap1' \\(id 1\\)"):
        qevm.open(unpack(SAVEVM), snapshot="nope")


def test_qcow2_cli_errors(capsys):
    rc, _, err = cli(capsys, "info", str(unpack(SAVEVM)))
    assert rc == 2 and "--snapshot" in err and "snap1" in err
    rc, out, _ = cli(capsys, "info", str(unpack(SAVEVM)), "--snapshot", "snap2")
    assert rc == 0
    assert "qcow2 snapshot 'snap2'" in out and "state_size" in out


def test_qcow2_from_a_pipe_is_refused():
    data = unpack(SAVEVM).read_bytes()[: 1 << 16]
    with pytest.raises(ContainerError, match="seekable") as e:
        qevm.open(io.BytesIO(data), snapshot="snap1")
    assert e.value.offset == 0


def test_compressed_qcow2_is_refused(capsys):
    rc, _, err = cli(capsys, "snapshots", str(SAVEVM))
    assert rc == 2 and "xz-compressed" in err


# -- qcow2: other layouts (v2, 512-byte and 2 MiB clusters, extended L2, zstd) -------
@pytest.mark.parametrize("path", LAYOUTS, ids=lambda p: p.name)
def test_layouts_decode(path):
    with image(path) as src:
        h = read_header(src)
        snaps = list_snapshots(src)
    assert [(s["name"], s["vm_state_size"] > 0) for s in snaps] == [("vm1", True), ("disk1", False)]
    with qevm.open(unpack(path), snapshot="vm1") as mig:
        assert mig.machine == "microvm"
        devices = list(mig.devices())
        assert devices and all(d.state is not None for d in devices)
        info = mig.source.info
        assert info["cluster"] == h.cluster_size
        assert info["extended_l2"] == ("extl2" in path.name)
        assert info["qcow2"] == (2 if path.name.startswith("v2") else 3)
        assert info["compression"] == ("zstd" if "zstd" in path.name else "deflate")
        state = mig.source.read_at(0, mig.source.size)
    assert state.startswith(b"QEVM\0\0\0\x03") and len(state) == snaps[0]["vm_state_size"]
    if path.name.startswith("c512"):
        assert hashlib.sha256(state).hexdigest() == VM1_SHA256


def test_disk_only_snapshot_is_refused():
    with pytest.raises(UsageError, match="'disk1' \\(id 2\\) has no VM state.*'vm1' \\(id 1\\)"):
        qevm.open(unpack(LAYOUTS[0]), snapshot="disk1")


def _qemu_io_vmstate(path: pathlib.Path, snapshot: str, size: int, tmp: pathlib.Path) -> bytes:
    """The VM state as QEMU itself reads it: apply the snapshot, then qemu-io ``read -b``."""
    copy = tmp / path.name
    shutil.copy(path, copy)
    subprocess.run(["qemu-img", "snapshot", "-a", snapshot, str(copy)], check=True)
    length = (size + 511) // 512 * 512
    dump = subprocess.run(
        ["qemu-io", "-r", "-f", "qcow2", "-c", f"read -v -b 0 {length}", str(copy)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = bytearray()
    for line in dump.splitlines():
        m = re.match(r"^[0-9a-f]{8}:  ((?:[0-9a-f]{2} ){1,16})", line)
        if m:
            out += bytes.fromhex(m.group(1).replace(" ", ""))
    return bytes(out[:size])


@pytest.mark.qemu
@pytest.mark.skipif(
    not (shutil.which("qemu-io") and shutil.which("qemu-img")), reason="needs qemu-io, qemu-img"
)
@pytest.mark.parametrize(
    "path,snapshot",
    [(p, "vm1") for p in LAYOUTS] + [(SAVEVM, "snap2")],
    ids=[p.name for p in LAYOUTS] + [SAVEVM.name],
)
def test_vmstate_equals_what_qemu_reads(path, snapshot, tmp_path):
    with open_source(unpack(path), snapshot=snapshot) as src:
        mine = bytes(src.read_at(0, src.size))
    assert mine == _qemu_io_vmstate(unpack(path), snapshot, len(mine), tmp_path)


# -- qcow2: compressed clusters --------------------------------------------------
def _compress_vmstate(path: pathlib.Path, out: pathlib.Path, snapshot: str, kind: str) -> None:
    """Rewrite every other VM-state cluster of ``snapshot`` as a compressed cluster.

    Compressed data and copies of the touched L2 tables are appended to the
    file and the snapshot's L1 entries pointed at the copies; the result is
    what a qcow2 writer that compresses clusters would have produced.
    """
    data = bytearray(path.read_bytes())
    with FileSource(path) as src:
        h = read_header(src)
        sn = next(s for s in read_snapshots(src, h) if s.name == snapshot)
        vm = SnapshotVMState(FileSource(path), h, sn)
    cs, cb = h.cluster_size, h.cluster_bits
    esize = 16 if h.extended_l2 else 8
    shift = 62 - (cb - 8)
    first = vm.vmstate_offset // h.l1_span
    last = (vm.vmstate_offset + sn.vm_state_size - 1) // h.l1_span
    n = 0
    for i in range(first, last + 1):
        l1_at = sn.header.l1_table_offset + 8 * i
        l1e = struct.unpack_from(">Q", data, l1_at)[0]
        l2 = l1e & OFFSET_MASK
        if not l2:
            continue
        table = bytearray(data[l2 : l2 + cs])
        for j in range(0, cs, esize):
            e = struct.unpack_from(">Q", table, j)[0]
            host = e & OFFSET_MASK
            if not host or e & (1 << 62):
                continue
            n += 1
            if n % 2:
                continue
            cluster = bytearray(data[host : host + cs])
            if esize == 16:
                alloc = struct.unpack_from(">Q", table, j + 8)[0] & 0xFFFFFFFF
                sc = cs // 32
                for k in range(32):
                    if not alloc >> k & 1:
                        cluster[k * sc : (k + 1) * sc] = bytes(sc)
            if kind == "zstd":
                import zstandard

                packed = zstandard.ZstdCompressor().compress(bytes(cluster))
            else:
                c = zlib.compressobj(1, zlib.DEFLATED, -15)
                packed = c.compress(bytes(cluster)) + c.flush()
            at = len(data)
            sectors = (at % 512 + len(packed) + 511) // 512
            struct.pack_into(">Q", table, j, (1 << 62) | ((sectors - 1) << shift) | at)
            if esize == 16:
                struct.pack_into(">Q", table, j + 8, 0)
            data += packed
        data += bytes(-len(data) % cs)
        struct.pack_into(">Q", data, l1_at, (l1e & ~OFFSET_MASK) | len(data))
        data += table
    assert n > 2
    out.write_bytes(data)


@pytest.mark.parametrize(
    "path,snapshot,kind",
    [(SAVEVM, "snap1", "deflate"), (DATA / "qcow2" / "extl2-zstd-c16k.qcow2.xz", "vm1", "zstd")],
    ids=["deflate-64k", "zstd-extl2-16k"],
)
def test_compressed_clusters(path, snapshot, kind, tmp_path):
    orig = unpack(path)
    packed = tmp_path / "packed.qcow2"
    _compress_vmstate(orig, packed, snapshot, kind)
    with open_source(orig, snapshot=snapshot) as a, open_source(packed, snapshot=snapshot) as b:
        assert b.info["compression"] == kind
        assert bytes(a.read_at(0, a.size)) == bytes(b.read_at(0, b.size))
        # the scans the stream parser uses, across compressed and plain clusters
        assert b.find(b"QEVM", 0, b.size) == 0
        assert b.rfind(b"QEVM", 0, b.size) == a.rfind(b"QEVM", 0, a.size)
    with qevm.open(packed, snapshot=snapshot) as mig:
        assert all(d.state is not None for d in mig.devices())


def test_find_and_rfind_match_bytes():
    with open_source(unpack(SAVEVM), snapshot="snap1") as src:
        whole = bytes(src.read_at(0, src.size))
        rnd = random.Random(5)
        for _ in range(20):
            i = rnd.randrange(0, len(whole) - 8)
            pat = whole[i : i + rnd.randrange(2, 8)]
            lo = rnd.randrange(0, i + 1)
            hi = rnd.randrange(i + len(pat), len(whole) + 1)
            assert src.find(pat, lo, hi) == whole.find(pat, lo, hi)
            assert src.rfind(pat, lo, hi) == whole.rfind(pat, lo, hi)
        assert src.find(b"\xff" * 9 + b"nothere", 0, src.size) == -1


def test_qcow2_clusters_read_are_let_go(monkeypatch):
    """Data clusters copied out of a mapped image are released, so reading a
    multi-GiB snapshot does not keep the image in the process's memory."""
    with open_source(unpack(SAVEVM), snapshot="snap1") as src:
        released: list[tuple[int, int]] = []
        real = src._img.release
        monkeypatch.setattr(
            src._img, "release", lambda lo, hi: (released.append((lo, hi)), real(lo, hi))
        )
        step = 1 << 20
        whole = b"".join(src.read_at(o, min(step, src.size - o)) for o in range(0, src.size, step))
        assert len(whole) == src.size
        covered = sum(hi - lo for lo, hi in released)
        assert covered >= src.size  # every byte came from a data cluster let go afterwards
        assert all(lo % 4096 == 0 and hi % 4096 == 0 for lo, hi in released)


# -- qcow2: bad images ------------------------------------------------------------
def _patched(tmp_path, src: pathlib.Path, patches: dict[int, bytes], cut: int | None = None):
    data = bytearray(unpack(src).read_bytes())
    for off, b in patches.items():
        data[off : off + len(b)] = b
    if cut is not None:
        del data[cut:]
    p = tmp_path / "bad.qcow2"
    p.write_bytes(data)
    return p


def _snapshot_entry(path: pathlib.Path) -> int:
    with image(path) as src:
        h = read_header(src)
        return read_snapshots(src, h)[0].header.at


@pytest.mark.parametrize(
    "patches,cut,offset,message",
    [
        ({}, 50, 0, "header truncated"),
        ({4: struct.pack(">I", 4)}, None, 4, "version 4"),
        ({20: struct.pack(">I", 30)}, None, 20, "cluster_bits 30"),
        ({32: struct.pack(">I", 2)}, None, 32, "encrypted"),
        ({72: struct.pack(">Q", 4)}, None, 72, "external data file"),
        ({72: struct.pack(">Q", 1 << 20)}, None, 72, "unknown incompatible"),
        ({72: struct.pack(">Q", 8)}, None, 104, "compression-type feature"),
        ({100: struct.pack(">I", 20)}, None, 100, "header_length"),
        ({60: struct.pack(">I", 70000)}, None, 60, "70000 snapshots"),
        ({64: struct.pack(">Q", 1 << 40)}, None, 1 << 40, "beyond the end"),
        ({64: struct.pack(">Q", 0x10200)}, None, 64, "not cluster aligned"),
    ],
)
def test_bad_qcow2_headers(tmp_path, patches, cut, offset, message):
    bad = _patched(tmp_path, SAVEVM, patches, cut)
    with pytest.raises(ContainerError, match=message) as e:
        qevm.open(bad, snapshot="snap1")
    assert e.value.offset == offset


def test_bad_snapshot_entries(tmp_path):
    entry = _snapshot_entry(SAVEVM)
    cases = [
        ({entry: struct.pack(">Q", 1 << 45)}, entry, "L1 table"),
        ({entry + 8: struct.pack(">I", 1 << 24)}, entry + 8, "L1 table of"),
        ({entry + 36: struct.pack(">I", 5000)}, entry + 36, "extra data"),
        ({entry + 40: struct.pack(">Q", 1 << 50)}, entry + 32, "extends past"),
    ]
    for patches, offset, message in cases:
        bad = _patched(tmp_path, SAVEVM, patches)
        with pytest.raises(ContainerError, match=message) as e:
            qevm.open(bad, snapshot="snap1")
        assert e.value.offset == offset, message


def test_bad_l2_entries(tmp_path):
    path = unpack(SAVEVM)
    with FileSource(path) as src:
        h = read_header(src)
        sn = read_snapshots(src, h)[0]
        vm = SnapshotVMState(FileSource(path), h, sn)
        l1_at = sn.header.l1_table_offset + 8 * (vm.vmstate_offset // h.l1_span)
        l2 = struct.unpack(">Q", bytes(src.read_at(l1_at, 8)))[0] & OFFSET_MASK
        size = src.size
    beyond = ((size >> 16) + 2) << 16
    # the L2 table itself out of the file, then its first data cluster
    bad = _patched(tmp_path, SAVEVM, {l1_at: struct.pack(">Q", beyond)})
    with pytest.raises(ContainerError, match="L2 table at .* beyond the end") as e:
        qevm.open(bad, snapshot="snap1")
    assert e.value.offset == l1_at
    bad = _patched(tmp_path, SAVEVM, {l2: struct.pack(">Q", (1 << 63) | beyond)})
    with pytest.raises(ContainerError, match="data cluster at .* beyond the end") as e:
        qevm.open(bad, snapshot="snap1")
    assert e.value.offset == l2
    # a compressed cluster pointing at bytes that are not deflate data (unused L2 entries)
    junk = l2 + (1 << 16) - 1024
    bad = _patched(
        tmp_path, SAVEVM, {l2: struct.pack(">Q", (1 << 62) | junk), junk: b"\xff" * 1024}
    )
    with pytest.raises(ContainerError, match="deflate data of the compressed cluster") as e:
        qevm.open(bad, snapshot="snap1")
    assert e.value.offset == l2


def test_truncated_and_mutated_qcow2_fail_cleanly(tmp_path):
    path = LAYOUTS[1] if LAYOUTS[1].name.startswith("c512") else LAYOUTS[0]
    data = unpack(path).read_bytes()
    rnd = random.Random(7)
    cuts = [len(data) // 2, len(data) - 1000, 4096, 200]
    for cut in cuts:
        bad = _patched(tmp_path, path, {}, cut)
        with pytest.raises(QevmError):
            qevm.open(bad, snapshot="vm1")
    for _ in range(60):
        patches = {rnd.randrange(len(data)): bytes([rnd.randrange(256)]) for _ in range(4)}
        bad = _patched(tmp_path, path, patches)
        try:
            with qevm.open(bad, snapshot="vm1") as mig:
                list(mig.devices())
        except QevmError:
            pass


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
