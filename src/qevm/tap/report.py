"""The end of a session: did the migration complete, and if not, where it stopped.

:func:`summarize` joins what the forwarding saw (connections, bytes, resets,
times) with what the decoder found (pages, passes, sections, return-path
messages) into the summary ``qevm tap`` prints last, and writes
``session.json``.  A migration completed when the main stream reached its
EOF marker, nothing was reset and the destination did not report a failure
on the return path.  When the destination failed, :func:`locate` says what
the source had sent up to that moment: the record, the offset inside it and,
when the stream's description tells, the field.
"""

from __future__ import annotations

import bisect
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import QevmError

if TYPE_CHECKING:
    from .session import Session


def field_at(node: Any, offset: int, prefix: str = "") -> str | None:
    """The name of the field of a decoded device whose bytes hold ``offset``."""
    from ..vmstate.values import StateNode

    for f in node.fields:
        if f.offset <= offset < f.offset + f.size:
            name = prefix + f.name
            for i, v in enumerate(f.elements):
                if isinstance(v, StateNode) and v.offset <= offset < v.offset + v.size:
                    sub = f"{name}[{i}]/" if f.desc.count != 1 else f"{name}/"
                    return field_at(v, offset, sub) or name
            return name
    for s in node.subsections:
        if s.offset <= offset < s.offset + s.size:
            return field_at(s.node, offset, f"{prefix}{s.name}/") or f"{prefix}{s.name}"
    return None


def locate(main_path: Path, records: list[list[Any]], offset: int) -> dict[str, Any]:
    """Where byte ``offset`` of the main stream falls, from the decoder's records."""
    out: dict[str, Any] = {"offset": offset}
    starts = [r[0] for r in records]
    i = bisect.bisect_right(starts, offset) - 1
    if i < 0:
        out["record"] = "the stream header and configuration"
        return out
    start, end, label, extra = records[i]
    extra = extra or {}
    out["record"] = label
    out["record_offset"] = start
    if extra.get("type"):
        out["type"] = extra["type"]
    if offset >= end:
        if i + 1 == len(records) and label not in ("EOF", "description"):
            cut = _cut_record(main_path, records, end, offset)
            if cut is not None:
                out.update(cut)
                return out
        out["after"] = True  # the record was complete: the next one had not begun
        if i + 1 < len(records):
            out["next"] = records[i + 1][2]
        elif label in ("EOF", "description"):
            out["whole_stream"] = True
        return out
    body = extra.get("body")
    if body is not None and offset >= body:
        out["into_body"] = offset - body
    field = _field(main_path, start, offset)
    if field:
        out["field"] = field
    return out


def _cut_record(
    main_path: Path, records: list[list[Any]], start: int, offset: int
) -> dict[str, Any] | None:
    """The record that begins at ``start`` and was cut before its end (its header only)."""
    from ..format import SECTION_END, SECTION_FULL, SECTION_PART, SECTION_START
    from ..format import SECTION_TYPE_NAMES as TYPES
    from ..source.base import FileSource
    from ..wire import Reader

    names = {r[3]["id"]: r[2] for r in records if r[3] and "id" in r[3]}
    try:
        with FileSource(main_path) as src:
            r = Reader(src, start)
            t = r.u8()
            if t not in (SECTION_START, SECTION_PART, SECTION_END, SECTION_FULL):
                return None
            sid = r.u32()
            label = names.get(sid, f"section id {sid}")
            if t in (SECTION_START, SECTION_FULL):
                label = f"section {r.counted_str()!r}"
                r.skip(8)  # instance id, version
            body = r.offset
    except (QevmError, OSError):
        return None
    out: dict[str, Any] = {"record": label, "record_offset": start, "type": TYPES[t]}
    if offset >= body:
        out["into_body"] = offset - body
    return out


def _field(main_path: Path, record_offset: int, offset: int) -> str | None:
    """The field at ``offset`` of the device section at ``record_offset``, if decodable."""
    import qevm

    try:
        with qevm.open(main_path) as mig:
            for rec in mig.section_records():
                if rec.offset == record_offset:
                    node = rec.content if hasattr(rec.content, "fields") else rec.node
                    return field_at(node, offset) if node is not None else None
    except (QevmError, OSError):
        return None
    return None


def _failure_offset(session: Session, decoded: dict[str, Any]) -> int | None:
    """How much of the main stream the source had sent when the destination failed."""
    main = session.main
    if main is None or main.s2d is None:
        return None
    rp = decoded.get("return_path") or {}
    shut = next((m for m in reversed(rp.get("last", [])) if m["message"] == "SHUT"), None)
    if rp.get("shut") and shut is not None:
        for reply_bytes, sent, _t in main.reply_marks:
            if reply_bytes > shut["offset"]:
                return sent
    return main.s2d.delivered


def outcome(session: Session, decoded: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether the migration completed, and if not, why (in words)."""
    why: list[str] = []
    main = session.main
    dmain = decoded.get("main") or {}
    rp = decoded.get("return_path") or {}
    if main is None:
        why.append("the source opened no main stream")
    elif main.outcome == "refused":
        why.append(main.error or "the destination refused the connection")
    if rp.get("shut"):
        why.append(f"the destination reported a failure on the return path (SHUT {rp['shut']})")
    for c in session.conns:
        if c.error and c.outcome != "refused":
            name = c.files.get("s2d", f"connection {c.index}")
            why.append(f"{name}: {c.error}")
    if main is not None and main.outcome is None and not session.decoded:
        last = (session.decoder.stderr.strip().splitlines() or ["no message"])[-1]
        why.append(f"the decoding process ended without a result ({last})")
    elif (
        main is not None
        and main.outcome is None
        and not dmain.get("complete")
        and not main.error
        and main.s2d is not None
        and main.s2d.record_error is None  # then only the recording is short: said apart
    ):
        # (a connection that was reset explains a stream cut short already)
        errs = decoded.get("errors") or []
        mine = [e for e in errs if e.get("file") == main.files.get("s2d")]
        if mine:
            why.append(f"the main stream could not be decoded: {mine[0].get('text', mine[0])}")
        else:
            why.append("the main stream ended before its EOF marker")
    if not why and _closed_without_shut(decoded):
        why.append(
            "the destination closed the connection without the SHUT that ends a migration "
            "with a return path (its source takes that for a failure)"
        )
    return not why, why


def _closed_without_shut(decoded: dict[str, Any]) -> bool:
    """Whether the source opened a return path and the destination never sent SHUT.

    A destination that loads the whole stream says SHUT 0 (QEMU 2.5 on); 7.2
    says nothing when it fails, it exits: when it had read everything before
    the section it refused, its connection ends as cleanly as a success's.
    """
    opened = (decoded.get("main") or {}).get("return_path_offset") is not None
    return opened and (decoded.get("return_path") or {}).get("shut") is None


def _incomplete(session: Session, decoded: dict[str, Any]) -> list[str]:
    """Why the counts cover less than the migration moved: recordings that
    could not be written, recordings that could not be decoded."""
    out = []
    for c in session.conns:
        for d, pump in c.pumps():
            if pump.record_error is not None:
                out.append(
                    f"{c.files[d]}: recording stopped after {pump.recorded} of "
                    f"{pump.bytes} bytes ({pump.record_error.strerror or pump.record_error})"
                )
    for e in decoded.get("errors") or []:
        out.append(f"{e.get('file')}: not decoded to its end ({e.get('text') or e.get('message')})")
    return out


def summarize(session: Session) -> dict[str, Any]:
    """The last event of a session (also written, with the connections, to session.json)."""
    decoded = dict(session.decoded or {})
    ok, why = outcome(session, decoded)
    counts = session.byte_counts()["bytes"]
    s2d = sum(c.s2d.bytes for c in session.conns if c.s2d is not None)
    firsts = [c.s2d.first_byte for c in session.conns if c.s2d and c.s2d.first_byte]
    ends = [c.times["closed"] for c in session.conns if "closed" in c.times and c.s2d]
    duration = max(ends) - min(firsts) if firsts and ends else 0.0
    pages = dict(decoded.get("pages") or {})
    resent = sum(ch.get("resent", 0) for ch in (decoded.get("channels") or {}).values())
    out: dict[str, Any] = {
        "event": "summary",
        "status": "completed" if ok else "failed",
        "pages": pages,
        "passes": decoded.get("passes", 0),
        "bytes": s2d,
        "bytes_by_file": counts,
        "duration": round(duration, 3),
        "rate": round(s2d / duration) if duration else None,
        "recording": str(session.dir),
    }
    if resent:
        out["resent_pages"] = resent
    incomplete = _incomplete(session, decoded)
    if incomplete:
        out["incomplete"] = incomplete
    for key in ("per_pass", "postcopy", "channels", "return_path", "errors", "pages_by_file"):
        if decoded.get(key):
            out[key] = decoded[key]
    dmain = decoded.get("main") or {}
    for key in ("switchover_offset", "postcopy_offset"):
        off = dmain.get(key)
        if off is not None and session.main is not None:
            t = session.timeline.time_of(session.main.files["s2d"], off)
            at = {"offset": off, "t": round(t - session.started, 3) if t else None}
            out.setdefault(key.removesuffix("_offset"), {}).update(at)
    if not ok:
        out["failure"] = {"reasons": why}
        dest = session.main is not None and (
            session.main.destination_failed
            or (decoded.get("return_path") or {}).get("shut")
            or _closed_without_shut(decoded)
        )
        at = _failure_offset(session, decoded) if dest else None
        if at is not None and session.main is not None:
            path = session.dir / session.main.files["s2d"]
            out["failure"]["source_had_sent"] = locate(path, dmain.get("records") or [], at)
            pong = (decoded.get("return_path") or {}).get("last_pong")
            pings = dmain.get("pings") or {}
            if pong is not None and str(pong) in pings:
                # the destination answers a PING when its loader reaches it
                read = {"ping": pong, "offset": pings[str(pong)]}
                out["failure"]["destination_read"] = read
    if session.decoder.stderr:
        out["decoder_stderr"] = session.decoder.stderr[-4000:]
    return out


def write_session(session: Session, summary: dict[str, Any]) -> Path:
    """``session.json``: the connections, their roles, byte counts and times, and the summary."""
    data = {
        "listen_to": list(session.to),
        "started": session.started,
        "connections": [c.to_json() for c in session.conns],
        "events": session.events,
        "summary": {k: v for k, v in summary.items() if k != "event"},
    }
    path = session.dir / "session.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path
