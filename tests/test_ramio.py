"""The writer thread, page states and bitmap runs behind one-pass RAM extraction."""

from __future__ import annotations

import os
import random
import time

import numpy as np
import pytest

from qevm import writebehind
from qevm.ramsink import DATA, UNSEEN, ZERO, PageStates, _bit_runs
from qevm.writebehind import WriteBehind


def test_writes_land_in_the_order_they_were_queued(tmp_path):
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        wb = WriteBehind(buffers=2, buffer_size=4096)
        for i in range(200):
            buf = wb.buffer()
            buf[:] = i
            wb.write(fd, buf, (i % 3) * 4096, recycle=buf)
        wb.write(fd, [b"a" * 10, memoryview(b"b" * 10)], 3 * 4096)
        wb.close()
    finally:
        os.close(fd)
    data = path.read_bytes()
    # the last writes to each 4 KiB slot were i = 197, 198, 199
    assert data[:4096] == bytes([198]) * 4096
    assert data[4096:8192] == bytes([199]) * 4096
    assert data[8192:12288] == bytes([197]) * 4096
    assert data[12288:] == b"a" * 10 + b"b" * 10


def test_the_pool_is_bounded_and_buffers_come_back(tmp_path):
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        wb = WriteBehind(buffers=2, buffer_size=4096)
        seen = set()
        for _ in range(20):
            buf = wb.buffer()
            seen.add(id(buf))
            wb.write(fd, buf, 0, recycle=buf)
        wb.close()
    finally:
        os.close(fd)
    assert len(seen) == 2


def test_queued_bytes_stay_bounded_when_the_disk_is_slow(tmp_path, monkeypatch):
    wb = WriteBehind(max_pending=3 * 4096)
    peak = []
    real = writebehind.pwrite_all

    def slow(fd, data, dest):
        peak.append(wb._pending)
        time.sleep(0.002)
        real(fd, data, dest)

    monkeypatch.setattr(writebehind, "pwrite_all", slow)
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for i in range(50):
            wb.write(fd, bytes([i]) * 4096, i * 4096)
        wb.close()
    finally:
        os.close(fd)
    assert max(peak) == 3 * 4096  # the producer waited for the writer
    assert (tmp_path / "out").read_bytes()[-4096:] == bytes([49]) * 4096


def test_a_failed_write_is_raised_to_the_producer(tmp_path):
    (tmp_path / "ro").write_bytes(b"")
    fd = os.open(tmp_path / "ro", os.O_RDONLY)
    try:
        wb = WriteBehind()
        wb.write(fd, b"x" * 100, 0)
        with pytest.raises(OSError):
            wb.drain()
        with pytest.raises(OSError):  # and every later call: the output is incomplete
            wb.write(fd, b"y", 0)
        wb.abort()  # cleanup after an error does not raise again
    finally:
        os.close(fd)


def test_after_runs_once_the_data_is_written(tmp_path):
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    sizes = []
    try:
        wb = WriteBehind()
        wb.write(fd, b"z" * 5000, 0, after=lambda: sizes.append(os.fstat(fd).st_size))
        wb.close()
    finally:
        os.close(fd)
    assert sizes == [5000]


def test_page_states_across_chunks():
    step = 1 << PageStates.SHIFT
    states = PageStates(2 * step + 10)
    assert states.unseen() == 2 * step + 10
    pages = np.array([0, step - 1, step, 2 * step + 9], dtype=np.uint64)
    assert states.set_many(pages, DATA).tolist() == [UNSEEN] * 4
    assert states.set_many(pages[1:3], ZERO).tolist() == [DATA, DATA]
    assert [states.get(int(p)) for p in pages] == [DATA, ZERO, ZERO, DATA]
    assert states.set(5, ZERO) == UNSEEN
    assert states.unseen() == 2 * step + 10 - 5
    states.set_range(step - 2, 4, DATA)
    assert [states.get(p) for p in range(step - 3, step + 3)] == [0, DATA, DATA, DATA, DATA, 0]
    assert states.unseen() == 2 * step + 10 - 7


def _runs_one_bit_at_a_time(bitmap: bytes, npages: int) -> list[tuple[int, int]]:
    bits = [bitmap[i // 8] >> (i % 8) & 1 for i in range(min(npages, len(bitmap) * 8))]
    runs: list[tuple[int, int]] = []
    for i, b in enumerate(bits):
        if b and runs and sum(runs[-1]) == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        elif b:
            runs.append((i, 1))
    return runs


def test_bitmap_runs_across_steps():
    rnd = random.Random(5)
    for _ in range(2000):
        bitmap = bytes(rnd.choice([0, 255, rnd.randrange(256)]) for _ in range(rnd.randrange(12)))
        npages = rnd.randrange(len(bitmap) * 8 + 6)
        step = rnd.randint(1, 4)
        want = _runs_one_bit_at_a_time(bitmap, npages)
        assert list(_bit_runs(bitmap, npages, step)) == want, (bitmap, npages, step)
