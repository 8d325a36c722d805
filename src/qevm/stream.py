"""Stream framing (QEMU's savevm.c): the records a stream is made of, and how it is read.

The loader (:func:`qevm.loadvm.parse_stream`) walks a stream once, front to
back, and produces these records in order with their exact extents: the
header, the configuration, commands, sections (:class:`SectionEntry` per
section id, :class:`SectionRecord` per START/PART/END/FULL), EOF and the
VM description.  Live sections (RAM, ...) are read by their handlers
(:mod:`qevm.sections`) as they come; device (VMSD) sections are delimited
and decoded by :mod:`qevm.delimit`.

Strict parsing (the default) raises the first error.  Otherwise a record that
cannot be read keeps its error (:attr:`SectionRecord.error`, or a
:class:`BrokenRecord` for bytes that are no record), reading resumes at the
next record found, and :attr:`ParsedStream.errors` lists every error in
stream order.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import commands as C
from .configuration import Configuration
from .errors import DescriptionError, QevmError
from .format import (
    FILE_MAGIC,
    FILE_VERSION,
    SECTION_FULL,
    SECTION_TYPE_NAMES,
    VMDESCRIPTION,
)
from .source.base import Source
from .vmstate.desc import Description, DeviceDesc, parse_description
from .vmstate.values import StateNode
from .wire import Reader

#: PACKAGED blobs inside PACKAGED blobs (QEMU nests none).
MAX_PACKAGED_DEPTH = 8
#: Largest JSON description accepted (QEMU's are a few MB at most).
MAX_DESCRIPTION = 256 << 20


@dataclass(eq=False)
class Record:
    """Something at ``offset`` in the stream, ending before ``end``."""

    offset: int
    end: int
    #: Why this record could not be read (non-strict parsing only).
    error: QevmError | None = field(default=None, kw_only=True)

    @property
    def kind(self) -> str:
        return type(self).__name__.removesuffix("Record").lower()


@dataclass(eq=False)
class HeaderRecord(Record):
    magic: int = FILE_MAGIC
    version: int = FILE_VERSION


@dataclass(eq=False)
class ConfigurationRecord(Record):
    config: Configuration | None = None


@dataclass(eq=False)
class CommandRecord(Record):
    cmd: int = 0
    length: int = 0
    payload: bytes = b""
    info: dict = field(default_factory=dict)
    #: The command number as written (QEMU 3.0 wrote RECV_BITMAP as 9).
    wire_cmd: int | None = None
    #: PACKAGED: the records of the nested stream, and its extent.
    nested: list[Record] | None = None
    nested_offset: int = 0
    nested_end: int = 0

    @property
    def name(self) -> str:
        return C.command_name(self.cmd)


@dataclass(eq=False)
class EofRecord(Record):
    pass


@dataclass(eq=False)
class DescriptionRecord(Record):
    length: int = 0
    description: Description | None = None


@dataclass(eq=False)
class TrailingRecord(Record):
    """Bytes after the stream that are not part of it (an error)."""


@dataclass(eq=False)
class BrokenRecord(Record):
    """Bytes that are no record, from where one could not be read to where reading resumed."""


@dataclass(eq=False)
class SectionEntry:
    """One registered state handler as seen in the stream (one section id)."""

    section_id: int
    idstr: str
    instance_id: int
    version: int
    #: The section's own format (a :class:`qevm.sections.registry.SectionHandler`),
    #: None for a section only its VMSD describes.
    handler: Any
    records: list[SectionRecord] = field(default_factory=list)
    state: Any = None
    desc: DeviceDesc | None = None

    @property
    def label(self) -> str:
        return f"{self.idstr}#{self.instance_id}" if self.instance_id else self.idstr


@dataclass(eq=False)
class SectionRecord(Record):
    type: int = SECTION_FULL
    entry: SectionEntry | None = None
    body_offset: int = 0
    body_end: int = 0
    footer: bool = False
    #: Decoded content: a StateNode for VMSD sections, the handler's result otherwise.
    content: Any = None
    #: VMSD sections of handlers that are also described (old-style): the node.
    node: StateNode | None = None
    #: The body's bytes, kept when it must be decoded later from a streaming input.
    raw: bytes | None = None
    #: START/FULL: the version written in this record's header.
    version: int | None = None
    #: FULL: the description entry QEMU wrote while saving this section.
    desc: DeviceDesc | None = None

    @property
    def type_name(self) -> str:
        return SECTION_TYPE_NAMES.get(self.type, str(self.type))

    @property
    def body_size(self) -> int:
        return self.body_end - self.body_offset


class ParseContext:
    """State shared by the framing and the section handlers."""

    def __init__(self, r: Reader, options: ParseOptions) -> None:
        self.r = r
        self.options = options
        self.page_size: int | None = options.page_size
        self.capabilities: set[str] = set()
        self.postcopy: dict | None = None
        self.machine: str | None = None
        self.warnings: list[str] = []
        #: Set by RAM: called with progress (offset) on long sections.
        self.progress = options.progress

    def warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)


@dataclass
class ParseOptions:
    """How to read a stream."""

    #: Description to decode device sections with (else the stream's own).
    description: Description | None = None
    #: The stream's own description, found before reading by searching from
    #: the end of a file: device sections are delimited by decoding them.
    own_description: Description | None = None
    #: Target page size when known in advance.
    page_size: int | None = None
    #: Factory of the RAM page consumer (an index, or a sink writing files).
    ram_consumer: Callable[[ParseContext], Any] | None = None
    #: Called with the current offset now and then.
    progress: Callable[[int], None] | None = None
    #: Decode device sections (off for RAM-only work; those delimited by
    #: decoding them with a description known beforehand are decoded anyway).
    decode_devices: bool = True
    #: Raise the first error (else keep going: see the module docstring).
    strict: bool = True
    #: Called with every record as soon as it has been read (nested ones of a
    #: PACKAGED blob before the blob's own record), for readers that follow a
    #: stream while it is being written.
    on_record: Callable[[Record], None] | None = None


@dataclass(eq=False)
class ParsedStream:
    """Everything the framing found."""

    source: Source
    header: HeaderRecord
    records: list[Record]
    entries: dict[int, SectionEntry]
    configuration: Configuration | None
    description: Description | None
    footers: bool | None
    context: ParseContext
    #: Every error met (non-strict parsing), in stream order.
    errors: list[QevmError] = field(default_factory=list)


def locate_description(source: Source) -> Description | None:
    """Find the description of a seekable stream by searching from its end.

    The JSON must be the last thing in the input: a candidate ``{`` at ``p``
    is accepted only if ``p - 5`` holds 0x06 and the be32 before ``p`` equals
    the exact distance from ``p`` to the end.  No fixed-size tail is assumed.
    """
    rfind = getattr(source, "rfind", None)
    if not source.seekable or not source.size or rfind is None:
        return None
    end = source.size
    lo = max(source.start + 5, end - MAX_DESCRIPTION)
    pos = end
    while True:
        p = rfind(b"{", lo, pos)
        if p < 0:
            return None
        head = bytes(source.read_at(p - 5, 5))
        if head[0] == VMDESCRIPTION and struct.unpack(">I", head[1:])[0] == end - p:
            try:
                return parse_description(bytes(source.read_at(p, end - p)), p)
            except DescriptionError:
                return None
        pos = p
