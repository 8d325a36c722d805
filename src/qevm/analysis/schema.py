"""A destination binary's ``-dump-vmstate`` JSON: what it can load, by VMSD.

``qemu-system-x86_64 -M MACHINE -dump-vmstate FILE`` writes, for every
device class with a VMSD (savevm.c ``dump_vmstate_json_to_file``), the
VMSD's name, ``version_id``, ``minimum_version_id``, its fields (name,
``version_id``, whether a test function decides if it exists, the element
size in QEMU's own structure, ``num`` for fixed arrays, nested VMSDs) and
every subsection it knows — not only those it would send.  What the schema
cannot tell: wire types, array lengths that come from the configuration,
which devices the machine has, RAM.  ``vmschkmachine`` names the machine
type (an alias such as ``q35`` resolved).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import DescriptionError


@dataclass(eq=False)
class SchemaField:
    """One VMStateField as the destination binary declares it."""

    name: str
    #: The VMSD version from which the field is loaded (0: always).
    version: int
    #: Whether a test function decides at run time if the field is there.
    tested: bool
    #: Element size in QEMU's structure (the wire size for scalars).
    size: int
    #: Element count of a fixed-length array (None: a scalar or a variable array).
    num: int | None = None
    vmsd: SchemaVmsd | None = None


@dataclass(eq=False)
class SchemaVmsd:
    """One VMStateDescription as the destination binary declares it."""

    name: str
    version: int
    minimum_version: int
    fields: list[SchemaField] = field(default_factory=list)
    subsections: list[SchemaVmsd] = field(default_factory=list)

    def subsection(self, name: str) -> SchemaVmsd | None:
        for s in self.subsections:
            if s.name == name:
                return s
        return None


@dataclass(eq=False)
class Schema:
    """Every VMSD of one QEMU binary and machine type."""

    machine: str | None
    #: QOM type name -> its VMSD
    types: dict[str, SchemaVmsd]
    #: VMSD name -> the VMSD (the first device type that uses it)
    vmsds: dict[str, SchemaVmsd]
    #: VMSD name -> a VMSD only seen nested in another (VMSD names are not unique:
    #: i8042's "pckbd" holds a struct whose VMSD is also called "pckbd")
    nested: dict[str, SchemaVmsd] = field(default_factory=dict)

    def vmsd(self, name: str) -> SchemaVmsd | None:
        """The VMSD a section called ``name`` is loaded with (a device's own first)."""
        return self.vmsds.get(name) or self.nested.get(name)


def is_schema(obj: Any) -> bool:
    """Whether parsed JSON is ``-dump-vmstate`` output (not a stream description)."""
    return isinstance(obj, dict) and "vmschkmachine" in obj


def _int(obj: dict, key: str, where: str, default: int | None = None) -> int:
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise DescriptionError(f"{where}: {key!r} is not an integer", section="-dump-vmstate")
    return v


def _vmsd(obj: Any, where: str, seen: dict[str, SchemaVmsd], depth: int = 0) -> SchemaVmsd:
    if depth > 64:
        raise DescriptionError(f"{where}: VMSDs nested too deeply", section="-dump-vmstate")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise DescriptionError(f"{where}: not a VMSD description", section="-dump-vmstate")
    name = obj["name"]
    out = SchemaVmsd(
        name, _int(obj, "version_id", where), _int(obj, "minimum_version_id", where, 0)
    )
    for i, f in enumerate(obj.get("Fields") or []):
        fwhere = f"{where}/{name}.Fields[{i}]"
        if not isinstance(f, dict) or not isinstance(f.get("field"), str):
            raise DescriptionError(f"{fwhere}: not a field", section="-dump-vmstate")
        nested = f.get("Description")
        num = f.get("num")
        out.fields.append(
            SchemaField(
                f["field"],
                _int(f, "version_id", fwhere, 0),
                bool(f.get("field_exists")),
                _int(f, "size", fwhere, 0),
                num if isinstance(num, int) and not isinstance(num, bool) else None,
                _vmsd(nested, fwhere, seen, depth + 1) if nested is not None else None,
            )
        )
    for s in obj.get("Subsections") or []:
        out.subsections.append(_vmsd(s, f"{where}/{name}", seen, depth + 1))
    seen.setdefault(name, out)
    return out


def parse_schema(obj: dict) -> Schema:
    """Build a :class:`Schema` from parsed ``-dump-vmstate`` JSON."""
    machine = obj.get("vmschkmachine", {}).get("Name")
    types: dict[str, SchemaVmsd] = {}
    vmsds: dict[str, SchemaVmsd] = {}
    nested: dict[str, SchemaVmsd] = {}
    for tname, entry in obj.items():
        if tname == "vmschkmachine":
            continue
        if not isinstance(entry, dict) or "Description" not in entry:
            raise DescriptionError(f"type {tname!r} has no Description", section="-dump-vmstate")
        top = _vmsd(entry["Description"], tname, nested)
        types[tname] = top
        vmsds.setdefault(top.name, top)
    return Schema(machine if isinstance(machine, str) else None, types, vmsds, nested)


_OCCURRENCE = re.compile(r"(.*)\[(\d+)\]$")


def schema_index(fields: list[SchemaField], name: str, start: int = 0) -> int | None:
    """Index of the schema field a description's field ``name`` is, from ``start`` on.

    QEMU's description writes ``name[k]`` for the k-th of several fields
    declared with one name (PCIDevice's two ``config``); a name that itself
    ends in ``[k]`` is matched as written first.
    """
    for i in range(start, len(fields)):
        if fields[i].name == name:
            return i
    m = _OCCURRENCE.match(name)
    if m is None:
        return None
    base, k = m.group(1), int(m.group(2))
    same = [i for i, f in enumerate(fields) if f.name == base]
    if k < len(same) and same[k] >= start:
        return same[k]
    return None
