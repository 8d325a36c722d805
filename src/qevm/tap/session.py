"""One migration through the tap: its connections, its recording, its decoder.

A session starts with the first connection the source opens and ends when
every connection of the migration has closed.  It admits each connection
(its role from its first bytes; the main stream reaches the destination
first), names its recordings, tells the decoding process about them, keeps a
timeline of bytes per file (so events found in the recordings get the time
they crossed the tap), and at the end writes ``session.json`` and the
summary.
"""

from __future__ import annotations

import bisect
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .connection import Connection
from .pump import Pump
from .roles import HEAD, MAIN, PREEMPT, RETURN_PATH, classify, recording_name

#: How long a connection may stay silent, once the main stream is forwarded,
#: before it is taken for the postcopy-preempt channel (QEMU 7.2's destination
#: waits for that channel before it starts loading).
SILENT_GRACE = 0.25
#: Seconds between samples of the byte counters (rates, times of offsets).
SAMPLE_EVERY = 0.1
#: Seconds a finishing decoder may go without reporting anything.
STALLED = 60
#: Seconds other connections wait for a main stream before they go on without it.
NO_MAIN_WAIT = 2.0

Emit = Callable[[dict[str, Any]], None]


class Timeline:
    """When each byte offset of each recording crossed the tap."""

    def __init__(self) -> None:
        self._t: dict[str, list[float]] = {}
        self._n: dict[str, list[int]] = {}
        # sampled by the forwarding side, read by the decoder's events
        self._lock = threading.Lock()

    def sample(self, name: str, t: float, n: int) -> None:
        """``n`` bytes of ``name`` had arrived at ``t`` (the first sample: its first byte)."""
        with self._lock:
            ns = self._n.setdefault(name, [])
            ts = self._t.setdefault(name, [])
            if not ns or n > ns[-1]:
                ns.append(n)
                ts.append(t)

    def _samples(self, name: str) -> tuple[list[int], list[float]]:
        """A consistent copy of ``name``'s samples."""
        with self._lock:
            return list(self._n.get(name, ())), list(self._t.get(name, ()))

    def time_of(self, name: str, offset: int) -> float | None:
        """When byte ``offset`` arrived (interpolated between samples)."""
        ns, ts = self._samples(name)
        if not ns:
            return None
        i = bisect.bisect_right(ns, offset)
        if i >= len(ns):
            return ts[-1]
        if i == 0:
            return ts[0]
        n0, n1, t0, t1 = ns[i - 1], ns[i], ts[i - 1], ts[i]
        return t0 + (t1 - t0) * (offset - n0) / (n1 - n0)

    def rate(self, name: str, now: float, window: float = 1.0) -> float:
        """Bytes per second over the last ``window`` seconds."""
        ns, ts = self._samples(name)
        if len(ns) < 2:
            return 0.0
        i = bisect.bisect_left(ts, now - window)
        i = min(i, len(ts) - 2)
        dt = max(now - ts[i], 1e-3)
        return (ns[-1] - ns[i]) / dt


class DecoderProcess:
    """The decoding child (:mod:`qevm.tap.decoder`) and its event stream."""

    def __init__(self) -> None:
        pkg_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        self.on_event: Callable[[dict[str, Any]], None] = lambda ev: None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qevm.tap.decoder"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._lock = threading.Lock()
        self.stderr = ""
        self.last_event = time.time()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._errs = threading.Thread(target=self._read_stderr, daemon=True)
        self._errs.start()

    def start(self, directory: Path, on_event: Callable[[dict[str, Any]], None]) -> None:
        """Decode the recordings in ``directory``; its events to ``on_event``."""
        self.on_event = on_event
        self.last_event = time.time()
        self.send(op="start", directory=str(directory))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.last_event = time.time()
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            self.on_event(ev)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if len(self.stderr) < 1 << 16:
                self.stderr += line

    def send(self, **msg: Any) -> None:
        with self._lock:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps(msg) + "\n")
                self.proc.stdin.flush()
            except (OSError, ValueError):
                pass  # the decoder is gone; the forwarding goes on

    def finish(self, op: str | None = "end", interrupt: threading.Event | None = None) -> None:
        """Tell it to finish; wait for its last event.

        It may still have recorded bytes to decode; as long as it reports
        progress it is waited for, silent for STALLED seconds (or once
        ``interrupt`` is set: the user stopped the tap) it is stopped.
        """
        if op is not None:
            self.send(op=op)
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass
        while True:
            try:
                self.proc.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                if interrupt is not None and interrupt.is_set():
                    self.proc.kill()
                    self.stderr += "stopped before it had decoded everything\n"
                elif time.time() - self.last_event > STALLED:
                    self.proc.kill()
                    self.stderr += f"the decoder reported nothing for {STALLED} s: stopped\n"
        self._reader.join()
        self._errs.join()


class Session:
    """The connections of one migration and what became of them."""

    def __init__(
        self,
        directory: Path,
        to: tuple[str, int],
        emit: Emit,
        decoder: DecoderProcess | None = None,
    ) -> None:
        self.dir = directory
        self.to = to
        self._emit = emit
        self.conns: list[Connection] = []
        self.main: Connection | None = None
        self.main_forwarded = threading.Event()
        self._channels = 0
        self._mains = 0
        self.started = time.time()
        self.timeline = Timeline()
        self.decoded: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        self.finished = threading.Event()
        #: Every connection so far has closed (the migration may be over).
        self.quiet = threading.Event()
        self._lock = threading.RLock()
        self._turn = threading.Condition()
        self._ending = False
        self._attempted = False
        self.decoder = decoder or DecoderProcess()
        self.decoder.start(directory, self._decoder_event)
        self._ticker = threading.Thread(target=self._tick, name="tap-tick", daemon=True)
        self._ticker.start()

    # -- events ------------------------------------------------------------------
    def emit(self, event: str, /, **fields: Any) -> None:
        self._emit({"event": event, "t": round(time.time() - self.started, 3), **fields})

    def _decoder_event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind == "decoded":
            self.decoded = ev
            return
        t = None
        if "file" in ev and "offset" in ev and ev["file"]:
            name = ev["file"]
            t = self.timeline.time_of(name, ev["offset"])
        ev["t"] = round((t or time.time()) - self.started, 3)
        if kind == "progress":
            ev.update(self.byte_counts())
        if kind not in ("progress", "return-path"):
            self.events.append(ev)
        self._emit(ev)

    def byte_counts(self) -> dict[str, Any]:
        """Bytes and rates of every recording so far."""
        now = time.time()
        counts, rates = {}, {}
        for c in self.conns:
            for d, pump in c.pumps():
                if not pump.bytes:
                    continue
                name = c.files[d]
                counts[name] = pump.bytes
                rates[name] = round(self.timeline.rate(name, now))
        return {"bytes": counts, "rates": rates}

    def _tick(self) -> None:
        while not self.finished.wait(SAMPLE_EVERY):
            now = time.time()
            for c in list(self.conns):
                for d, pump in c.pumps():
                    self._sample(c.files[d], pump, now)

    def _sample(self, name: str, pump: Pump, now: float) -> None:
        """Where ``pump``'s recording ``name`` stands at ``now``, on the timeline."""
        if pump.first_byte is not None:
            self.timeline.sample(name, pump.first_byte, 0)
            self.timeline.sample(name, now, pump.bytes)

    # -- admission -------------------------------------------------------------------
    def add(self, sock: socket.socket, peer: Any) -> None:
        """A connection the source opened: admit it on its own thread."""
        with self._lock:
            conn = Connection(len(self.conns), sock, peer)
            self.conns.append(conn)
            self.quiet.clear()
        self.decoder.send(op="pending", index=conn.index)
        threading.Thread(target=self._admit, args=(conn,), name="tap-admit", daemon=True).start()

    def _admit(self, conn: Connection) -> None:
        try:
            role = self._classify(conn)
            if role is None:
                return
            self._forward(conn, role)
        finally:
            self._check_done()

    def _classify(self, conn: Connection) -> str | None:
        """The connection's role, once it can be told (None: it was closed)."""
        sock = conn.down
        silent_since = time.time()
        first_seen: float | None = None
        while True:
            readable, _, _ = select.select([sock], [], [], 0.02)
            now = time.time()
            if readable:
                try:
                    head = sock.recv(HEAD, socket.MSG_PEEK)
                except OSError:
                    head = b""
                if not head:
                    conn.close_unforwarded("closed-empty")
                    self._settled(conn)
                    self.emit("connection", index=conn.index, outcome="closed without data")
                    return None
                first_seen = first_seen or now
                if len(head) >= HEAD or now - first_seen > 1.0:
                    conn.head = head
                    return classify(head)
            main = self.main
            if self.main_forwarded.is_set() and main is not None:
                since = max(silent_since, main.times.get("connected", now))
                if first_seen is None and now - since >= SILENT_GRACE:
                    return PREEMPT  # silent after the main stream: QEMU's own rule
                if main.done.is_set() and first_seen is None:
                    conn.close_unforwarded("closed-empty")
                    self._settled(conn)
                    self.emit("connection", index=conn.index, outcome="unused, not forwarded")
                    return None

    def _forward(self, conn: Connection, role: str) -> None:
        conn.times["classified"] = time.time()
        if role != MAIN:
            self._wait_turn(conn)
        with self._lock:
            # numbered in the order the source opened them (earlier ones are settled)
            conn.role = role
            if role == MAIN:
                number = self._mains
                self._mains += 1
                if self.main is None:
                    self.main = conn
            else:
                self._channels += 1
                number = self._channels
            conn.files = {
                "s2d": recording_name(role, number),
                "d2s": recording_name(role, number, reply=True),
            }
        self._attempted = True
        try:
            conn.connect(self.to)
        except OSError as e:
            self._not_forwarded(
                conn, "refused", f"cannot connect to the destination: {e.strerror or e}"
            )
            return
        try:
            conn.forward(str(self.dir), self._conn_event)
        except OSError as e:
            self._not_forwarded(conn, "record-failed", f"cannot record it: {e.strerror or e}")
            return
        self.decoder.send(op="open", file=conn.files["s2d"], role=role)  # before it settles
        self._settled(conn)
        self.emit(
            "connection",
            index=conn.index,
            role=role,
            file=conn.files["s2d"],
            first_bytes=conn.head.hex(),
        )
        if role == MAIN:
            self.main_forwarded.set()

    def _not_forwarded(self, conn: Connection, outcome: str, error: str) -> None:
        """A connection classified that could not go on: closed with ``error``."""
        conn.close_unforwarded(outcome)
        conn.error = error
        self.emit("connection", index=conn.index, role=conn.role, error=error)
        if conn.role == MAIN:
            self.main_forwarded.set()
        self._settled(conn)

    def _wait_turn(self, conn: Connection) -> None:
        """Until the main stream and every connection opened before this one went on.

        QEMU before 8.0 takes the first connection as the main stream; the
        others reach the destination in the order the source opened them.  A
        migration whose first connection is no stream (postcopy recovery's
        new main channel starts with a command) goes on without one.
        """
        self.main_forwarded.wait(NO_MAIN_WAIT)
        with self._turn:
            self._turn.wait_for(lambda: all(c.settled for c in self.conns[: conn.index]))

    def _settled(self, conn: Connection) -> None:
        with self._turn:
            conn.settled = True
            self._turn.notify_all()
        self.decoder.send(op="settled", index=conn.index)

    def _conn_event(self, kind: str, conn: Connection) -> None:
        if kind == "reply":
            role = RETURN_PATH if conn is self.main else "reply"
            self.decoder.send(op="open", file=conn.files["d2s"], role=role)
        elif kind == "closed":
            for d, pump in conn.pumps():
                self._sample(conn.files[d], pump, pump.ended or time.time())
                self.decoder.send(op="close", file=conn.files[d], size=pump.recorded)
                if not pump.bytes:
                    try:
                        os.unlink(self.dir / conn.files[d])
                    except OSError:
                        pass
            self.emit(
                "closed",
                index=conn.index,
                role=conn.role,
                file=conn.files.get("s2d"),
                bytes=conn.s2d.bytes if conn.s2d else 0,
                reply_bytes=conn.d2s.bytes if conn.d2s else 0,
                error=conn.error,
            )
            # only now: the decoder must hear of the end of its recordings before "end"
            conn.done.set()
            self._check_done()

    # -- the end -----------------------------------------------------------------------
    def _check_done(self) -> None:
        with self._lock:
            if self._ending or not self._attempted:
                return  # nothing forwarded yet: connections that closed empty end nothing
            if all(c.done.is_set() for c in self.conns):
                self.quiet.set()  # the listener ends the session, unless one more is waiting

    def end(self, interrupt: threading.Event | None = None) -> None:
        """Every connection has closed: finish decoding (the listener calls this),
        unless ``interrupt`` is set meanwhile."""
        with self._lock:
            if self._ending:
                return
            self._ending = True
        self.decoder.finish(interrupt=interrupt)
        self.finished.set()

    def stop(self) -> None:
        """Interrupted: reset every connection, stop decoding."""
        for c in self.conns:
            c.abort()
        with self._lock:
            self._ending = True
        self.decoder.finish("stop")
        self.finished.set()
