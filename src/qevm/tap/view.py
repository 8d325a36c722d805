"""Showing a tapped migration: JSON lines, a plain log, or a live view (rich).

Every output is fed the same events (:class:`~qevm.tap.proxy.Tap`'s
``on_event``).  :class:`JsonLines` prints each as one line; :class:`LogView`
prints the notable ones as text (for a pipe or a log file);
:class:`LiveView` keeps a screen of connections, rates, passes and the last
events up to date on a terminal.  All three end with the summary.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from typing import IO, Any

KINDS = ("normal", "zero", "xbzrle", "compressed")


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def describe(ev: dict[str, Any]) -> str | None:
    """One line for an event worth telling (None for the others)."""
    k = ev.get("event")
    where = f" at {ev['file']}+{ev['offset']:#x}" if "offset" in ev and ev.get("file") else ""
    if k == "listening":
        (lh, lp), (th, tp) = ev["listen"], ev["to"]
        return f"listening on {lh}:{lp}, forwarding to {th}:{tp}"
    if k == "connection":
        if ev.get("error") or ev.get("outcome"):
            return f"connection {ev['index']}: {ev.get('error') or ev.get('outcome')}"
        head = ev["first_bytes"] or "none"
        return f"connection {ev['index']}: {ev['role']} -> {ev['file']} (first bytes {head})"
    if k == "configuration":
        caps = ", ".join(ev.get("capabilities") or []) or "none"
        return f"machine {ev['machine']}, capabilities in the stream: {caps}"
    if k == "ram":
        blocks = ", ".join(f"{b['name']} {size(b['size'])}" for b in ev["blocks"])
        return f"RAM blocks: {blocks}"
    if k == "channel":
        return f"{ev['file']}: multifd channel {ev['channel_id']}"
    if k == "pass":
        prev = ev.get("previous")
        if not prev:
            return f"pass {ev['number']} begins"
        pp = ", ".join(f"{a} {prev['pages'][a]}" for a in KINDS if prev["pages"].get(a))
        return f"pass {ev['number']} begins (pass {ev['number'] - 1}: {pp}; {size(prev['bytes'])})"
    if k == "switchover":
        return f"switchover{where}: {ev['how']}"
    if k == "postcopy":
        return f"postcopy begins{where}"
    if k == "section":
        return (
            f"section {ev['name']} (instance {ev['instance']}, id {ev['id']}, v{ev['version']}) "
            f"{ev['type']}, {ev['size']} bytes{where}"
        )
    if k == "command":
        extra = {
            a: b for a, b in ev.items() if a not in ("event", "t", "file", "offset", "command")
        }
        args = " ".join(f"{a}={b}" for a, b in extra.items())
        return f"command {ev['command']} {args}".rstrip() + where
    if k == "return-path":
        extra = {
            a: (hex(b) if a == "start" else b)
            for a, b in ev.items()
            if a not in ("event", "t", "file", "offset", "message")
        }
        args = " ".join(f"{a}={b}" for a, b in extra.items())
        return f"return path: {ev['message']} {args}".rstrip()
    if k == "eof":
        return f"end of the stream{where}"
    if k == "description":
        return f"VM description, {ev['length']} bytes"
    if k == "closed":
        err = f": {ev['error']}" if ev.get("error") else ""
        return f"{ev.get('file') or 'connection'} closed after {size(ev['bytes'])}{err}"
    if k == "error":
        return f"cannot decode {ev.get('file')}: {ev.get('text') or ev.get('message')}"
    return None


def summary_lines(s: dict[str, Any]) -> list[str]:
    """The summary as text."""
    out = [f"migration {s['status']}"]
    pages = s.get("pages") or {}
    shown = ", ".join(f"{k} {pages[k]}" for k in KINDS if pages.get(k))
    out.append(f"  pages      {shown or 'none'}")
    if s.get("resent_pages"):
        out.append(f"             ({s['resent_pages']} sent twice in one round by a channel)")
    rate = f", {size(s['rate'])}/s" if s.get("rate") else ""
    out.append(f"  bytes      {s['bytes']} ({size(s['bytes'])}) in {s['duration']:.2f} s{rate}")
    out.append(f"  passes     {s.get('passes', 0)}")
    for i, p in enumerate(s.get("per_pass") or [], 1):
        pp = ", ".join(f"{k} {p['pages'][k]}" for k in KINDS if p["pages"].get(k))
        out.append(f"    {i:>4}     {pp}; {size(p['bytes'])}")
    if s.get("switchover"):
        sw = s["switchover"]
        out.append(f"  switchover at main.mig+{sw['offset']:#x}, t={sw['t']} s")
    if s.get("postcopy"):
        pc = s["postcopy"]
        pp = ", ".join(f"{k} {v}" for k, v in (pc.get("pages") or {}).items() if v)
        out.append(f"  postcopy   {pp}")
    for name, ch in (s.get("channels") or {}).items():
        pp = ", ".join(f"{k} {v}" for k, v in ch["pages"].items() if v)
        ident = f" {ch['channel_id']}" if ch.get("channel_id") is not None else ""
        comp = f", {ch['compression']}" if ch.get("compression") not in (None, "none") else ""
        out.append(f"  {name}: {ch['kind']}{ident}{comp}, {pp or 'no pages'}, {size(ch['bytes'])}")
    rp = s.get("return_path")
    if rp:
        msgs = ", ".join(f"{k} {v}" for k, v in rp["messages"].items())
        out.append(f"  return path: {msgs}")
    fail = s.get("failure")
    if fail:
        for why in fail["reasons"]:
            out.append(f"  failed: {why}")
        at = fail.get("source_had_sent")
        if at:
            out.append("  " + where_text(at))
        read = fail.get("destination_read")
        if read:
            out.append(
                f"  the destination had read at least to {read['offset']:#x} of main.mig "
                f"(it answered the PING {read['ping']} there)"
            )
    for why in s.get("incomplete") or []:
        out.append(f"  incomplete: {why}")
    if s.get("recording"):
        out.append(f"  recording  {s['recording']}")
    return out


def where_text(at: dict[str, Any]) -> str:
    """'the source had sent ...' in words."""
    text = f"when the destination failed the source had sent {at['offset']:#x} bytes of main.mig"
    if "record" not in at:
        return text
    rec = at["record"]
    if at.get("whole_stream"):
        return f"{text}: the whole stream (the destination's own log names what it refused)"
    if at.get("after"):
        nxt = f"; {at['next']} had not begun" if at.get("next") else ""
        return f"{text}, up to the end of {rec}{nxt}"
    text += f", into {rec}"
    if at.get("type"):
        text += f" ({at['type']} at {at['record_offset']:#x})"
    if "into_body" in at:
        text += f", {at['into_body']} bytes into its data"
    if at.get("field"):
        text += f", field {at['field']}"
    return text


class JsonLines:
    """One JSON object per event on ``out``; the summary last."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self._lock = threading.Lock()

    def __call__(self, ev: dict[str, Any]) -> None:
        line = json.dumps(ev, separators=(",", ":"), default=str)
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()


class LogView:
    """Notable events as lines of text; the summary last."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self._lock = threading.Lock()

    def __call__(self, ev: dict[str, Any]) -> None:
        if ev.get("event") == "summary":
            lines = summary_lines(ev)
        else:
            text = describe(ev)
            if text is None:
                return
            t = ev.get("t")
            lines = [f"{t:8.3f}  {text}" if isinstance(t, (int, float)) else text]
        with self._lock:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()


class LiveView:
    """A screen kept up to date while the migration runs (rich)."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console

        self.console = console or Console()
        self.header = ""
        self.progress: dict[str, Any] = {}
        self.connections: dict[str, str] = {}
        self.state = "waiting for the source"
        self.recent: deque[str] = deque(maxlen=12)
        self.summary: dict[str, Any] | None = None
        self._live: Any = None

    def __enter__(self) -> LiveView:
        from rich.live import Live

        self._live = Live(get_renderable=self._render, console=self.console, refresh_per_second=4)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
        if self.summary is not None:
            for line in summary_lines(self.summary):
                self.console.print(line, highlight=False, markup=False)

    def __call__(self, ev: dict[str, Any]) -> None:
        k = ev.get("event")
        if k == "listening":
            self.header = describe(ev) or ""
        elif k == "progress":
            self.progress = ev
        elif k == "summary":
            self.summary = ev
            self.state = f"migration {ev['status']}"
        elif k == "connection" and ev.get("role"):
            self.connections[ev["file"]] = ev["role"]
            self.state = "migrating"
        elif k == "switchover":
            self.state = "switchover: " + ev["how"]
        elif k == "postcopy":
            self.state = "postcopy"
        elif k == "pass":
            self.state = f"migrating, pass {ev['number']}"
        text = describe(ev)
        if text and k not in ("listening",):
            t = ev.get("t")
            self.recent.append(f"{t:8.3f}  {text}" if isinstance(t, (int, float)) else text)

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        p = self.progress
        conns = Table(box=None, pad_edge=False)
        for col in ("recording", "role", "bytes", "rate", "decoded"):
            conns.add_column(col, justify="left" if col in ("recording", "role") else "right")
        rates = p.get("rates") or {}
        decoded = p.get("decoded") or {}
        for name, n in (p.get("bytes") or {}).items():
            role = self.connections.get(name, "reply")
            conns.add_row(
                name, role, size(n), f"{size(rates.get(name))}/s", size(decoded.get(name))
            )
        pages = p.get("pages") or {}
        shown = "  ".join(f"{k} {pages[k]}" for k in KINDS if pages.get(k))
        head = Text(self.header, style="bold")
        state = Text(f"{self.state}   passes {p.get('passes', 0)}   pages {shown or '-'}")
        return Group(head, state, conns, Text("\n".join(self.recent), style="dim"))
