"""The JSON VM description QEMU appends after EOF, as typed definitions.

QEMU writes one object per device section it sent (``devices``), each with
the fields and subsections *actually written*, the size of every element,
and nested descriptions for structs.  This module turns that JSON into
:class:`VmsdDesc` / :class:`FieldDesc` trees, keeping the original key/value
pairs (:class:`JsonObject`) so the description can be written back exactly,
including the duplicate keys QEMU emits for ``qtailq``/``qlist``/``gtree``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import DescriptionError


class JsonObject(dict):
    """A JSON object that remembers every key/value pair in order.

    Lookups behave like Python's json (the last duplicate wins); ``pairs``
    keeps all of them for exact re-serialisation and for nested descriptions
    that QEMU writes several times into one object.
    """

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs

    def all(self, key: str) -> list[Any]:
        """Every value written under ``key``, in order."""
        return [v for k, v in self.pairs if k == key]

    def set(self, key: str, value: Any) -> None:
        """Give ``key`` a new value (its last occurrence), or append the pair."""
        for i in range(len(self.pairs) - 1, -1, -1):
            if self.pairs[i][0] == key:
                self.pairs[i] = (key, value)
                break
        else:
            self.pairs.append((key, value))
        super().__setitem__(key, value)

    def remove(self, key: str) -> None:
        """Drop every pair with ``key``."""
        self.pairs[:] = [(k, v) for k, v in self.pairs if k != key]
        super().pop(key, None)


def parse_json(text: bytes | str) -> JsonObject:
    """Parse description JSON keeping duplicate keys."""
    try:
        obj = json.loads(text, object_pairs_hook=JsonObject)
    except (ValueError, UnicodeDecodeError) as e:
        err = DescriptionError(f"the VM description is not valid JSON: {e}")
        # where in the text (JSONDecodeError: a character index; bytes decode as UTF-8)
        pos = getattr(e, "pos", None) if isinstance(e, json.JSONDecodeError) else e.start  # type: ignore[attr-defined]
        if isinstance(e, json.JSONDecodeError) and isinstance(text, bytes):
            pos = len(e.doc[: e.pos].encode("utf-8"))
        err.json_pos = pos  # type: ignore[attr-defined]
        raise err from None
    except RecursionError:
        raise DescriptionError("the VM description is nested too deeply") from None
    if not isinstance(obj, JsonObject):
        raise DescriptionError("the VM description is not a JSON object")
    return obj


@dataclass(eq=False)
class FieldDesc:
    """One entry of a ``fields`` list: a field, or one element run of an array."""

    name: str
    type: str
    size: int
    #: Elements this entry stands for (``array_len``; 1 for a plain field).
    count: int = 1
    #: ``index`` key when QEMU described array elements one by one.
    index: int | None = None
    #: Nested description: ``struct`` for VMS_STRUCT, else the VMSDs written
    #: inline into the field object (vstruct, tmp, qtailq, qlist, gtree).
    nested: list[VmsdDesc] = field(default_factory=list)
    raw: JsonObject | None = None
    #: The resolved field type (cached by :func:`qevm.vmstate.types.field_type`).
    ftype: Any = field(default=None, repr=False, compare=False)

    @property
    def compressed(self) -> bool:
        """True when QEMU described only the first of ``count`` elements."""
        return self.count > 1


@dataclass(eq=False)
class VmsdDesc:
    """A VMState description: the fields and subsections of one VMSD instance."""

    vmsd_name: str | None
    version: int | None
    fields: list[FieldDesc]
    subsections: list[VmsdDesc]
    raw: JsonObject | None = None
    #: Cached fast layout when every field is a fixed-width integer (see codec).
    flat: Any = field(default=None, repr=False, compare=False)

    @property
    def empty(self) -> bool:
        """``"struct": {}`` — QEMU < 10.0 describing a NULL pointer element."""
        return self.vmsd_name is None and not self.fields


@dataclass(eq=False)
class DeviceDesc(VmsdDesc):
    """A top-level ``devices`` entry: a VMSD section, or an old-style one."""

    name: str = ""
    instance_id: int = 0
    #: ``size`` of an old-style (non-VMSD) section.
    legacy_size: int | None = None

    @property
    def legacy(self) -> bool:
        return self.vmsd_name is None


@dataclass(eq=False)
class Description:
    """The whole VM description of a stream."""

    page_size: int | None
    devices: list[DeviceDesc]
    configuration: VmsdDesc | None
    raw: JsonObject
    #: The JSON text exactly as found in the stream.
    text: bytes = b""
    #: Where the text started in the stream (None when loaded from elsewhere).
    offset: int | None = None
    #: Set when ``raw`` was changed (``text`` is then stale and is regenerated).
    modified: bool = False
    _by_key: dict[tuple[str, int], DeviceDesc] = field(default_factory=dict, repr=False)

    def device(self, name: str, instance_id: int) -> DeviceDesc | None:
        """The entry for section ``name``/``instance_id``."""
        return self._by_key.get((name, instance_id))


def _int(obj: JsonObject, key: str, where: str, default: int | None = None) -> int:
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        if v is None and default is None:
            raise DescriptionError(f"{where}: missing integer {key!r}")
        raise DescriptionError(f"{where}: {key!r} is not an integer: {v!r}")
    return v


def _str(obj: JsonObject, key: str, where: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str):
        raise DescriptionError(f"{where}: missing string {key!r}")
    return v


def parse_field(obj: Any, where: str) -> FieldDesc:
    """Build a :class:`FieldDesc` from one ``fields`` entry."""
    if not isinstance(obj, JsonObject):
        raise DescriptionError(f"{where}: field entry is not an object")
    name = _str(obj, "name", where)
    where = f"{where}.{name}"
    ftype = _str(obj, "type", where)
    size = _int(obj, "size", where)
    count = _int(obj, "array_len", where, 1)
    if size < 0 or count < 0:
        raise DescriptionError(f"{where}: negative size or array_len")
    index = obj.get("index")
    nested: list[VmsdDesc] = []
    if "struct" in obj:
        nested.append(parse_vmsd(obj["struct"], where))
    elif "fields" in obj or "vmsd_name" in obj:
        nested.extend(_inline_vmsds(obj, where))
    return FieldDesc(name, ftype, size, count, index, nested, obj)


def _inline_vmsds(obj: JsonObject, where: str) -> list[VmsdDesc]:
    """Split the nested descriptions QEMU wrote directly into a field object.

    Each nested save writes ``vmsd_name``, ``version``, ``fields`` and maybe
    ``subsections``; a list type repeats that once per element.
    """
    out: list[VmsdDesc] = []
    cur: list[tuple[str, Any]] | None = None
    for k, v in obj.pairs:
        if k == "vmsd_name":
            if cur is not None:
                out.append(parse_vmsd(JsonObject(cur), where))
            cur = [(k, v)]
        elif k in ("version", "fields", "subsections") and cur is not None:
            cur.append((k, v))
    if cur is not None:
        out.append(parse_vmsd(JsonObject(cur), where))
    return out


#: Deepest nesting of VMSDs accepted (QEMU's real ones nest a handful deep).
MAX_DEPTH = 64


def parse_vmsd(obj: Any, where: str) -> VmsdDesc:
    """Build a :class:`VmsdDesc` from a ``struct``/subsection object."""
    if where.count("/") + where.count(".") > 4 * MAX_DEPTH:
        raise DescriptionError(f"{where[:200]}...: descriptions nested too deeply")
    if not isinstance(obj, JsonObject):
        raise DescriptionError(f"{where}: VMSD description is not an object")
    name = obj.get("vmsd_name")
    if name is not None and not isinstance(name, str):
        raise DescriptionError(f"{where}: vmsd_name is not a string")
    version = obj.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise DescriptionError(f"{where}: version is not an integer")
    inner = f"{where}/{name}" if name else where
    fields = [parse_field(f, inner) for f in _list(obj, "fields", inner)]
    subs = [parse_vmsd(s, inner) for s in _list(obj, "subsections", inner)]
    return VmsdDesc(name, version, fields, subs, obj)


def _list(obj: JsonObject, key: str, where: str) -> list[Any]:
    v = obj.get(key, [])
    if not isinstance(v, list):
        raise DescriptionError(f"{where}: {key!r} is not a list")
    return v


def parse_device(obj: Any, index: int) -> DeviceDesc:
    """Build a :class:`DeviceDesc` from a ``devices`` entry."""
    where = f"devices[{index}]"
    if not isinstance(obj, JsonObject):
        raise DescriptionError(f"{where} is not an object")
    name = _str(obj, "name", where)
    where = f"device {name!r}"
    instance = _int(obj, "instance_id", where)
    base = parse_vmsd(obj, where)
    legacy_size = obj.get("size") if base.vmsd_name is None else None
    return DeviceDesc(
        base.vmsd_name,
        base.version,
        base.fields,
        base.subsections,
        obj,
        name=name,
        instance_id=instance,
        legacy_size=legacy_size,
    )


def parse_description(text: bytes | str, offset: int | None = None) -> Description:
    """Parse the JSON VM description (``offset``: where its text starts in the stream)."""
    try:
        return _parse_description(text, offset)
    except DescriptionError as e:
        if e.offset is None:
            pos = getattr(e, "json_pos", None)
            e.offset = offset + pos if offset is not None and pos is not None else offset
        if e.section is None:
            e.section = "VM description"
        raise


def _parse_description(text: bytes | str, offset: int | None) -> Description:
    raw = parse_json(text)
    page_size = raw.get("page_size")
    if page_size is not None and (
        not isinstance(page_size, int) or page_size <= 0 or page_size & (page_size - 1)
    ):
        raise DescriptionError(f"page_size {page_size!r} is not a power of two")
    devices = [parse_device(d, i) for i, d in enumerate(_list(raw, "devices", "description"))]
    config = raw.get("configuration")
    desc = Description(
        page_size=page_size,
        devices=devices,
        configuration=parse_vmsd(config, "configuration") if config is not None else None,
        raw=raw,
        text=text.encode() if isinstance(text, str) else bytes(text),
        offset=offset,
    )
    for d in devices:
        desc._by_key.setdefault((d.name, d.instance_id), d)
    return desc
