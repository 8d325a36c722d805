"""Writing a recording behind the forwarding, cheaply.

A migration moves gigabytes; writing them through the page cache costs the
kernel a page allocation (and, on a machine whose memory is full of cache, a
reclaim) per 4 KiB: more CPU time than forwarding them, taken from the QEMUs.
So the recording is written in 4 MiB chunks with ``O_DIRECT``, straight from
a few reused page-aligned buffers to the disk, by a writer thread while the
next chunk fills.  What arrives slowly (the return path, a postcopy phase) is
also written as it comes, through the page cache, so that the decoder sees it
at once; the chunk written directly later covers those bytes again.  Where
the file system refuses ``O_DIRECT``, everything goes through the page cache.
"""

from __future__ import annotations

import errno
import mmap
import os
import queue
import select
import threading

#: Bytes written at once with O_DIRECT (a multiple of every block size).
CHUNK = 4 << 20
#: Chunks per recording: one filling, the others being written.
POOL = 4
#: Most bytes moved from the pipe per read.
READ = 1 << 20
#: Seconds without new bytes after which what came is written at once.
SHOW_AFTER = 0.02


def open_direct(fd: int) -> int | None:
    """The file open as ``fd``, opened again for O_DIRECT writes (None: not possible)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | flag)
    except OSError:
        return None


class ChunkWriter:
    """Drains a pipe into the recording open as ``fd``; :meth:`drain` runs on a thread.

    ``recorded`` counts the bytes taken from the pipe (all in the file once
    :meth:`drain` has returned); ``error`` is the first write error, after
    which the pipe is still read to its end (the forwarding must never wait
    for a failed disk) but nothing more is written.
    """

    def __init__(self, fd: int, direct: int) -> None:
        self.fd = fd
        self._direct: int | None = direct
        self.recorded = 0
        self.error: OSError | None = None
        self._free: queue.Queue[mmap.mmap] = queue.Queue()
        self._full: queue.Queue[tuple[mmap.mmap, int] | None] = queue.Queue()
        #: Chunks handed to the writer and not written yet.
        self._pending = 0
        self._written = threading.Condition()

    def drain(self, pipe: int) -> None:
        """Read ``pipe`` to its end, writing what it holds at its offsets."""
        direct = self._direct
        os.set_blocking(pipe, False)
        for _ in range(POOL):
            self._free.put(mmap.mmap(-1, CHUNK))
        writer = threading.Thread(target=self._write_chunks, name="tap-write", daemon=True)
        writer.start()
        try:
            self._fill(pipe)
        finally:
            self._full.put(None)
            writer.join()
            if direct is not None:
                os.close(direct)

    def _fill(self, pipe: int) -> None:
        buf = self._free.get()
        view = memoryview(buf)
        base = fill = shown = 0
        while True:
            try:
                n = os.readv(pipe, [view[fill : min(fill + READ, CHUNK)]])
            except BlockingIOError:
                if select.select([pipe], [], [], SHOW_AFTER)[0]:
                    continue
                if fill > shown:  # a pause: let the decoder see what came
                    self._show(view[shown:fill], base + shown)
                    shown = fill
                select.select([pipe], [], [])
                continue
            if not n:
                if fill > shown:
                    self._show(view[shown:fill], base + shown)
                view.release()
                return
            fill += n
            self.recorded += n
            if fill == CHUNK:
                view.release()
                with self._written:
                    self._pending += 1
                self._full.put((buf, base))
                buf = self._free.get()
                view = memoryview(buf)
                base += CHUNK
                fill = shown = 0

    def _show(self, data: memoryview, offset: int) -> None:
        """Write bytes past the chunks handed to the writer, once those are written.

        Extending the file while a chunk before them is still being written
        directly would make its range readable before it holds its bytes
        (as zeros: a reader would take them for the stream).
        """
        with self._written:
            self._written.wait_for(lambda: self._pending == 0)
        self._write(self.fd, data, offset)

    def _write_chunks(self) -> None:
        while (item := self._full.get()) is not None:
            buf, base = item
            with memoryview(buf) as view:
                if self._direct is not None:
                    try:
                        self._write(self._direct, view, base, direct=True)
                    except OSError:
                        self._direct = None  # refused after all: the page cache from here
                if self._direct is None:
                    self._write(self.fd, view, base)
            self._free.put(buf)
            with self._written:
                self._pending -= 1
                self._written.notify_all()

    def _write(self, fd: int, data: memoryview, offset: int, direct: bool = False) -> None:
        """All of ``data`` at ``offset`` (a refused O_DIRECT write raises, for a retry)."""
        if self.error is not None:
            return
        try:
            while data:
                n = os.pwrite(fd, data, offset)
                data, offset = data[n:], offset + n
        except OSError as e:
            if direct and e.errno == errno.EINVAL and len(data) == CHUNK:
                raise
            self.error = e
