"""One TCP connection of a migration through the tap.

A connection is accepted from the source, told apart by its first bytes
(:mod:`qevm.tap.roles`), connected onward to the destination when its turn
comes, and then forwarded both ways by two :class:`~qevm.tap.pump.Pump`\\ s,
each recording its direction.  When either side fails, the connection is
reset on both sides (as the failure would have reached the other QEMU
without the tap); when both directions have ended it is closed.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from typing import Any

from .pump import Pump


def _nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a reset and wake any thread blocked on it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class Connection:
    """A connection from the source, and the one it is forwarded to."""

    def __init__(self, index: int, sock: socket.socket, peer: Any) -> None:
        self.index = index
        self.down = sock
        self.peer = peer
        self.up: socket.socket | None = None
        self.role: str | None = None
        #: Bytes that told the role (up to 4).
        self.head = b""
        #: ``main.mig``, ``channel-1.bin``... for each direction (``s2d``, ``d2s``).
        self.files: dict[str, str] = {}
        self.s2d: Pump | None = None
        self.d2s: Pump | None = None
        self.times: dict[str, float] = {"accepted": time.time()}
        #: Why it ended abnormally, in words (None: it did not).
        self.error: str | None = None
        #: ``source`` or ``destination``: the side whose failure ended it.
        self.failed_side: str | None = None
        #: ``closed-empty``, ``refused``... when it was never forwarded.
        self.outcome: str | None = None
        #: (reply bytes, bytes the source had sent, time) at each reply chunk.  What
        #: the source had sent, not what was handed on: the destination may read
        #: bytes the forwarding thread has not counted as handed on yet.
        self.reply_marks: list[tuple[int, int, float]] = []
        #: Set once the connection has ended and everything about it was passed on.
        self.done = threading.Event()
        #: Forwarded, refused or closed: later connections may go on.
        self.settled = False
        self._lock = threading.Lock()
        _nodelay(sock)

    # -- forwarding ------------------------------------------------------------
    def connect(self, to: tuple[str, int], timeout: float = 10) -> None:
        """Open the connection to the destination."""
        up = socket.create_connection(to, timeout=timeout)
        up.settimeout(None)
        _nodelay(up)
        self.up = up
        self.times["connected"] = time.time()

    def forward(self, directory: str, on_event) -> None:
        """Start forwarding both ways, recording to ``directory`` (OSError: cannot record)."""
        assert self.up is not None
        fds: dict[str, int] = {}
        try:
            for d, name in self.files.items():
                path = os.path.join(directory, name)
                fds[d] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError:
            for fd in fds.values():
                os.close(fd)
            raise
        self.s2d = Pump(self.down, self.up, fds["s2d"])
        self.d2s = Pump(
            self.up,
            self.down,
            fds["d2s"],
            on_first_byte=lambda: on_event("reply", self),
            on_chunk=self._reply_chunk,
        )
        threads = []
        for name, pump in self.pumps():
            t = threading.Thread(
                target=self._pump, args=(pump, fds[name]), name=f"tap-{name}", daemon=True
            )
            threads.append(t)
            t.start()
        threading.Thread(
            target=self._finish, args=(threads, on_event), name="tap-conn", daemon=True
        ).start()

    def pumps(self) -> list[tuple[str, Pump]]:
        """Its directions (``s2d``, ``d2s``) and their pumps, once it is forwarded."""
        return [(d, p) for d, p in (("s2d", self.s2d), ("d2s", self.d2s)) if p is not None]

    def _reply_chunk(self, total: int) -> None:
        s2d = self.s2d
        self.reply_marks.append((total, s2d.bytes if s2d else 0, time.time()))

    def _pump(self, pump: Pump, fd: int) -> None:
        try:
            pump.run()
        finally:
            os.close(fd)
            if pump.failed:
                self.abort()

    def abort(self) -> None:
        """Reset both sides, as a failing peer would have (one side failed, or the tap stops)."""
        with self._lock:
            for sock in (self.down, self.up):
                if sock is not None:
                    reset(sock)

    def _finish(self, threads: list[threading.Thread], on_event) -> None:
        for t in threads:
            t.join()
        self.times["closed"] = time.time()
        self.failed_side, self.error = self._describe_error()
        for sock in (self.down, self.up):
            if sock is not None:
                sock.close()
        on_event("closed", self)  # which sets ``done`` once it has told the decoder

    def _describe_error(self) -> tuple[str | None, str | None]:
        """Which side failed first (``source``, ``destination``), and how, in words."""
        s, d = self.s2d, self.d2s
        assert s is not None and d is not None
        # the first failure is the cause; the reset that mirrors it follows
        first = min(
            (p for p in (s, d) if p.failed and p.ended is not None),
            key=lambda p: p.ended or 0,
            default=None,
        )
        if first is None:
            return None, None
        if first is s:
            if s.read_error is not None:
                return "source", f"the source broke the connection ({s.read_error.strerror})"
            err = s.write_error
            return "destination", f"the destination stopped receiving ({err.strerror})"  # type: ignore[union-attr]
        if d.read_error is not None:
            return "destination", f"the destination broke the connection ({d.read_error.strerror})"
        return "source", f"the source stopped receiving ({d.write_error.strerror})"  # type: ignore[union-attr]

    @property
    def destination_failed(self) -> bool:
        """Whether the destination reset the connection, or stopped receiving."""
        return self.failed_side == "destination"

    def close_unforwarded(self, outcome: str) -> None:
        """End a connection that was never forwarded."""
        self.outcome = outcome
        self.times["closed"] = time.time()
        if outcome != "closed-empty":
            reset(self.down)
        self.down.close()
        if self.up is not None:
            reset(self.up)
            self.up.close()
        self.done.set()

    def to_json(self) -> dict[str, Any]:
        """What ``session.json`` says of this connection."""
        out: dict[str, Any] = {
            "index": self.index,
            "role": self.role,
            "peer": list(self.peer) if isinstance(self.peer, tuple) else str(self.peer),
            "first_bytes": self.head.hex(),
            "times": self.times,
        }
        if self.outcome:
            out["outcome"] = self.outcome
        for d, pump in self.pumps():
            out[d] = {
                "file": self.files[d] if pump.bytes else None,
                "bytes": pump.bytes,
                "delivered": pump.delivered,
                "recorded": pump.recorded,
                "first_byte": pump.first_byte,
                "ended": pump.ended,
                "zero_copy": pump.zero_copy,
            }
            if pump.record_error is not None:
                out[d]["record_error"] = pump.record_error.strerror
        if self.error:
            out["error"] = self.error
        return out
