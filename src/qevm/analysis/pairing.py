"""Matching the destination's description with the source's, field by field.

The destination's description says what it reads; the source's what was
written.  Fields are paired by name and occurrence (QEMU names repeated
declarations ``name[k]``), nested descriptions element by element, and the
destination's decoded values are found at the same place.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..vmstate.desc import FieldDesc, VmsdDesc
from ..vmstate.values import FieldValue
from .schema import schema_index

if TYPE_CHECKING:
    from .schema import SchemaField
    from .steps import Frame


def find_vmsd(descs: list[VmsdDesc], name: str) -> VmsdDesc | None:
    for d in descs:
        if d.vmsd_name == name:
            return d
    return None


@lru_cache(maxsize=4096)
def _pairs(desc: VmsdDesc, peer: VmsdDesc) -> tuple[FieldDesc | None, ...]:
    """For each field of ``desc``, the field of ``peer`` with its name and occurrence."""
    by_name: dict[str, list[FieldDesc]] = {}
    for g in peer.fields:
        by_name.setdefault(g.name, []).append(g)
    seen: dict[str, int] = {}
    out: list[FieldDesc | None] = []
    for f in desc.fields:
        nth = seen.get(f.name, 0)
        seen[f.name] = nth + 1
        same = by_name.get(f.name, [])
        out.append(same[nth] if nth < len(same) else None)
    return tuple(out)


def peer_field(frame: Frame, f: FieldDesc, i: int) -> FieldDesc | None:
    """The source's description of the same field (same name, same occurrence)."""
    peer = frame.peer
    if peer is None:
        return None
    if peer is frame.desc:
        return f
    return _pairs(frame.desc, peer)[i]


def dest_value(frame: Frame, i: int, f: FieldDesc) -> FieldValue | None:
    vals = frame.values
    if vals is None or i >= len(vals.fields):
        return None
    fv = vals.fields[i]
    return fv if fv.desc.name == f.name else None


def element_value(dval: FieldValue | None, k: int | None) -> Any:
    if dval is None:
        return None
    if k is None:
        return dval.value
    v = dval.value
    return v[k] if isinstance(v, list) and k < len(v) else None


def nested_desc(f: FieldDesc | None, peer: FieldDesc | None, k: int) -> VmsdDesc | None:
    """The nested description of element ``k`` (the destination's, else the source's)."""
    for g in (f, peer):
        if g is not None and g.nested:
            return g.nested[k] if k < len(g.nested) else g.nested[-1]
    return None


def sized_by_data(frame: Frame, src_len: int, dst_len: int) -> bool:
    """Whether an array/buffer length is a value the stream carries (read just before).

    QEMU's VARRAY and VBUFFER fields take their length from a field loaded
    earlier; fixed and configuration-sized arrays do not.  Found when an
    earlier integer field of this VMSD holds the source's length, and the
    destination's own value of it (when known) holds the destination's.
    """
    for fv in frame.loaded:
        if isinstance(fv.value, int) and not isinstance(fv.value, bool) and fv.value == src_len:
            if frame.values is None:
                return True
            dv = dest_value(frame, _index_of(frame, fv), fv.desc)
            if dv is None or dv.value == dst_len:
                return True
    return False


def _index_of(frame: Frame, fv: FieldValue) -> int:
    for i, f in enumerate(frame.desc.fields):
        if f.name == fv.desc.name:
            return i
    return -1


def schema_versions(fields: list[FieldDesc], sfields: list[SchemaField]) -> list[int | None]:
    """Per description field, the ``version_id`` the schema gives it (matched in order)."""
    out: list[int | None] = []
    pos = 0
    for f in fields:
        k = schema_index(sfields, f.name, pos)
        if k is None:
            out.append(None)
            continue
        out.append(sfields[k].version)
        pos = k + 1
    return out


def schema_field(frame: Frame, f: FieldDesc) -> SchemaField | None:
    if frame.schema is None:
        return None
    k = schema_index(frame.schema.fields, f.name)
    return frame.schema.fields[k] if k is not None else None
