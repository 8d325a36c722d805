"""Output identical to QEMU's scripts/analyze-migration.py (``-d state``/``-d desc``).

The script shows integers as zero-padded hex strings sized by the field
(signed types add the decimal value when negative), booleans as JSON
booleans, and every type it has no reader for as its bytes in hex separated
by spaces.  Array elements and repeated names become lists, subsections are
keyed by their name, sections by ``"idstr (section_id)"``.  qevm reproduces
that from its own decoding, so users of the script can switch.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..vmstate.codec import Encoder
from ..vmstate.types import IntType, array_bytes, field_type
from ..vmstate.values import NULL, StateNode
from ..wire import Writer

if TYPE_CHECKING:
    from ..migration import Migration
    from ..vmstate.desc import FieldDesc

_SIGNED = {
    "int8",
    "int16",
    "int32",
    "int32 equal",
    "int32 le",
    "int64",
    "int64 equal",
    "uint8 equal",
    "uint16 equal",
}
_UNSIGNED = {"uint8", "uint16", "uint32", "uint32 equal", "uint64"}


def _hex_bytes(data: bytes) -> str:
    return data.hex(" ")


def _element_bytes(f: FieldDesc, v: Any) -> bytes:
    buf = io.BytesIO()
    enc = Encoder(Writer(buf))
    t = field_type(f)
    if isinstance(v, StateNode) or v is NULL or f.type == "struct":
        enc.element_node(v)
    else:
        t.encode(enc, f, v)
    return buf.getvalue()


def _element(f: FieldDesc, v: Any) -> Any:
    ftype = f.type
    if ftype == "struct" and isinstance(v, StateNode):
        return node_compat(v)
    if ftype == "bool":
        return v != 0
    if ftype == "nullptr":
        return "nullptr"
    if ftype == "capability":
        return v
    if isinstance(v, int) and (ftype in _SIGNED or ftype in _UNSIGNED):
        digits = 2 * f.size
        if v < 0:
            return f"0x{v & ((1 << (8 * f.size)) - 1):0{digits}x} ({v})"
        return f"0x{v:0{digits}x}"
    if v is NULL:
        return "30"  # the marker byte, as the script shows types it has no reader for
    if isinstance(v, (bytes, bytearray)):
        return _hex_bytes(v)
    return _hex_bytes(_element_bytes(f, v))


class HexArray(Sequence):
    """Many unsigned values shown as zero-padded hex strings, formatted lazily.

    The JSON writer asks for ``json_chunks()``, so a 256 Ki-entry table never
    exists as a quarter of a million Python strings at once.
    """

    def __init__(self, f: FieldDesc, values: Any) -> None:
        self._t = field_type(f)
        self._values = values
        self._digits = 2 * f.size

    def __len__(self) -> int:
        return len(self._values)

    def _format(self, values: Any) -> list[str]:
        d = self._digits
        h = array_bytes(self._t, values).hex()  # type: ignore[arg-type]
        return ["0x" + h[i : i + d] for i in range(0, len(h), d)]

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self._format(self._values[i])
        return self._format(self._values[i : i + 1 or None])[0]

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, Sequence)) else NotImplemented

    def json_chunks(self, sep: str) -> Any:
        w = self._t.width
        glue = '"' + sep + '"0x'
        step = 1 << 14
        for i in range(0, len(self._values), step):
            data = array_bytes(self._t, self._values[i : i + step])  # type: ignore[arg-type]
            yield '"0x' + data.hex(":", w).replace(":", glue) + '"'  # type: ignore[arg-type]


def _flat_formatters(node: StateNode) -> list[Any] | None:
    """Per-field formatters for nodes whose fields are all plain integers."""
    desc = node.desc
    fmts = _FLAT.get(id(desc))
    if fmts is None:
        fmts = []
        for f in desc.fields:
            if f.count != 1 or f.index is not None or f.type not in _UNSIGNED:
                fmts = False
                break
            fmts.append(f"0x%0{2 * f.size}x")
        if fmts and len({f.name for f in desc.fields}) != len(desc.fields):
            fmts = False
        _FLAT[id(desc)] = (desc, fmts)
    else:
        fmts = fmts[1]
    return fmts or None


_FLAT: dict[int, Any] = {}


def node_compat(node: StateNode) -> dict[str, Any]:
    """A VMSD node as the script's ``VMSDFieldStruct.getDict`` shows it."""
    if not node.subsections and node.desc.flat:
        fmts = _flat_formatters(node)
        if fmts is not None:
            return {fv.desc.name: fmt % fv.value for fv, fmt in zip(node.fields, fmts)}
    out: dict[str, Any] = {}
    lists: set[str] = set()
    for fv in node.fields:
        f = fv.desc
        if f.count == 1:
            vals = [_element(f, fv.value)]
        elif f.type in _UNSIGNED and isinstance(field_type(f), IntType):
            if f.name not in out:
                out[f.name] = HexArray(f, fv.value)
                lists.add(f.name)
                continue
            vals = HexArray(f, fv.value)[:]
        else:
            vals = [_element(f, v) for v in fv.value]
        name = f.name
        for v in vals:
            if name not in out:
                out[name] = v
            elif name in lists:
                if isinstance(out[name], HexArray):
                    out[name] = list(out[name])
                out[name].append(v)
            else:
                out[name] = [out[name], v]
                lists.add(name)
    for s in node.subsections:
        out[s.name] = node_compat(s.node)
    return out


def state_compat(mig: Migration) -> dict[str, Any]:
    """The whole ``-d state`` dictionary.

    Sections that could not be read (``qevm.open(..., strict=False)``) are
    left out: the script's format has no place for an error.
    """
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for rec in mig.section_records():
        entry = rec.entry
        assert entry is not None
        if entry.section_id in seen:
            continue
        seen.add(entry.section_id)
        if any(r.error is not None for r in entry.records):
            continue
        key = f"{entry.idstr} ({entry.section_id})"
        node = rec.content if isinstance(rec.content, StateNode) else rec.node
        if node is not None:
            out[key] = node_compat(node)
        elif entry.handler is not None:
            out[key] = entry.handler.compat(entry)
        else:
            out[key] = ""
    return out


def desc_compat(mig: Migration) -> Any:
    """The description as ``-d desc`` prints it (the parsed JSON)."""
    desc = mig.require_description()
    return desc.raw
