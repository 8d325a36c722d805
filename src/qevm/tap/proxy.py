"""The listening side of ``qevm tap``: migrations, one after another.

:class:`Tap` listens where the source's ``migrate`` points, and forwards
each migration (a :class:`~qevm.tap.session.Session`) to the destination's
``-incoming`` address.  Without ``keep`` it serves one migration and stops;
with it, every migration is recorded under a numbered directory of its own.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .report import summarize, write_session
from .session import DecoderProcess, Session

Emit = Callable[[dict[str, Any]], None]

#: Seconds the listener waits, once every connection of a migration has closed,
#: for one more the source may have opened meanwhile.
LAST_CALL = 0.05


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as a socket address."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    p = int(port)
    if not 0 <= p < 65536:
        raise UsageError(f"port {p} out of range")
    return host, p


class Tap:
    """A recording, decoding proxy between a migration's source and destination."""

    def __init__(
        self,
        listen: tuple[str, int],
        to: tuple[str, int],
        record: str | Path | None = None,
        keep: bool = False,
        on_event: Emit | None = None,
    ) -> None:
        self.to = to
        self.keep = keep
        self.on_event = on_event or (lambda ev: None)
        self._record = Path(record) if record is not None else None
        self._temporary = record is None
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind(listen)
        except OSError as e:
            self.listener.close()
            raise UsageError(f"cannot listen on {listen[0]}:{listen[1]}: {e.strerror}") from None
        self.listener.listen(64)
        self.address = self.listener.getsockname()[:2]
        #: The decoding process of the next migration, started ahead.
        self._spare: DecoderProcess | None = DecoderProcess()
        self.summaries: list[dict[str, Any]] = []
        self._stopping = threading.Event()
        self._count = 0
        #: Stopped in the middle of a migration (or before any).
        self.interrupted = False

    def _directory(self) -> Path:
        self._count += 1
        if self._record is None:
            base = Path(tempfile.mkdtemp(prefix="qevm-tap-"))
        else:
            base = self._record / str(self._count) if self.keep else self._record
        base.mkdir(parents=True, exist_ok=True)
        return base

    def serve(self) -> int:
        """Forward migrations until one ended (or, with ``keep``, until stopped).

        Returns 0 when the (last) migration completed and was recorded and
        decoded whole, 1 otherwise (see :attr:`interrupted` for a stop in the
        middle of one).
        """
        self.on_event({"event": "listening", "listen": list(self.address), "to": list(self.to)})
        status = 1
        try:
            while not self._stopping.is_set():
                session = self._serve_one()
                if session is None:
                    break
                summary = summarize(session)
                write_session(session, summary)
                if self._temporary and summary["status"] == "completed":
                    shutil.rmtree(session.dir, ignore_errors=True)
                    summary["recording"] = None
                self.summaries.append(summary)
                self.on_event(summary)
                # the counts and the recording must be whole too
                ok = summary["status"] == "completed" and not summary.get("incomplete")
                status = 0 if ok else 1
                if not self.keep:
                    break
        finally:
            self.listener.close()
            if self._spare is not None:
                self._spare.finish(None)  # never used: it ends without a word
                self._spare = None
        return status

    def _serve_one(self) -> Session | None:
        session: Session | None = None
        self.listener.settimeout(0.2)
        while True:
            if session is not None and session.quiet.is_set():
                # all its connections closed; one the source opened meanwhile is
                # still in the listen queue (a fast migration's last channel)
                self.listener.settimeout(LAST_CALL)
                try:
                    sock, peer = self.listener.accept()
                except TimeoutError:
                    session.end(self._stopping)
                    self.interrupted = self._stopping.is_set() and session.decoded is None
                    return session
                finally:
                    self.listener.settimeout(0.2)
                sock.settimeout(None)
                session.add(sock, peer)
                continue
            if self._stopping.is_set():
                if session is not None:
                    self.interrupted = True
                    session.stop()
                    return session
                self.interrupted = not self.summaries
                return None
            try:
                sock, peer = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    continue
                raise
            sock.settimeout(None)
            session = session or self._session()
            session.add(sock, peer)

    def _session(self) -> Session:
        decoder, self._spare = self._spare, None
        session = Session(self._directory(), self.to, self.on_event, decoder)
        if self.keep:
            self._spare = DecoderProcess()  # ready for the next migration
        return session

    def stop(self) -> None:
        """Stop serving (from another thread or a signal handler)."""
        self._stopping.set()
