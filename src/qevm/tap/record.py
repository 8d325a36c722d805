"""Writing a recording behind the forwarding, in a bounded window of the page cache.

The recording goes through the page cache: the decoder, following the file,
then reads what just came from memory, not from the disk the recording is
being written to (on a disk slower than the migration, reading it back there
halved the rate at which the tap could forward).  A migration moves
gigabytes, though, and a tap on a host running virtual machines must not
push their cache out with them: so writeback of each new stretch is started
at once, and what lies more than ``window`` bytes behind the end is dropped
from the cache once it is on disk (nothing waits for a write to finish).
The pages dropped are the ones the next writes get, instead of pages
reclaimed from everyone else's cache.  A decoder that has fallen further
behind than that reads from the disk: slower, the same bytes.
"""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import threading

from . import libc

#: Bytes of each recording kept in the page cache behind its end.
WINDOW = 256 << 20
#: Writeback of what came is started every this many bytes.
FLUSH = 32 << 20
#: Most bytes moved from the pipe per system call.
READ = 1 << 20
#: Bytes of pipes the recording may fall behind the forwarding (:class:`Backlog`).
BACKLOG = 32 << 20
#: Pipe size asked for (the kernel may grant less: /proc/sys/fs/pipe-max-size).
PIPE_SIZE = 4 << 20

# <linux/fs.h>: start writeback of the range, without waiting for it
_SYNC_FILE_RANGE_WRITE = 2


_SPLICE_F_NONBLOCK = 2  # <linux/splice.h>

_SYNC_FILE_RANGE = libc.function(
    "sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint], ctypes.c_int
)


_TEE = libc.function(
    "tee", [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint], ctypes.c_ssize_t
)


def pipe() -> tuple[int, int]:
    """A pipe, as large as the kernel grants (up to :data:`PIPE_SIZE`)."""
    r, w = os.pipe()
    for size in (PIPE_SIZE, 1 << 20):
        try:
            import fcntl

            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
            break
        except (ImportError, AttributeError, OSError):
            continue
    return r, w


def pipe_size(fd: int) -> int:
    """The capacity of pipe ``fd``, in bytes."""
    try:
        import fcntl

        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except (ImportError, AttributeError, OSError):
        return 1 << 16


def tee(src: int, dst: int, n: int, nonblock: bool = False) -> int:
    """Duplicate up to ``n`` bytes from the start of pipe ``src`` into pipe ``dst``
    (``src`` keeps them); 0 when ``nonblock`` and ``dst`` is full."""
    assert _TEE is not None
    flags = _SPLICE_F_NONBLOCK if nonblock else 0
    while True:
        k = _TEE(src, dst, n, flags)
        if k >= 0:
            return k
        err = ctypes.get_errno()
        if err == errno.EAGAIN and nonblock:
            return 0
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err))


def tee_available() -> bool:
    """Whether this platform has ``splice`` and ``tee``."""
    return _TEE is not None and hasattr(os, "splice")


class Backlog:
    """A queue of pipes between the forwarding and a :class:`Recorder`.

    The forwarding tees what it forwards into the last pipe; when
    that one is full, it closes the pipe's writing end and starts another, so
    the recorder thread, which splices each pipe into the file until its end,
    may fall up to ``limit`` bytes behind before the forwarding waits for it.
    One pipe held the forwarding whenever the recorder was held for longer
    than a pipe takes to fill (a millisecond at loopback speed): 0.1-0.2 s
    of a 0.5 s migration on a busy two-core host.
    The pipes hold references to the pages the socket received, no copies.
    """

    def __init__(self, recorder: Recorder, limit: int = BACKLOG) -> None:
        self._recorder = recorder
        r, self._w = pipe()
        depth = max(1, limit // pipe_size(self._w) - 1)
        self._pipes: queue.Queue[int | None] = queue.Queue(depth)
        self._pipes.put(r)
        self._thread = threading.Thread(target=self._drain, name="tap-record", daemon=True)
        self._thread.start()

    def tee(self, src: int, n: int) -> int:
        """Duplicate the first ``n`` (at least 1) bytes of pipe ``src`` into the backlog;
        how many were (the caller consumes them from ``src`` before the next call)."""
        k = tee(src, self._w, n, nonblock=True)
        if k:
            return k
        os.close(self._w)  # the recorder reads this pipe to its end, then the next
        r, self._w = pipe()
        self._pipes.put(r)  # waits while the backlog is full
        return tee(src, self._w, n)

    def close(self) -> None:
        """No more bytes: wait until the recorder has written them all."""
        os.close(self._w)
        self._pipes.put(None)
        self._thread.join()

    def _drain(self) -> None:
        while (r := self._pipes.get()) is not None:
            try:
                self._recorder.drain(r)
            finally:
                os.close(r)


class Recorder:
    """Appends to the recording open as ``fd``, keeping its cached part bounded.

    :meth:`drain` (a thread's target) moves a pipe's bytes into the file;
    :meth:`write` appends bytes in memory.  ``recorded`` counts the bytes in
    the file; ``error`` is the first write error, after which nothing more is
    written but a pipe is still read to its end (the forwarding must never
    wait for a failed disk).
    """

    def __init__(self, fd: int, window: int = WINDOW, flush: int = FLUSH) -> None:
        self.fd = fd
        self.window = window
        self.flush = flush
        self.recorded = 0
        self.error: OSError | None = None
        #: Writeback has been started up to here; the cache dropped up to here.
        self._flushed = 0
        self._dropped = 0

    def drain(self, pipe: int) -> None:
        """Move everything ``pipe`` holds into the file, until its end."""
        while True:
            if self.error is not None:
                while os.read(pipe, READ):
                    pass
                return
            try:
                n = os.splice(pipe, self.fd, READ)
            except OSError as e:  # the disk is full...: the recording ends here, not the migration
                self.error = e
                continue
            if not n:
                return
            self._advance(n)

    def write(self, data: bytes) -> None:
        """Append ``data`` (nothing once writing has failed)."""
        if self.error is not None:
            return
        try:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
                self._advance(n)
        except OSError as e:
            self.error = e

    def _advance(self, n: int) -> None:
        self.recorded += n
        if self.recorded - self._flushed < self.flush:
            return
        try:
            if _SYNC_FILE_RANGE is not None:
                _SYNC_FILE_RANGE(
                    self.fd,
                    self._flushed,
                    self.recorded - self._flushed,
                    _SYNC_FILE_RANGE_WRITE,
                )
            self._flushed = self.recorded
            old = self._flushed - self.window
            if old - self._dropped >= self.flush:
                self._drop(self._dropped, old)
        except OSError:
            pass  # only the cache's size is at stake, not the recording

    def _drop(self, start: int, end: int) -> None:
        """Evict what of ``[start, end)`` is on disk from the page cache.

        Nothing waits for the disk here: pages still being written back stay,
        and are tried again with the next stretch (a window's worth further
        back); what a slow disk leaves behind is ordinary clean cache after
        that, which the kernel reclaims as it needs.
        """
        start = max(0, start - self.window)
        os.posix_fadvise(self.fd, start, end - start, os.POSIX_FADV_DONTNEED)
        self._dropped = end
