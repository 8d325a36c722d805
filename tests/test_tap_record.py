"""The tap's recording and its reader: bytes written behind, read while they grow.

A writer thread feeds a pipe in bursts with pauses (so that the recorder both
fills whole chunks, written with O_DIRECT, and shows what came at a pause
through the page cache), while a :class:`FollowSource` reads the growing file
the way the decoder does.  Everything read must be what was fed, at once and
in order: a reader must never see a byte before it is in the file.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from qevm.tap.follow import FollowSource
from qevm.tap.record import CHUNK, ChunkWriter, open_direct


def _feed(w: int, data: bytes, seed: int) -> None:
    rnd = random.Random(seed)
    pos = 0
    while pos < len(data):
        n = rnd.choice([100, 4096, 65536, 1 << 20, 3 << 20])
        pos += os.write(w, data[pos : pos + n])
        if rnd.random() < 0.2:
            time.sleep(0.03)  # a pause: the recorder shows what came
    os.close(w)


class SlowDisk(ChunkWriter):
    """Direct writes that take their time (a busy disk): the window for a reader
    to see a range before its bytes are there."""

    def _write(self, fd, data, offset, direct=False):
        if direct:
            time.sleep(0.15)
        super()._write(fd, data, offset, direct)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_recording_read_while_it_grows(tmp_path, seed):
    data = random.Random(seed).randbytes(3 * CHUNK + 12345)
    path = tmp_path / "rec.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    direct = open_direct(fd)
    assert direct is not None  # this file system takes O_DIRECT: the path under test
    writer = SlowDisk(fd, direct)
    r, w = os.pipe()
    feeder = threading.Thread(target=_feed, args=(w, data, seed))
    drainer = threading.Thread(target=writer.drain, args=(r,))
    src = FollowSource(path)
    got = bytearray()
    reader_error: list[BaseException] = []

    def read() -> None:
        try:
            while chunk := src.read_some(1 << 20):
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
    assert writer.error is None
    assert writer.recorded == len(data)
    src.finish(writer.recorded)
    reader.join(60)
    src.close()
    assert not reader_error
    assert path.read_bytes() == data
    assert bytes(got) == data
