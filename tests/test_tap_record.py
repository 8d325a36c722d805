"""The tap's recording and its reader: bytes written behind, read while they grow.

The forwarding hands the recorder its bytes through a backlog of pipes, so a
recorder held up for a while does not hold the forwarding until the backlog is
full; the recording is the same bytes in the same order however many pipes
they went through.

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
from qevm.tap.record import Backlog, Recorder, pipe, pipe_size
from qevm.wire import Reader

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


def _read_by_reader(src: FollowSource, got: bytearray, seed: int) -> int:
    """The way the decoder reads: a :class:`Reader` over the source's mapped windows,
    items of any size, and marks that keep bytes across windows; how many windows."""
    rnd = random.Random(seed)
    r = Reader(src)
    windows = set()
    while not r.at_end():
        if isinstance(r.buf, memoryview):
            windows.add(id(r.buf.obj))
        n = min(rnd.choice([1, 9, 4096, 4105, MiB, 5 * MiB]), r.available() or 1)
        if rnd.random() < 0.1:
            r.mark()
            r.skip(min(n, r.available()))
            got.extend(r.since_mark())
        else:
            got.extend(r.bytes(min(n, r.available())))
    return len(windows)


@pytest.mark.parametrize("by_reader", [False, True], ids=["read", "windows"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_recording_read_while_it_grows(tmp_path, seed, by_reader):
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
    windows = []

    def read() -> None:
        try:
            if by_reader:
                windows.append(_read_by_reader(src, got, seed))
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
    assert not by_reader or windows[0] > 1  # the file was mapped, as it grew


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


class _HeldRecorder(Recorder):
    """A recorder that waits for ``go`` before it writes anything."""

    def __init__(self, fd: int, go: threading.Event) -> None:
        super().__init__(fd)
        self.go = go

    def drain(self, pipe: int) -> None:
        self.go.wait(60)
        super().drain(pipe)


def test_backlog_lets_the_forwarding_run_ahead_of_a_held_recorder(tmp_path):
    """While the recorder is held the forwarding goes on until about ``limit``
    bytes wait in the backlog's pipes, then waits; released, the recorder writes
    every byte, in order, across all the pipes."""
    go = threading.Event()
    fd = os.open(tmp_path / "rec.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    recorder = _HeldRecorder(fd, go)
    src_r, src_w = pipe()
    cap = pipe_size(src_w)
    limit = 8 * cap
    backlog = Backlog(recorder, limit=limit)
    data = random.Random(5).randbytes(20 * cap + 777)
    sink = os.open(os.devnull, os.O_WRONLY)
    forwarded = 0

    def forward() -> None:
        nonlocal forwarded
        pos = 0
        while pos < len(data):
            n = os.write(src_w, data[pos : pos + cap // 3])
            pos += n
            while n:  # as the pump does: what was teed is consumed before the next tee
                k = backlog.tee(src_r, n)
                n -= k
                forwarded += k
                while k:
                    k -= os.splice(src_r, sink, k)

    fwd = threading.Thread(target=forward)
    fwd.start()
    deadline = time.time() + 30
    while forwarded < limit - 2 * cap and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    held = forwarded  # the forwarding got this far with nothing written
    assert limit - 2 * cap <= held <= limit + cap and recorder.recorded == 0
    assert fwd.is_alive()  # and waits there for the recorder
    go.set()
    fwd.join(60)
    backlog.close()
    for f in (src_r, src_w, sink, fd):
        os.close(f)
    assert forwarded == len(data)
    assert recorder.error is None and recorder.recorded == len(data)
    assert (tmp_path / "rec.bin").read_bytes() == data


def test_abandoned_recording_ends_where_the_reader_is(tmp_path):
    """Stopping the decoder: a reader over windows sees the end of what it was
    handed, not the 40 MiB the file holds; a finished one reads them all."""
    path = tmp_path / "rec.bin"
    data = random.Random(9).randbytes(40 * MiB)
    path.write_bytes(data)
    for abandon in (True, False):
        src = FollowSource(path)
        r = Reader(src)
        assert r.bytes(MiB) == data[:MiB]
        if abandon:
            src.abandon()
        else:
            src.finish(len(data))
        got = MiB
        while not r.at_end():
            got += len(r.bytes(min(MiB, r.available())))
        src.close()
        if abandon:
            assert got < 20 * MiB  # the first window (16 MiB and what a refill asked for)
        else:
            assert got == len(data)
