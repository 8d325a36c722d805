"""The tap's decoding process: follows the recordings and reports what they hold.

It runs apart from the forwarding (``python -m qevm.tap.decoder``, at the
lowest priority, started before the migration comes so that its start-up
costs the migration nothing), so decoding never takes the forwarding threads'
time: it reads each recording as it grows and may fall behind the wire, never
hold it up.  The forwarding side tells it, one JSON object per line on its
standard input, where the recordings go, which files exist and when they are
complete::

    {"op": "start", "directory": "rec"}
    {"op": "open", "file": "main.mig", "role": "main"}
    {"op": "close", "file": "main.mig", "size": 123456}
    {"op": "end"}                      # all connections closed: finish and report

It answers with events, one JSON object per line on its standard output
(``{"event": "section", "file": "main.mig", "offset": ..., ...}``), every half
second a ``progress`` event, and last a ``decoded`` event with everything it
counted.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, TextIO

from .follow import FollowSource
from .passes import Item, PassCounter
from .roles import MAIN, MULTIFD, PREEMPT, RETURN_PATH
from .watchers import ChannelWatcher, MainWatcher, ReturnPathWatcher, Watcher

#: Seconds between progress events.
PROGRESS_EVERY = 0.5
_NEVER = 1 << 62


class Decoder:
    """Watchers of one migration's recordings, and what they found together."""

    def __init__(self, directory: str, out: TextIO) -> None:
        self.directory = directory
        self._out = out
        self._out_lock = threading.Lock()
        self._lock = threading.Lock()
        self.sources: dict[str, FollowSource] = {}
        self.watchers: dict[str, Watcher] = {}
        self.main: MainWatcher | None = None
        self.passes = PassCounter()
        # sync intervals not placed yet: main items, channel items, how far each got
        self._main_items: dict[int, list[Item]] = {}
        self._main_epoch = 0
        self._chan_items: dict[int, dict[str, list[Item]]] = {}
        self._chan_epoch: dict[str, int] = {}
        #: Connections the tap accepted and has not forwarded or dropped yet: any
        #: may be a multifd channel whose pages of the next interval are to come.
        self._pending: set[int] = set()
        self._placed = 0
        #: Pages the channels carried in each sync interval, per block (a bit each).
        self._sent: dict[tuple[int, str], bytearray] = {}

    # -- output ----------------------------------------------------------------
    def event(self, event: str, /, **fields: Any) -> None:
        """Write one event line."""
        line = json.dumps({"event": event, **fields}, separators=(",", ":"))
        with self._out_lock:
            self._out.write(line + "\n")
            self._out.flush()

    # -- files -----------------------------------------------------------------
    def open(self, name: str, role: str) -> None:
        """A new recording ``name`` of a connection with ``role``."""
        path = os.path.join(self.directory, name)
        src = FollowSource(path, name)
        self.sources[name] = src
        watcher: Watcher | None = None
        if role == MAIN and self.main is None:
            watcher = self.main = MainWatcher(self, name, src)
        elif role in (MULTIFD, PREEMPT) and self.main is not None:
            if role == MULTIFD:
                with self._lock:
                    self._chan_epoch[name] = 0
            watcher = ChannelWatcher(self, name, src, role)
        elif role == RETURN_PATH:
            watcher = ReturnPathWatcher(self, name, src)
        if watcher is None:
            src.close()
            del self.sources[name]
            return
        self.watchers[name] = watcher
        watcher.start()

    def pending(self, index: int) -> None:
        """The tap accepted connection ``index``; what it is, is not known yet."""
        with self._lock:
            self._pending.add(index)

    def settled(self, index: int) -> None:
        """Connection ``index`` was opened (:meth:`open`) or will never be."""
        with self._lock:
            self._pending.discard(index)
            self._place()

    def close(self, name: str, size: int) -> None:
        """Recording ``name`` is complete at ``size`` bytes."""
        src = self.sources.get(name)
        if src is not None:
            src.finish(size)

    def complete(self) -> None:
        """Every connection has closed: recordings not declared complete end as they are."""
        for name, src in self.sources.items():
            if not src.finished:
                src.finish(os.path.getsize(os.path.join(self.directory, name)))
        with self._lock:
            self._pending.clear()
            self._place()

    def stop(self) -> None:
        """Stop following: readers see the end of every recording now."""
        for src in self.sources.values():
            src.abandon()

    def wait(self) -> None:
        """Until every watcher is done."""
        for w in list(self.watchers.values()):
            w.thread.join()

    # -- passes: sync intervals from every sequence, placed in order ------------
    def main_epoch(self, items: list[Item], epoch: int, following: int | None) -> None:
        """The main stream's items of sync interval ``epoch``; it is now in
        ``following`` (None: no more precopy pages)."""
        with self._lock:
            if items:
                self._main_items.setdefault(epoch, []).extend(items)
            self._main_epoch = _NEVER if following is None else following
            self._place()

    def main_finished(self) -> None:
        with self._lock:
            self._main_epoch = _NEVER
            self._place()

    def channel_item(self, name: str, epoch: int, item: Item) -> None:
        with self._lock:
            self._chan_items.setdefault(epoch, {}).setdefault(name, []).append(item)

    def fresh(
        self, epoch: int, block: str, size: int, ps: int, addrs: tuple[int, ...]
    ) -> list[bool]:
        """Which of the pages ``addrs`` (of ``ps`` bytes) of ``block`` no channel carried
        yet in ``epoch``.

        A page is dirty at most once between two sync points, so QEMU queues
        it at most once; QEMU 7.2 could still put a queued page into two
        packets (a race of its channel threads), counted once by QEMU.
        """
        with self._lock:
            bits = self._sent.get((epoch, block))
            if bits is None:
                bits = self._sent[(epoch, block)] = bytearray(-(-size // ps // 8) or 1)
            out = []
            for a in addrs:
                i = a // ps
                mask = 1 << (i & 7)
                seen = bits[i >> 3] & mask
                bits[i >> 3] |= mask
                out.append(not seen)
            return out

    def channel_epoch(self, name: str, epoch: int) -> None:
        """Channel ``name`` has sent everything of the intervals before ``epoch``."""
        with self._lock:
            self._chan_epoch[name] = epoch
            self._place()

    def channel_finished(self, name: str) -> None:
        with self._lock:
            self._chan_epoch[name] = _NEVER
            self._place()

    def _place(self) -> None:
        if self._pending:
            return  # a channel still to be opened may hold pages of any interval
        limit = min([self._main_epoch, *self._chan_epoch.values()])
        known = max([*self._main_items, *self._chan_items, -1])
        while self._placed < limit and self._placed <= known:
            e = self._placed
            # Each channel's packets are in the order the sender filled them;
            # across channels that order is not kept (9.0+ numbers packets as
            # the channel threads take them), so each is a sequence of its own.
            channels = list(self._chan_items.pop(e, {}).values())
            started = self.passes.place([self._main_items.pop(e, []), *channels])
            self._placed += 1
            for key in [k for k in self._sent if k[0] == e]:
                del self._sent[key]
            for n in started:
                pos = self.main.position() if self.main is not None else 0
                name = self.main.name if self.main else None
                done = self.passes.passes[n - 2].to_json() if n > 1 else None
                self.event("pass", number=n, file=name, offset=pos, previous=done)

    # -- reports -----------------------------------------------------------------
    def totals(self) -> dict[str, Any]:
        """Pages by kind over all connections, and per connection."""
        pages = {"normal": 0, "zero": 0, "xbzrle": 0, "compressed": 0}
        per_file: dict[str, Any] = {}
        for name, w in list(self.watchers.items()):
            counts = getattr(w, "counter", None) or getattr(w, "counts", None)
            if counts is None:
                continue
            got = counts.counts.to_json()
            per_file[name] = got
            for k, v in got.items():
                pages[k] += v
        return {"pages": pages, "pages_by_file": per_file}

    def progress(self) -> dict[str, Any]:
        out = self.totals()
        out["passes"] = self.passes.count
        out["decoded"] = {n: s.position for n, s in list(self.sources.items())}
        return out

    def summary(self) -> dict[str, Any]:
        """Everything counted, once every watcher is done."""
        out = self.totals()
        out["passes"] = self.passes.count
        out["per_pass"] = [t.to_json() for t in self.passes.passes]
        m = self.main
        if m is not None:
            if m.counter is not None and m.counter.postcopy:
                post = m.counter.postcopy_counts.to_json()
                for w in self.watchers.values():
                    if isinstance(w, ChannelWatcher) and w.kind == PREEMPT:
                        for k, v in w.counts.counts.to_json().items():
                            post[k] += v
                out["postcopy"] = {"pages": post}
            out["main"] = {
                "complete": m.eof,
                "sections": m.sections,
                "switchover_offset": m.switchover,
                "postcopy_offset": m.postcopy,
                "pings": m.pings,
                "return_path_offset": m.return_path,
                "records": m.records,
            }
        chans = {}
        for name, w in self.watchers.items():
            if isinstance(w, ChannelWatcher):
                chans[name] = {**w.info, "pages": w.counts.counts.to_json(), "bytes": w.bytes}
            elif isinstance(w, ReturnPathWatcher):
                out["return_path"] = {
                    "messages": dict(w.messages),
                    "shut": w.shut,
                    "last": w.last,
                    "requested_bytes": w.requested_bytes,
                    "last_pong": w.last_pong,
                }
        if chans:
            out["channels"] = chans
        errors = [w.error for w in self.watchers.values() if w.error]
        if errors:
            out["errors"] = errors
        return out


def serve(directory: str, control: TextIO, out: TextIO) -> None:
    """Follow the recordings in ``directory`` as ``control`` says; events to ``out``."""
    dec = Decoder(directory, out)
    done = threading.Event()

    def ticker() -> None:
        last = None
        while not done.wait(PROGRESS_EVERY):
            now = dec.progress()
            if now != last:
                dec.event("progress", **now)
                last = now

    threading.Thread(target=ticker, name="tap-progress", daemon=True).start()
    try:
        for line in control:
            msg = json.loads(line)
            op = msg.get("op")
            if op == "open":
                dec.open(msg["file"], msg["role"])
            elif op == "pending":
                dec.pending(msg["index"])
            elif op == "settled":
                dec.settled(msg["index"])
            elif op == "close":
                dec.close(msg["file"], msg["size"])
            elif op == "end":
                dec.complete()
                break
            elif op == "stop":
                dec.stop()
                break
        else:
            dec.stop()  # the tap went away
        dec.wait()
    finally:
        done.set()
    dec.event("progress", **dec.progress())
    dec.event("decoded", t=time.time(), **dec.summary())


def main() -> None:
    """Started ahead of a migration: get ready, then serve the directory named first."""
    try:
        os.nice(19)  # decoding takes only the CPU time the migration leaves
    except OSError:
        pass
    import numpy  # noqa: F401  (the RAM reader's runs: loaded now, not when pages flow)

    first = sys.stdin.readline()
    if not first:
        return  # the tap ended before a migration came
    serve(json.loads(first)["directory"], sys.stdin, sys.stdout)


if __name__ == "__main__":
    main()
