"""The readable tree of decoded state (``qevm state`` without ``--json``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TextIO

from ..vmstate.types import IntType, field_type
from ..vmstate.values import NULL, GTreeValue, StateNode

if TYPE_CHECKING:
    from ..migration import Device

#: Array elements shown before eliding the rest.
MAX_ITEMS = 16


def _scalar(t: Any, v: Any) -> str:
    if v is NULL:
        return "NULL"
    if isinstance(v, (bytes, bytearray)):
        if len(v) > 32:
            return f"{bytes(v[:32]).hex()}... ({len(v)} bytes)"
        return v.hex() if v else "(empty)"
    return t.format(v)


def write_node(node: StateNode, out: TextIO, indent: str = "  ") -> None:
    """Fields (and subsections) of ``node``, one per line."""
    for fv in node.fields:
        f = fv.desc
        t = field_type(f)
        label = f"{indent}{f.name}" + (f"[{f.index}]" if f.index is not None else "")
        vals = fv.elements
        if all(not isinstance(v, (StateNode, list, GTreeValue)) for v in vals):
            if f.count == 1:
                out.write(f"{label} = {_scalar(t, vals[0])}\n")
            else:
                shown = ", ".join(_scalar(t, v) for v in vals[:MAX_ITEMS])
                more = f", ... ({len(vals)} elements)" if len(vals) > MAX_ITEMS else ""
                if isinstance(t, IntType) and len(set(vals)) == 1 and len(vals) > 1:
                    shown, more = f"{_scalar(t, vals[0])} x {len(vals)}", ""
                out.write(f"{label} = [{shown}{more}]\n")
            continue
        for i, v in enumerate(vals):
            sub = f"{label}[{i}]" if f.count != 1 else label
            if isinstance(v, StateNode):
                out.write(f"{sub}: {v.vmsd_name or f.type}\n")
                write_node(v, out, indent + "  ")
            elif isinstance(v, list):
                out.write(f"{sub}: {f.type} of {len(v)}\n")
                for j, e in enumerate(v):
                    out.write(f"{indent}  [{j}]: {e.vmsd_name}\n")
                    write_node(e, out, indent + "    ")
            elif isinstance(v, GTreeValue):
                out.write(f"{sub}: tree of {v.nnodes}\n")
                for key, e in v.items:
                    k = key.vmsd_name if isinstance(key, StateNode) else f"{key:#x}"
                    out.write(f"{indent}  [{k}]\n")
                    write_node(e, out, indent + "    ")
            else:
                out.write(f"{sub} = {_scalar(t, v)}\n")
    for s in node.subsections:
        out.write(f"{indent}subsection {s.name} (version {s.version})\n")
        write_node(s.node, out, indent + "  ")


def inline(value: Any) -> str:
    """A decoded value (numbers, strings, bytes, lists, dicts) as words on one line."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    if isinstance(value, (bytes, bytearray)):
        return _scalar(None, value)
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            text = inline(v)
            parts.append(f"{k} ({text})" if isinstance(v, dict) and v else f"{k} {text}")
        return ", ".join(parts) if parts else "(none)"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(inline(v) for v in value) + "]"
    return str(value)


def write_device(dev: Device, out: TextIO) -> None:
    """A device heading and its state."""
    rec = dev.record
    head = (
        f"{dev.name}  instance {dev.instance_id}  section {dev.section_id}  "
        f"version {dev.version}  @{rec.body_offset:#x}  {rec.body_size} bytes"
    )
    st = dev.state
    if st is not None and st.vmsd_name and st.vmsd_name != dev.name.rsplit("/", 1)[-1]:
        head += f"  (vmsd {st.vmsd_name})"
    out.write(head + "\n")
    if rec.error is not None:
        out.write(f"  error: {rec.error}\n")
        return
    if st is not None:
        write_node(st, out)
    if rec.content is not None and not isinstance(rec.content, StateNode):
        out.write(f"  decoded: {inline(rec.content)}\n")
    if st is None and rec.content is None:
        out.write("  (no description: opaque bytes)\n")


#: Records of a live section shown before the rest are counted only.
MAX_LIVE_RECORDS = 8


def write_live_section(entry: Any, out: TextIO) -> None:
    """A live section (RAM, block, ...): its records and what each held."""
    h = entry.handler
    out.write(
        f"{entry.idstr}  instance {entry.instance_id}  section {entry.section_id}  "
        f"version {entry.version}  ({h.title})\n"
    )
    for rec in entry.records[:MAX_LIVE_RECORDS]:
        head = f"  {rec.type_name:5} @{rec.body_offset:#x}  {rec.body_size} bytes"
        if rec.error is not None:
            out.write(f"{head}  error: {rec.error}\n")
        else:
            out.write(f"{head}  {inline(h.to_json(entry, rec))}\n")
    more = len(entry.records) - MAX_LIVE_RECORDS
    if more > 0:
        out.write(f"  ... {more} more records (--json shows them all)\n")
