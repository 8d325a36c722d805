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
import os

from . import libc

#: Bytes of each recording kept in the page cache behind its end.
WINDOW = 256 << 20
#: Writeback of what came is started every this many bytes.
FLUSH = 32 << 20
#: Most bytes moved from the pipe per system call.
READ = 1 << 20

# <linux/fs.h>: start writeback of the range, without waiting for it
_SYNC_FILE_RANGE_WRITE = 2


_SYNC_FILE_RANGE = libc.function(
    "sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint], ctypes.c_int
)


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
