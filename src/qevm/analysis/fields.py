"""Device state and descriptions, flattened to paths and compared.

Paths are those :mod:`.loader` and ``qevm edit`` use: field names joined by
``/`` through structs and subsections (a subsection by its full VMSD name),
``[i]`` for array elements.  Buffers compare byte by byte and report the
runs that differ, not kilobytes of hex.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import Any

from ..vmstate.desc import FieldDesc, VmsdDesc
from ..vmstate.values import NULL, GTreeValue, StateNode

#: Differing byte runs closer than this are reported as one.
MERGE_GAP = 8
#: Most runs reported per buffer (then one summary entry).
MAX_RUNS = 16


def _join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def flatten(node: StateNode, path: str = "") -> Iterator[tuple[str, Any]]:
    """``(path, leaf)`` for every value of ``node``: integers, bytes, strings, NULL."""
    seen: dict[str, int] = {}
    for fv in node.fields:
        name = fv.desc.name
        # QEMU may describe one array as several entries of one name: number them on.
        base = seen.get(name, 0)
        p = _join(path, name)
        elems = fv.elements
        seen[name] = base + len(elems)
        if fv.desc.count == 1 and not base:
            yield from _leaf(p, elems[0])
        else:
            for k, v in enumerate(elems):
                yield from _leaf(f"{p}[{base + k}]", v)
    for sub in node.subsections:
        yield from flatten(sub.node, _join(path, sub.name))


def _leaf(path: str, v: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(v, StateNode):
        yield from flatten(v, path)
    elif isinstance(v, list):
        for k, e in enumerate(v):
            yield from _leaf(f"{path}[{k}]", e)
    elif isinstance(v, array):
        for k, e in enumerate(v):
            yield f"{path}[{k}]", e
    elif isinstance(v, GTreeValue):
        for k, (key, val) in enumerate(v.items):
            yield from _leaf(f"{path}[{k}].key", key)
            yield from _leaf(f"{path}[{k}].value", val)
    elif v is NULL:
        yield path, None
    else:
        yield path, v


def _show(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    return v


def compare_values(path: str, a: Any, b: Any) -> list[dict[str, Any]]:
    """Entries ``{"field", "a", "b"}`` for one leaf (buffers as their differing runs)."""
    if a == b:
        return []
    if isinstance(a, (bytes, bytearray)) and isinstance(b, (bytes, bytearray)) and len(a) == len(b):
        runs = byte_runs(bytes(a), bytes(b))
        if len(a) <= 64 or not runs:
            return [{"field": path, "a": _show(a), "b": _show(b)}]
        out = [
            {"field": f"{path}[{lo:#x}:{hi:#x}]", "a": a[lo:hi].hex(), "b": b[lo:hi].hex()}
            for lo, hi in runs[:MAX_RUNS]
        ]
        if len(runs) > MAX_RUNS:
            n = sum(hi - lo for lo, hi in runs[MAX_RUNS:])
            out.append({"field": path, "a": None, "b": None, "more": f"{n} more bytes differ"})
        return out
    return [{"field": path, "a": _show(a), "b": _show(b)}]


def byte_runs(a: bytes, b: bytes) -> list[tuple[int, int]]:
    """``[lo, hi)`` runs of differing bytes (runs less than MERGE_GAP apart joined)."""
    import numpy as np

    diff = np.flatnonzero(np.frombuffer(a, np.uint8) != np.frombuffer(b, np.uint8))
    if not len(diff):
        return []
    breaks = np.flatnonzero(np.diff(diff) > MERGE_GAP) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(diff, breaks)]


def compare_nodes(a: StateNode | None, b: StateNode | None) -> list[dict[str, Any]]:
    """Every leaf that differs (a path only one side has: the other is None)."""
    fa = dict(flatten(a)) if a is not None else {}
    fb = dict(flatten(b)) if b is not None else {}
    out: list[dict[str, Any]] = []
    for path, va in fa.items():
        if path in fb:
            out.extend(compare_values(path, va, fb[path]))
        else:
            out.append({"field": path, "a": _show(va), "b": None, "only_in": "a"})
    for path, vb in fb.items():
        if path not in fa:
            out.append({"field": path, "a": None, "b": _show(vb), "only_in": "b"})
    return out


# -- descriptions ----------------------------------------------------------------------


def _shape(f: FieldDesc) -> dict[str, Any]:
    return {"type": f.type, "size": f.size, "count": f.count}


def compare_vmsd(a: VmsdDesc, b: VmsdDesc, path: str = "") -> list[dict[str, Any]]:
    """Differences of two descriptions of one section: versions, fields, subsections."""
    out: list[dict[str, Any]] = []
    if a.version != b.version:
        out.append({"change": "version", "path": path or None, "a": a.version, "b": b.version})
    fa = _by_name(a.fields)
    fb = _by_name(b.fields)
    for name, f in fa.items():
        p = _join(path, name)
        g = fb.get(name)
        if g is None:
            out.append({"change": "field removed", "path": p, "a": _shape(f), "b": None})
            continue
        if (f.type, f.size, f.count) != (g.type, g.size, g.count) and not (f.nested and g.nested):
            out.append({"change": "field changed", "path": p, "a": _shape(f), "b": _shape(g)})
        elif f.nested and g.nested:
            if f.count != g.count:
                out.append({"change": "field changed", "path": p, "a": _shape(f), "b": _shape(g)})
            out.extend(compare_vmsd(f.nested[0], g.nested[0], p))
    for name, g in fb.items():
        if name not in fa:
            out.append(
                {"change": "field added", "path": _join(path, name), "a": None, "b": _shape(g)}
            )
    sa = {s.vmsd_name: s for s in a.subsections}
    sb = {s.vmsd_name: s for s in b.subsections}
    for name, s in sa.items():
        p = _join(path, name or "")
        if name not in sb:
            out.append({"change": "subsection removed", "path": p, "a": s.version, "b": None})
        else:
            out.extend(compare_vmsd(s, sb[name], p))
    for name, s in sb.items():
        if name not in sa:
            p = _join(path, name or "")
            out.append({"change": "subsection added", "path": p, "a": None, "b": s.version})
    return out


def _by_name(fields: list[FieldDesc]) -> dict[str, FieldDesc]:
    """Fields by name; entries QEMU split per element are one array of their total count."""
    out: dict[str, FieldDesc] = {}
    for f in fields:
        g = out.get(f.name)
        if g is None:
            out[f.name] = f
        else:
            out[f.name] = FieldDesc(g.name, g.type, g.size, g.count + f.count, None, g.nested)
    return out
