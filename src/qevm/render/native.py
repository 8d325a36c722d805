"""qevm's own JSON form of decoded state.

Integers are JSON numbers, byte buffers hex strings, arrays lists, NULL
pointer elements ``null``; fields of a node form an object (array pieces that
QEMU described as several entries are joined), subsections nest under
``"subsections"``.
"""

from __future__ import annotations

from typing import Any

from ..vmstate.types import IntType, field_type
from ..vmstate.values import NULL, FieldValue, GTreeValue, StateNode


def element_json(t: Any, v: Any) -> Any:
    """One element of a field as JSON."""
    if isinstance(v, StateNode):
        return node_json(v)
    if v is NULL:
        return None
    if isinstance(v, list):
        return [element_json(t, e) for e in v]
    if isinstance(v, GTreeValue):
        return {
            "nnodes": v.nnodes,
            "items": [[element_json(t, k), node_json(n)] for k, n in v.items],
        }
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    return t.to_json(v)


def field_json(fv: FieldValue) -> list[Any]:
    """All elements of one description entry, as a list."""
    t = field_type(fv.desc)
    if fv.desc.count == 1:
        return [element_json(t, fv.value)]
    if isinstance(t, IntType) and t.names[0] != "bool":
        return fv.value  # an array.array; the JSON writer emits it directly
    return [element_json(t, v) for v in fv.value]


def fields_json(node: StateNode) -> dict[str, Any]:
    """The fields of a node, array pieces joined under their name."""
    out: dict[str, Any] = {}
    arrays: set[str] = set()
    for fv in node.fields:
        name = fv.desc.name
        vals = field_json(fv)
        is_array = fv.desc.count != 1 or fv.desc.index is not None
        if name in out:
            prev = list(out[name]) if name in arrays else [out[name]]
            out[name] = prev + list(vals)
            arrays.add(name)
        elif is_array:
            out[name] = list(vals)
            arrays.add(name)
        else:
            out[name] = vals[0]
    return out


def node_json(node: StateNode) -> dict[str, Any]:
    """A node's fields, with its subsections under ``"subsections"``."""
    out = fields_json(node)
    if node.subsections:
        out["subsections"] = {
            s.name: {"version": s.version, **node_json(s.node)} for s in node.subsections
        }
    return out
