"""Forwarding one direction of a connection, byte for byte, and recording it.

On Linux the forwarded bytes never enter the process: ``splice`` moves them
from the receiving socket into a pipe, ``tee`` duplicates the pipe's pages
into a backlog of pipes, ``splice`` moves the first pipe into the sending
socket, and a recorder thread splices the backlog's pipes into the recording
file (:mod:`.record`: written behind, the forwarding waits for the recording
only when the whole backlog is pending).  Elsewhere, or when the kernel refuses,
the bytes are read into memory, sent, and queued for a recorder thread.

A pump ends at the end of its input (the peer shut down its sending side,
which is passed on) or at an error on either socket (which the connection
then mirrors by resetting both sides).
"""

from __future__ import annotations

import errno
import os
import queue
import socket
import threading
import time
from collections.abc import Callable

from .record import Backlog, Recorder, pipe, tee_available

#: Most bytes moved per system call.
CHUNK = 1 << 20
#: Bytes the copying recorder may hold before the forwarding waits for it.
COPY_BACKLOG = 64 << 20


class Pump:
    """Bytes from ``src`` to ``dst``, recorded to ``record`` (an open file descriptor).

    :meth:`run` is a thread's target.  ``bytes`` counts what was forwarded;
    ``first_byte`` / ``ended`` are ``time.time()`` stamps; ``read_error`` and
    ``write_error`` say why it stopped when it was not the end of the input.
    """

    def __init__(
        self,
        src: socket.socket,
        dst: socket.socket,
        record: int,
        on_first_byte: Callable[[], None] | None = None,
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        self.src = src
        self.dst = dst
        #: Bytes received from ``src``, bytes handed to ``dst``.
        self.bytes = 0
        self.delivered = 0
        self._recorder = Recorder(record)
        self.first_byte: float | None = None
        self.ended: float | None = None
        self.read_error: OSError | None = None
        self.write_error: OSError | None = None
        self._on_first_byte = on_first_byte
        self._on_chunk = on_chunk
        self.zero_copy = tee_available()

    @property
    def recorded(self) -> int:
        """Bytes written to the recording."""
        return self._recorder.recorded

    @property
    def record_error(self) -> OSError | None:
        """The first error writing the recording (the forwarding went on)."""
        return self._recorder.error

    @property
    def failed(self) -> bool:
        return self.read_error is not None or self.write_error is not None

    def run(self) -> None:
        try:
            if self.zero_copy:
                try:
                    self._splice()
                except _SpliceRefused:
                    self.zero_copy = False
                    self._copy()
            else:
                self._copy()
        finally:
            self.ended = time.time()
            if not self.failed:
                try:
                    self.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def _got(self, n: int) -> None:
        if self.first_byte is None:
            self.first_byte = time.time()
            if self._on_first_byte is not None:
                self._on_first_byte()
        self.bytes += n
        if self._on_chunk is not None:
            self._on_chunk(self.bytes)

    # -- zero copy ---------------------------------------------------------------
    def _splice(self) -> None:
        sfd, dfd = self.src.fileno(), self.dst.fileno()
        fwd_r, fwd_w = pipe()
        backlog = Backlog(self._recorder)
        try:
            while True:
                try:
                    n = os.splice(sfd, fwd_w, CHUNK)
                except OSError as e:
                    if e.errno == errno.EINVAL and self.bytes == 0:
                        raise _SpliceRefused from None
                    self.read_error = e
                    return
                if not n:
                    return
                self._got(n)
                left = n
                while left:
                    k = backlog.tee(fwd_r, left)
                    try:
                        while k:
                            sent = os.splice(fwd_r, dfd, k)
                            k -= sent
                            left -= sent
                            self.delivered += sent
                    except OSError as e:
                        self.write_error = e
                        return
        finally:
            backlog.close()
            os.close(fwd_r)
            os.close(fwd_w)

    # -- copying -------------------------------------------------------------------
    def _copy(self) -> None:
        backlog: queue.Queue[bytes | None] = queue.Queue(max(1, COPY_BACKLOG // CHUNK))
        recorder = threading.Thread(
            target=self._drain_queue, args=(backlog,), name="tap-record", daemon=True
        )
        recorder.start()
        try:
            while True:
                try:
                    data = self.src.recv(CHUNK)
                except OSError as e:
                    self.read_error = e
                    return
                if not data:
                    return
                self._got(len(data))
                backlog.put(data)
                try:
                    self.dst.sendall(data)
                except OSError as e:
                    self.write_error = e
                    return
                self.delivered += len(data)
        finally:
            backlog.put(None)
            recorder.join()

    def _drain_queue(self, backlog: queue.Queue[bytes | None]) -> None:
        while (data := backlog.get()) is not None:
            self._recorder.write(data)


class _SpliceRefused(Exception):
    """The kernel does not splice these descriptors: copy instead."""
