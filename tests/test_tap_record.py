"""The tap's recording and its reader: bytes written behind, read while they grow.

A writer thread feeds a pipe in bursts with pauses while the recorder splices
it into the file and a :class:`FollowSource` reads the growing file the way
the decoder does: everything read must be what was fed, in order, also where
the recorder has already dropped it from the page cache.  And the recorder's
part of the page cache stays within its window: the kernel's own account
(``mincore``) of what of the file is cached.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import pathlib
import random
import tempfile
import threading
import time

import pytest

from qevm.tap.follow import FollowSource
from qevm.tap.record import Recorder

MiB = 1 << 20


def _feed(w: int, data: bytes, seed: int) -> None:
    rnd = random.Random(seed)
    pos = 0
    while pos < len(data):
        n = rnd.choice([100, 4096, 65536, MiB, 3 * MiB])
        pos += os.write(w, data[pos : pos + n])
        if rnd.random() < 0.2:
            time.sleep(0.03)  # a pause: the reader catches up and waits
    os.close(w)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_recording_read_while_it_grows(tmp_path, seed):
    data = random.Random(seed).randbytes(12 * MiB + 12345)
    path = tmp_path / "rec.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    # a small window, so that the reader also reads what was dropped from the cache
    recorder = Recorder(fd, window=2 * MiB, flush=MiB // 2)
    r, w = os.pipe()
    feeder = threading.Thread(target=_feed, args=(w, data, seed))
    drainer = threading.Thread(target=recorder.drain, args=(r,))
    src = FollowSource(path)
    got = bytearray()
    reader_error: list[BaseException] = []

    def read() -> None:
        try:
            while chunk := src.read_some(MiB):
                got.extend(chunk)
        except BaseException as e:  # noqa: BLE001 - reported below
            reader_error.append(e)

    reader = threading.Thread(target=read)
    for t in (feeder, drainer, reader):
        t.start()
    feeder.join(60)
    drainer.join(60)
    os.close(r)
    os.close(fd)
    assert recorder.error is None
    assert recorder.recorded == len(data)
    src.finish(recorder.recorded)
    reader.join(60)
    src.close()
    assert not reader_error
    assert path.read_bytes() == data
    assert bytes(got) == data


def _cached_bytes(path, start: int, end: int) -> int:
    """Bytes of ``path`` in ``[start, end)`` that the page cache holds (mincore)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t] + [ctypes.c_int] * 4
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size, page = os.path.getsize(path), mmap.PAGESIZE
    vec = (ctypes.c_ubyte * ((size + page - 1) // page))()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        try:
            assert libc.mincore(addr, size, vec) == 0, ctypes.get_errno()
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec[start // page : end // page]) * page


@pytest.fixture
def disk_dir():
    """A directory on a disk file system: /var/tmp, where /tmp may be tmpfs (whose
    files are their page cache: nothing there can be dropped)."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        yield pathlib.Path(d)


def test_recording_keeps_a_bounded_window_in_the_page_cache(disk_dir):
    """What lies a window behind the end is dropped from the cache once on disk;
    without that, all 48 MiB written here would stay cached."""
    path = disk_dir / "rec.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    window, flush = 4 * MiB, MiB
    recorder = Recorder(fd, window=window, flush=flush)
    piece = random.Random(7).randbytes(MiB // 4)
    for i in range(48 * 4):
        recorder.write(piece)
        if i % 4 == 3:
            time.sleep(0.005)  # a disk's pace: each stretch is written back before long
    os.close(fd)
    assert recorder.error is None and recorder.recorded == 48 * MiB
    old = recorder.recorded - 2 * window - flush
    # pages still being written back when they were dropped may stay: at most a window's worth
    assert _cached_bytes(path, 0, old) <= window
    # and the newest window was left where the decoder reads it
    assert _cached_bytes(path, recorder.recorded - window, recorder.recorded) == window
