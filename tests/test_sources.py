"""The same stream read from a path, a pipe and compressed files gives the same result."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import subprocess
import sys

import pytest
import zstandard
from conftest import LIVE, STREAMS, unpack

NAMES = ["q35-11.1", "aarch64-virt-7.2", "s390x-7.2"]


def _run(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qevm", *args], capture_output=True, **kw)


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """name -> {kind: path} with the stream raw and compressed four ways."""
    out = {}
    tmp = tmp_path_factory.mktemp("variants")
    for name in NAMES:
        raw = unpack(STREAMS[name])
        data = raw.read_bytes()
        files = {"raw": raw, "xz": STREAMS[name]}
        files["gz"] = tmp / f"{name}.mig.gz"
        files["gz"].write_bytes(gzip.compress(data, compresslevel=1))
        files["bz2"] = tmp / f"{name}.mig.bz2"
        files["bz2"].write_bytes(bz2.compress(data, compresslevel=1))
        files["zst"] = tmp / f"{name}.mig.zst"
        files["zst"].write_bytes(zstandard.ZstdCompressor(level=1).compress(data))
        out[name] = files
    return out


@pytest.mark.parametrize("name", NAMES)
def test_state_is_the_same_from_path_pipe_and_compressed(name, variants):
    files = variants[name]
    ref = _run(["state", "--json", str(files["raw"])])
    assert ref.returncode == 0, ref.stderr
    with open(files["raw"], "rb") as f:
        piped = _run(["state", "--json", "-"], stdin=f)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == ref.stdout
    for kind in ("xz", "gz", "bz2", "zst"):
        res = _run(["state", "--json", str(files[kind])])
        assert res.returncode == 0, (kind, res.stderr)
        assert res.stdout == ref.stdout, kind


def test_compat_state_from_a_pipe(variants):
    files = variants["q35-11.1"]
    ref = _run(["state", "--compat", str(files["raw"])])
    with open(files["zst"], "rb") as f:
        piped = _run(["state", "--compat", "-"], stdin=f)
    assert piped.returncode == 0 and piped.stdout == ref.stdout


def test_fifo_is_read_in_one_pass(tmp_path, variants):
    import os
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    src = variants["q35-11.1"]["raw"]

    def feed() -> None:
        with open(fifo, "wb") as w, open(src, "rb") as r:
            while chunk := r.read(1 << 16):
                w.write(chunk)

    t = threading.Thread(target=feed)
    t.start()
    res = _run(["info", "--json", str(fifo)])
    t.join()
    assert res.returncode == 0, res.stderr
    assert b'"machine": "pc-q35-11.1"' in res.stdout


def test_extract_from_compressed_pipe_equals_path(tmp_path, variants):
    files = variants["q35-11.1"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(["extract", str(files["raw"]), "-o", str(a)]).returncode == 0
    with open(files["gz"], "rb") as f:
        res = _run(["extract", "-", "-o", str(b)], stdin=f)
    assert res.returncode == 0, res.stderr
    for p in a.rglob("*"):
        if p.is_file():
            q = b / p.relative_to(a)
            assert (
                hashlib.sha256(p.read_bytes()).digest() == hashlib.sha256(q.read_bytes()).digest()
            ), p


def test_truncated_compressed_input_is_a_clean_error(tmp_path, variants):
    data = variants["q35-11.1"]["gz"].read_bytes()
    p = tmp_path / "cut.gz"
    p.write_bytes(data[: len(data) // 2])
    res = _run(["state", "--json", str(p)])
    # as a stream cut at that point: what came before is a partial result (the
    # decompressor's error once, then the end of the input)
    assert res.returncode == 1
    err = res.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "offset" in err[0] and "gzip data is corrupt or truncated" in err[0]


def test_live_stream_from_pipe_info():
    with open(unpack(LIVE["postcopy-paused-111"]), "rb") as f:
        res = _run(["info", "-"], stdin=f)
    assert res.returncode == 0, res.stderr
    assert b"PACKAGED" in res.stdout


def test_sequential_reads_of_a_mapped_file_let_it_go(tmp_path, monkeypatch):
    """A decompressor reading a mapped file does not keep the file in memory."""
    from qevm.source.base import READ_RELEASE_STEP, FileSource

    path = tmp_path / "big"
    path.write_bytes(bytes(range(256)) * (3 * READ_RELEASE_STEP // 256 + 100))
    src = FileSource(path)
    released: list[tuple[int, int]] = []
    real = src.release
    monkeypatch.setattr(src, "release", lambda lo, hi: (released.append((lo, hi)), real(lo, hi)))
    got = b"".join(iter(lambda: src.read(1 << 20), b""))
    src.close()
    assert got == path.read_bytes()
    assert released and released[0][0] == 0
    assert all(b[0] <= a[1] for a, b in zip(released, released[1:]))  # no gaps
    assert released[-1][1] >= 3 * READ_RELEASE_STEP
