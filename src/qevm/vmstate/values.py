"""Decoded VMState values.

A device section decodes into a :class:`StateNode` (one VMSD instance): its
field entries (:class:`FieldValue`, in description order, each covering one
``fields`` entry and so possibly several array elements) and its
subsections.  Every node and value records the absolute offset and size of
its bytes, so the model accounts for every byte of the section.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .desc import FieldDesc, VmsdDesc


class _Null:
    """The NULL-pointer marker of an array of pointers (wire byte ``'0'``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NULL"


#: The single NULL element value.
NULL = _Null()


class FieldValue:
    """The decoded bytes of one description ``fields`` entry."""

    __slots__ = ("desc", "offset", "size", "value")

    def __init__(self, desc: FieldDesc, offset: int, size: int, value: Any) -> None:
        self.desc = desc
        self.offset = offset
        self.size = size
        #: One element's value, or a list of them when ``desc.count > 1``.
        self.value = value

    @property
    def name(self) -> str:
        return self.desc.name

    @property
    def elements(self) -> list[Any]:
        """The element values as a list, whatever the count."""
        return self.value if self.desc.count != 1 else [self.value]

    def __repr__(self) -> str:
        return f"FieldValue({self.desc.name!r}, {self.desc.type!r}, {self.value!r})"


class SubsectionValue:
    """A subsection as found on the wire: marker, name, version, data."""

    __slots__ = ("name", "version", "offset", "node")

    def __init__(self, name: str, version: int, offset: int, node: StateNode) -> None:
        self.name = name
        self.version = version
        #: Offset of the 0x05 marker.
        self.offset = offset
        self.node = node

    @property
    def size(self) -> int:
        return self.node.offset + self.node.size - self.offset


class GTreeValue:
    """A GTree: node count and (key, value) pairs in wire order."""

    __slots__ = ("nnodes", "items")

    def __init__(self, nnodes: int, items: list[tuple[Any, StateNode]]) -> None:
        self.nnodes = nnodes
        self.items = items


class StateNode:
    """One decoded VMSD instance (a section body, a struct element, a subsection)."""

    __slots__ = ("desc", "offset", "size", "fields", "subsections")

    def __init__(
        self,
        desc: VmsdDesc,
        offset: int,
        size: int,
        fields: list[FieldValue],
        subsections: list[SubsectionValue],
    ) -> None:
        self.desc = desc
        self.offset = offset
        self.size = size
        self.fields = fields
        self.subsections = subsections

    @property
    def vmsd_name(self) -> str | None:
        return self.desc.vmsd_name

    def field(self, name: str) -> FieldValue | None:
        """The first field entry named ``name``."""
        for f in self.fields:
            if f.desc.name == name:
                return f
        return None

    def values(self, name: str) -> list[Any]:
        """All element values of field ``name``, joined across its entries."""
        out: list[Any] = []
        for f in self.fields:
            if f.desc.name == name:
                out.extend(f.elements)
        return out

    def get(self, name: str, default: Any = None) -> Any:
        """The value of a scalar field, or a list for an array field."""
        vals = self.values(name)
        if not vals:
            return default
        entries = [f for f in self.fields if f.desc.name == name]
        if len(entries) == 1 and entries[0].desc.count == 1:
            return vals[0]
        return vals

    def subsection(self, name: str) -> StateNode | None:
        """The node of subsection ``name`` (full VMSD name, or its last part)."""
        for s in self.subsections:
            if s.name == name or s.name.rsplit("/", 1)[-1] == name:
                return s.node
        return None

    def walk(self) -> Iterator[StateNode]:
        """This node and every nested node (struct elements, subsections)."""
        yield self
        for f in self.fields:
            for v in f.elements:
                if isinstance(v, StateNode):
                    yield from v.walk()
                elif isinstance(v, list):
                    for e in v:
                        if isinstance(e, StateNode):
                            yield from e.walk()
        for s in self.subsections:
            yield from s.node.walk()

    def __repr__(self) -> str:
        return f"StateNode({self.desc.vmsd_name!r}, {len(self.fields)} fields)"
