"""Writing RAM out on a background thread while the stream is read.

Copying a gigabyte into the page cache costs the kernel about as much as all
of qevm's own reading and gathering; a :class:`WriteBehind` lets the two run on
different cores.  Writes happen in the order they were queued, so a page sent
again later (or later cleared) still ends with its last content.  Buffers to
gather pages into come from a small pool, which bounds memory: a producer that
gets ahead of the disk waits for a buffer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from .fileio import pwrite_all, pwritev_all

#: Gather buffers in the pool, and the size of each.
POOL_BUFFERS = 4
BUFFER_SIZE = 4 << 20
#: Most bytes queued and not yet written (the producer waits beyond it).
MAX_PENDING = 32 << 20


class WriteBehind:
    """A writer thread with a bounded pool of gather buffers."""

    def __init__(
        self,
        buffers: int = POOL_BUFFERS,
        buffer_size: int = BUFFER_SIZE,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.buffer_size = buffer_size
        self._limit = buffers
        self._made = 0
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._jobs: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._dropping = False
        # bytes queued and not yet written, so that queued copies stay bounded
        self._max_pending = max_pending
        self._pending = 0
        self._written = threading.Condition()

    # -- the producer's side ---------------------------------------------------
    def buffer(self) -> Any:
        """A free gather buffer (a numpy uint8 array of ``buffer_size`` bytes)."""
        self._raise()
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        if self._made < self._limit:
            import numpy as np

            self._made += 1
            return np.empty(self.buffer_size, dtype=np.uint8)
        buf = self._free.get()
        self._raise()
        return buf

    def write(
        self,
        fd: int,
        data: Any,
        dest: int,
        recycle: Any = None,
        after: Callable[[], None] | None = None,
    ) -> None:
        """Queue writing ``data`` (a buffer, or a list of buffers) at ``dest``.

        ``data`` must not change until written; ``recycle`` is the pool buffer
        ``data`` lives in, returned to the pool once written; ``after`` runs
        on the writer thread once ``data`` is written (e.g. to drop input pages).
        """
        self._raise()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="qevm-write", daemon=True)
            self._thread.start()
        size = sum(len(b) for b in data) if isinstance(data, list) else len(data)
        with self._written:
            while self._pending and self._pending + size > self._max_pending:
                self._written.wait()
            self._pending += size
        self._jobs.put((fd, data, dest, size, recycle, after))

    def drain(self) -> None:
        """Wait until every queued write is done (and raise the first that failed)."""
        if self._thread is not None:
            self._jobs.join()
        self._raise()

    def close(self) -> None:
        """Finish the queued writes and stop the thread."""
        self._stop()
        self._raise()

    def abort(self) -> None:
        """Stop without finishing (after an error elsewhere): queued writes are dropped."""
        self._dropping = True
        self._stop()

    def _stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def _raise(self) -> None:
        # A failed write fails every later call: the output is incomplete.
        if self._error is not None:
            raise self._error

    # -- the thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                fd, data, dest, size, recycle, after = job
                if self._error is None and not self._dropping:
                    try:
                        if isinstance(data, list):
                            pwritev_all(fd, data, dest)
                        else:
                            pwrite_all(fd, data, dest)
                        if after is not None:
                            after()
                    except BaseException as e:  # noqa: BLE001 - handed to the producer
                        self._error = e
                if recycle is not None:
                    self._free.put(recycle)
                with self._written:
                    self._pending -= size
                    self._written.notify()
            finally:
                self._jobs.task_done()
