"""What a reading of a section leaves behind: where it stopped, what it read.

Shared by :mod:`.loader` (which produces them), :mod:`.localize` and
:mod:`.explain` (which compare and explain them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..vmstate.desc import FieldDesc, VmsdDesc

if TYPE_CHECKING:
    from ..vmstate.values import FieldValue, StateNode
    from .schema import SchemaVmsd

_INDEX = re.compile(r"\[\d+\]$")


class Stop(Exception):
    """QEMU stops loading the section here."""

    def __init__(self, kind: str, message: str, offset: int, path: str, **details: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.offset = offset
        self.path = path
        self.details = details


@dataclass
class Step:
    """One thing read: a field (or array), an array element, a subsection header."""

    path: str
    offset: int
    size: int
    kind: str  # "field", "element", "subsection"
    type: str = ""
    count: int = 1
    value: Any = None
    depth: int = 0
    #: The VMSD the field belongs to (for hints about what sizes it).
    vmsd: str | None = None
    #: Whether it was read to its end (a load that stops leaves the last ones open).
    done: bool = False
    #: The description entry read (what-ifs override it by identity).
    field: FieldDesc | None = None


@dataclass
class Doubt:
    """Something the loader could not decide (QEMU may or may not stop)."""

    kind: str
    path: str
    offset: int
    message: str
    source: Any = None
    destination: Any = None
    problems: list = field(default_factory=list)


@dataclass
class Frame:
    """One VMSD being read: the destination's description and what goes with it."""

    desc: VmsdDesc
    #: The source's description of the same VMSD (None: the source has none).
    peer: VmsdDesc | None
    #: The destination's decoded state of it (None: unknown).
    values: StateNode | None
    schema: SchemaVmsd | None
    path: str
    #: The destination's version of this VMSD (None: unknown).
    version: int | None
    loaded: list[FieldValue] = field(default_factory=list)


def base_name(name: str) -> str:
    """A description field name without the ``[i]`` QEMU appends to repeated names."""
    return _INDEX.sub("", name)


def join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name
