"""What a destination expects: from its own stream, a description, or its schema.

:class:`Destination` gathers what ``check`` compares a source against, from
whichever of these the user has:

* a stream the destination configuration wrote (any input qevm reads: a
  file, a libvirt image, a qcow2 snapshot, compressed): machine type, page
  size, capabilities, RAM blocks with their sizes, every section it sends
  (idstr, instance, version), its description (field layout as it lays it
  out, array lengths from its configuration) and its decoded state (the
  values ``*_EQUAL`` fields are compared with);
* a description (``qevm desc`` output): sections, versions and layouts;
* the destination binary's ``-dump-vmstate`` JSON (a :class:`Schema`):
  machine type, VMSD versions and minimum versions, field versions, every
  subsection the binary knows.

A stream or description and a schema can be combined: the schema adds what
a stream cannot say (minimum versions, field versions, subsections the
destination knows but did not send).  ``None`` everywhere means unknown.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import DescriptionError
from ..format import SECTION_FULL, SECTION_START
from ..vmstate.desc import Description, DeviceDesc, parse_description
from .schema import Schema, SchemaVmsd, is_schema, parse_schema

if TYPE_CHECKING:
    from ..migration import Migration
    from ..vmstate.values import StateNode

#: Largest JSON file (description or schema) read into memory.
MAX_JSON = 256 << 20


@dataclass(eq=False)
class DestBlock:
    """A RAM block of the destination."""

    name: str
    used_length: int
    page_size: int | None = None
    mr_addr: int | None = None


@dataclass(eq=False)
class DestSection:
    """One section the destination has (a SaveStateEntry)."""

    idstr: str
    instance_id: int
    #: The version it would load up to (its ``version_id``); None: unknown.
    version: int | None
    desc: DeviceDesc | None = None
    state: StateNode | None = None
    #: Old-style or live section (its own load function, no VMSD).
    handler: bool = False


@dataclass(eq=False)
class Destination:
    """Everything known of a destination; ``None`` fields are unknown."""

    label: str
    machine: str | None = None
    page_size: int | None = None
    #: Whether the destination expects a configuration section.
    configuration: bool | None = None
    #: Whether its configuration carried the target-page-bits subsection.
    page_bits_sent: bool | None = None
    capabilities: set[str] | None = None
    uuid: bytes | None = None
    blocks: dict[str, DestBlock] | None = None
    #: (idstr, instance) -> section; None when the destination's sections are unknown.
    sections: dict[tuple[str, int], DestSection] | None = None
    description: Description | None = None
    schema: Schema | None = None
    #: Where the destination's own decode had trouble (decoded state not used).
    warnings: list[str] = field(default_factory=list)

    def section(self, idstr: str, instance_id: int) -> DestSection | None:
        """The destination's section, or None when it has none (or it is unknown)."""
        if self.sections is None:
            return None
        return self.sections.get((idstr, instance_id))

    def knows_sections(self) -> bool:
        return self.sections is not None

    def vmsd_schema(self, name: str | None) -> SchemaVmsd | None:
        if self.schema is None or name is None:
            return None
        return self.schema.vmsd(name)

    @property
    def kinds(self) -> list[str]:
        """What the knowledge came from: ``stream``, ``description``, ``schema``."""
        out = []
        if self.blocks is not None:
            out.append("stream")
        elif self.description is not None:
            out.append("description")
        if self.schema is not None:
            out.append("schema")
        return out

    def add_schema(self, schema: Schema) -> None:
        self.schema = schema
        if self.machine is None:
            self.machine = schema.machine


def from_migration(mig: Migration, label: str) -> Destination:
    """What a stream written by the destination configuration tells."""
    dest = Destination(label)
    dest.machine = mig.machine
    dest.page_size = mig.page_size
    conf = mig.configuration
    dest.configuration = conf is not None
    if conf is not None:
        dest.page_bits_sent = conf.target_page_bits is not None
        dest.uuid = conf.uuid
        dest.capabilities = set(conf.capabilities)
    else:
        dest.capabilities = set(mig.capabilities)
    dest.blocks = {
        b.name: DestBlock(b.name, b.used_length, b.page_size, b.mr_addr) for b in mig.ram_blocks
    }
    dest.description = mig.description
    dest.sections = {}
    for rec in mig.section_records():
        if rec.type not in (SECTION_START, SECTION_FULL):
            continue
        e = rec.entry
        assert e is not None
        key = (e.idstr, e.instance_id)
        if key in dest.sections:
            continue
        desc = mig.description.device(e.idstr, e.instance_id) if mig.description else None
        state = rec.content if e.handler is None else rec.node
        dest.sections[key] = DestSection(
            e.idstr,
            e.instance_id,
            rec.version,
            desc,
            state if state is not None and hasattr(state, "fields") else None,
            e.handler is not None,
        )
    return dest


def from_description(desc: Description, label: str) -> Destination:
    """What a description alone tells: its device sections, versions and layouts."""
    dest = Destination(label, page_size=desc.page_size, description=desc)
    dest.sections = {
        (d.name, d.instance_id): DestSection(d.name, d.instance_id, d.version, d)
        for d in desc.devices
    }
    return dest


def load_destination(path: str | os.PathLike[str], *, snapshot: str | None = None) -> Destination:
    """Read whatever ``path`` is: a stream (any container), a description or a schema."""
    from .. import open as qopen
    from ..source import open_source

    label = os.fspath(path)
    with open_source(path, snapshot=snapshot) as src:
        head = _head(src)
        if head.lstrip()[:1] == b"{":
            obj_text = _read_all(src, label)
        else:
            obj_text = None
    if obj_text is not None:
        try:
            obj = json.loads(obj_text)
        except (ValueError, UnicodeDecodeError) as e:
            raise DescriptionError(f"{label}: not valid JSON: {e}") from None
        if is_schema(obj):
            dest = Destination(label)
            dest.add_schema(parse_schema(obj))
            return dest
        return from_description(parse_description(obj_text), label)
    # Sections of the destination's own stream that do not decode lose only
    # their values (the equal-value checks); the rest still tells most.
    with qopen(path, snapshot=snapshot, strict=False) as mig:
        dest = from_migration(mig, label)
        for err in mig.errors:
            dest.warnings.append(f"the destination's stream does not read cleanly: {err}")
    return dest


def _head(src) -> bytes:
    if src.seekable:
        return bytes(src.read_at(src.start, 16))
    data = src.read(16)
    src.unread(data)
    return data


def _read_all(src, label: str) -> bytes:
    chunks = []
    total = 0
    while True:
        data = src.read(1 << 20)
        if not data:
            break
        total += len(data)
        if total > MAX_JSON:
            raise DescriptionError(f"{label}: JSON larger than {MAX_JSON >> 20} MiB")
        chunks.append(data)
    return b"".join(chunks)
