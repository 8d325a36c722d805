"""Where device knowledge plugs into ``check``: registries by field type and VMSD.

Generic VMState rules (versions, subsections, field layout, ``*_EQUAL``
fields) are applied by :mod:`.loader`.  What only a device's own code knows
comes from decoders registered here (``qevm.devices.loadchecks`` registers
the PCI config and virtio ones):

* a **field reader** for an opaque field type (``virtio``, ...): given the
  source's bytes from that field on and what the destination is, it says how
  many bytes the destination's load function reads and which of the
  device's checks fail while it reads them (``Bad config data``, features).
  It is asked about every such field, whether or not the two sides' sizes
  differ; when it cannot tell (returns None or no size), a size difference
  is reported as "not yet explained" (QEMU may or may not stop there).
* a **field check** per field type, run as each such field is loaded: the
  checks a type's own ``get()`` makes (``pci config``: bytes the
  destination's config space has read-only and the source's differ in);
* a **device check** per VMSD name, run once the section's fields were read
  the destination's way: post-load checks on decoded state.

Problems they return carry the offset where QEMU would notice, so they take
their place in load order among the generic ones.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..migration import Migration
    from ..vmstate.desc import DeviceDesc, FieldDesc
    from ..vmstate.values import StateNode
    from .problems import Problem
    from .target import Destination


@dataclass
class FieldContext:
    """An opaque field as the destination is about to read it."""

    section: str
    instance_id: int
    vmsd_name: str | None
    #: Path of the field inside the section (``virtio``).
    path: str
    #: The destination's description of the field (its size is what the destination wrote).
    field: FieldDesc
    #: The source's description of the same field, if it has one.
    source_field: FieldDesc | None
    #: The source's bytes from the field's first byte to the section's footer.
    data: bytes
    #: Absolute offset of ``data[0]`` in the source stream.
    offset: int
    #: The destination's own value of the field (its bytes), when known.
    destination_value: Any
    destination: Destination
    source: Migration | None = None
    #: For field checks: bytes the destination's layout read for the field.
    read_size: int | None = None


@dataclass
class FieldVerdict:
    """How the destination reads an opaque field."""

    #: Bytes its load function consumes (None: cannot tell).
    size: int | None
    #: Checks of the device's load function that fail, in the order it makes them.
    problems: list[Problem] = field(default_factory=list)
    #: What the user should know that does not stop the load (QEMU accepts it).
    notes: list[str] = field(default_factory=list)


@dataclass
class SectionContext:
    """A device section after the destination's layout read it."""

    section: str
    instance_id: int
    vmsd_name: str | None
    #: The source's section as the destination's layout read it (None if it did not get through).
    loaded: StateNode | None
    #: The source's section decoded with the source's own description.
    source_state: StateNode | None
    #: The destination's own state of this section (a stream destination).
    destination_state: StateNode | None
    destination_desc: DeviceDesc | None
    destination: Destination
    source: Migration | None = None
    #: Offsets of the section body in the source stream.
    body_offset: int = 0
    body_end: int = 0


FieldReader = Callable[[FieldContext], FieldVerdict | None]
FieldCheck = Callable[[FieldContext], "list[Problem]"]
DeviceCheck = Callable[[SectionContext], "list[Problem]"]

#: field type name -> reader
FIELD_READERS: dict[str, FieldReader] = {}
#: field type name -> checks made when a field of that type is loaded
FIELD_CHECKS: dict[str, list[FieldCheck]] = {}
#: (VMSD name glob, check)
DEVICE_CHECKS: list[tuple[str, DeviceCheck]] = []


def register_field_reader(type_name: str) -> Callable[[FieldReader], FieldReader]:
    """Decorator: ``fn(FieldContext) -> FieldVerdict | None`` for opaque fields of a type."""

    def deco(fn: FieldReader) -> FieldReader:
        FIELD_READERS[type_name] = fn
        return fn

    return deco


def register_field_check(type_name: str) -> Callable[[FieldCheck], FieldCheck]:
    """Decorator: ``fn(FieldContext) -> [Problem]``, run on every field of a type as it
    is loaded (``pci config``: the bytes the destination's config space refuses)."""

    def deco(fn: FieldCheck) -> FieldCheck:
        FIELD_CHECKS.setdefault(type_name, []).append(fn)
        return fn

    return deco


def field_checks(type_name: str) -> list[FieldCheck]:
    return FIELD_CHECKS.get(type_name, [])


def register_device_check(vmsd_glob: str) -> Callable[[DeviceCheck], DeviceCheck]:
    """Decorator: ``fn(SectionContext) -> [Problem]`` for sections whose VMSD matches."""

    def deco(fn: DeviceCheck) -> DeviceCheck:
        DEVICE_CHECKS.append((vmsd_glob, fn))
        return fn

    return deco


def field_reader(type_name: str) -> FieldReader | None:
    return FIELD_READERS.get(type_name)


def device_checks(vmsd_name: str | None) -> list[DeviceCheck]:
    if vmsd_name is None:
        return []
    return [fn for glob, fn in DEVICE_CHECKS if fnmatch.fnmatchcase(vmsd_name, glob)]


def load_plugins() -> None:
    """Import the device decoders' checks (``qevm.devices.loadchecks``) when installed."""
    try:
        import importlib

        importlib.import_module("qevm.devices.loadchecks")
    except ImportError:
        pass
