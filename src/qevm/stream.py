"""Stream framing (QEMU's savevm.c): header, records, footers, EOF, description.

:class:`StreamParser` walks a stream once, front to back, and produces the
records in order with their exact extents.  Live sections (RAM, ...) are read
by their handlers as they come.  Device (VMSD) sections are delimited by their
footer and decoded with the JSON description once it is known — which, on a
pipe, is only at the very end.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import commands as C
from .configuration import Configuration, read_configuration
from .errors import DescriptionError, FormatError, QevmError, TruncatedError, UnsupportedError
from .sections import SectionHandler, handler_for, load_all
from .source.base import Source
from .vmstate.codec import Decoder
from .vmstate.desc import Description, DeviceDesc, parse_description
from .vmstate.values import StateNode
from .wire import Reader

MAGIC = 0x5145564D  # "QEVM"
VERSION = 3
VERSION_COMPAT = 2

EOF = 0x00
SECTION_START = 0x01
SECTION_PART = 0x02
SECTION_END = 0x03
SECTION_FULL = 0x04
SUBSECTION = 0x05
VMDESCRIPTION = 0x06
CONFIGURATION = 0x07
COMMAND = 0x08
SECTION_FOOTER = 0x7E

SECTION_TYPE_NAMES = {
    SECTION_START: "START",
    SECTION_PART: "PART",
    SECTION_END: "END",
    SECTION_FULL: "FULL",
}

#: PACKAGED blobs inside PACKAGED blobs (QEMU nests none).
MAX_PACKAGED_DEPTH = 8
#: Largest JSON description accepted (QEMU's are a few MB at most).
MAX_DESCRIPTION = 256 << 20
#: Most bytes read into memory to find the description of a piped stream without footers.
MAX_BUFFERED = 256 << 20
#: Largest device section delimited by searching for its footer.
MAX_SCANNED_SECTION = 1 << 30

_FOOTER = struct.Struct(">BI")

load_all()


@dataclass(eq=False)
class Record:
    """Something at ``offset`` in the stream, ending before ``end``."""

    offset: int
    end: int

    @property
    def kind(self) -> str:
        return type(self).__name__.removesuffix("Record").lower()


@dataclass(eq=False)
class HeaderRecord(Record):
    magic: int = MAGIC
    version: int = VERSION


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
    """Bytes after the stream that are not part of it."""


@dataclass(eq=False)
class SectionEntry:
    """One registered state handler as seen in the stream (one section id)."""

    section_id: int
    idstr: str
    instance_id: int
    version: int
    handler: SectionHandler | None
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
    #: The stream's own description found by searching from the end, used when
    #: the framing cannot delimit device sections (no section footers).
    fallback_description: Description | None = None
    #: Target page size when known in advance.
    page_size: int | None = None
    #: Factory of the RAM page consumer (an index, or a sink writing files).
    ram_consumer: Callable[[ParseContext], Any] | None = None
    #: Called with the current offset now and then.
    progress: Callable[[int], None] | None = None
    #: Decode device sections (off for RAM-only work).
    decode_devices: bool = True
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


class StreamParser:
    """Reads a whole stream once.  Use :func:`parse_stream`."""

    def __init__(self, source: Source, options: ParseOptions) -> None:
        self.input = source
        #: Where bytes are read from (an in-memory copy after _buffer_rest).
        self.source = source
        self.r = Reader(source)
        self.ctx = ParseContext(self.r, options)
        self.options = options
        self.desc: Description | None = options.description
        if self.desc is not None and self.desc.page_size and not self.ctx.page_size:
            self.ctx.page_size = self.desc.page_size
        self.entries: dict[int, SectionEntry] = {}
        self.footers: bool | None = None
        self.config: Configuration | None = None
        self.stream_desc: Description | None = None
        self._pending: list[SectionRecord] = []
        self._depth = 0

    # -- top level --------------------------------------------------------
    def parse(self) -> ParsedStream:
        header = self._header()
        self._announce(header)
        records: list[Record] = [header]
        records.extend(self._records(top=True))
        if not self.r.at_end():
            records.append(self._description_or_trailing())
            self._announce(records[-1])
        if self.stream_desc is not None and self.desc is None:
            self.desc = self.stream_desc
        self._decode_pending()
        return ParsedStream(
            self.input,
            header,
            records,
            self.entries,
            self.config,
            self.desc,
            self.footers,
            self.ctx,
        )

    def _header(self) -> HeaderRecord:
        r = self.r
        off = r.offset
        try:
            magic = r.u32()
        except TruncatedError:
            raise FormatError(
                "input is empty or shorter than a stream header",
                offset=off,
                expected='magic "QEVM"',
            ) from None
        if magic != MAGIC:
            raise FormatError(
                f"not a QEMU migration stream (magic {magic:#010x})",
                offset=off,
                expected='0x5145564d ("QEVM")',
            )
        version = r.u32()
        if version == VERSION_COMPAT:
            raise UnsupportedError(
                "stream version 2 (QEMU before 0.10) is obsolete and not supported",
                offset=off + 4,
            )
        if version != VERSION:
            raise FormatError(f"stream version {version}", offset=off + 4, expected="3")
        return HeaderRecord(off, r.offset, magic, version)

    def _records(self, top: bool) -> list[Record]:
        """Records until EOF (top level) or POSTCOPY_RUN / the blob's end (nested)."""
        out: list[Record] = []
        while True:
            r = self.r  # _buffer_rest may switch to an in-memory reader
            if not top and r.at_end():
                return out
            off = r.offset
            try:
                t = r.u8()
            except TruncatedError:
                raise TruncatedError(
                    "stream ends without an EOF marker",
                    offset=off,
                    expected="another section or EOF (0x00)",
                ) from None
            if t == EOF:
                out.append(EofRecord(off, r.offset))
                self._announce(out[-1])
                if not top:
                    self.ctx.warn(f"EOF marker inside a PACKAGED blob at {off:#x}")
                return out
            if t in SECTION_TYPE_NAMES:
                out.append(self._section(t, off))
            elif t == COMMAND:
                rec = self._command(off)
                out.append(rec)
                if not top and rec.cmd == C.POSTCOPY_RUN:
                    return out
            elif t == CONFIGURATION:
                out.append(self._configuration(off))
            elif t == SECTION_FOOTER:
                raise FormatError(
                    "section footer without a section",
                    offset=off,
                    expected="a section, command or EOF",
                )
            else:
                raise FormatError(
                    f"unknown record type {t:#04x}",
                    offset=off,
                    expected="a section (0x01-0x04), command (0x08), configuration "
                    "(0x07) or EOF (0x00)",
                )
            self._announce(out[-1])
            if self.ctx.progress is not None:
                self.ctx.progress(r.offset)

    def _announce(self, rec: Record) -> None:
        if self.options.on_record is not None:
            self.options.on_record(rec)

    # -- configuration and commands -----------------------------------------
    def _configuration(self, off: int) -> ConfigurationRecord:
        desc = self.desc.configuration if self.desc is not None else None
        conf = read_configuration(self.r, desc)
        self.config = conf
        self.ctx.machine = conf.machine
        self.ctx.capabilities.update(conf.capabilities)
        if conf.page_size:
            self._set_page_size(conf.page_size, "configuration/target-page-bits", off)
        return ConfigurationRecord(off, self.r.offset, conf)

    def _set_page_size(self, size: int, where: str, off: int) -> None:
        ctx = self.ctx
        if ctx.page_size is None:
            ctx.page_size = size
        elif ctx.page_size != size:
            raise DescriptionError(
                f"{where} says page size {size}, but it is {ctx.page_size}", offset=off
            )

    def _command(self, off: int) -> CommandRecord:
        r = self.r
        cmd = wire_cmd = r.u16()
        length = r.u16()
        # QEMU 3.0 numbered RECV_BITMAP 9; only it carries a payload.
        if cmd == C.POSTCOPY_RESUME and length:
            cmd = C.RECV_BITMAP
        C.check_command(cmd, length, off)
        payload = r.bytes(length)
        info = C.decode_payload(cmd, payload, off)
        rec = CommandRecord(off, r.offset, cmd, length, payload, info, wire_cmd=wire_cmd)
        if cmd == C.POSTCOPY_ADVISE:
            self.ctx.postcopy = info
            if info.get("ram"):
                self.ctx.capabilities.add("postcopy-ram")
        elif cmd == C.PACKAGED:
            self._packaged(rec)
        return rec

    def _packaged(self, rec: CommandRecord) -> None:
        """The nested stream of a PACKAGED command (postcopy's device state)."""
        r = self.r
        if self._depth >= MAX_PACKAGED_DEPTH:
            raise FormatError(
                "PACKAGED blobs nested too deeply", offset=rec.offset, section="command"
            )
        size = rec.info["length"]
        start = r.offset
        end = start + size
        r._check_room(size)
        outer = r.limit
        r.limit = end
        self._depth += 1
        try:
            rec.nested = self._records(top=False)
        finally:
            r.limit = outer
            self._depth -= 1
        if r.offset != end:
            self.ctx.warn(f"PACKAGED blob at {start:#x}: {end - r.offset} bytes after POSTCOPY_RUN")
            r.seek(end)
        rec.nested_offset, rec.nested_end = start, end
        rec.end = end

    # -- sections ------------------------------------------------------------
    def _section(self, t: int, off: int) -> SectionRecord:
        r = self.r
        section_id = r.u32()
        if t in (SECTION_START, SECTION_FULL):
            idstr = r.counted_str()
            instance_id = r.u32()
            version = r.u32()
            entry = self.entries.get(section_id)
            if entry is None or entry.idstr != idstr or entry.instance_id != instance_id:
                entry = SectionEntry(section_id, idstr, instance_id, version, handler_for(idstr))
                self.entries[section_id] = entry
                if entry.handler is not None:
                    entry.state = entry.handler.new_state(self.ctx, entry)
            entry.version = version
        else:
            entry = self.entries.get(section_id)
            if entry is None:
                raise FormatError(
                    f"{SECTION_TYPE_NAMES[t]} of section id {section_id}, which no START "
                    "introduced",
                    offset=off,
                    expected="the id of a started section",
                )
        rec = SectionRecord(off, 0, t, entry, r.offset)
        if t in (SECTION_START, SECTION_FULL):
            rec.version = version
        entry.records.append(rec)
        if entry.desc is None and self.desc is not None:
            entry.desc = self.desc.device(entry.idstr, entry.instance_id)
        try:
            self._body(rec)
            self._footer(rec)
        except QevmError as e:
            raise e.located(section=entry.label) from None
        rec.end = self.r.offset
        return rec

    def _body(self, rec: SectionRecord) -> None:
        entry = rec.entry
        assert entry is not None
        r = self.r
        h = entry.handler
        if h is not None and h.reads(rec.type):
            keep = h.described and rec.type == SECTION_FULL and not self.source.seekable
            if keep:
                r.mark()
            rec.content = h.read(self.ctx, entry, rec)
            rec.body_end = r.offset
            if keep:
                rec.raw = r.since_mark()
            if h.described and rec.type == SECTION_FULL:
                self._pending.append(rec)
            return
        # A device (VMSD) section: find its end, decode now or at the end.
        end = self._scan_footer(rec) if self.footers is not False else None
        if end is None:
            desc = entry.desc or self._fallback(entry)
            if desc is None:
                raise DescriptionError(
                    "cannot find where this section ends: the stream has no section "
                    "footers and no description for it is known yet (give one with "
                    "--desc)",
                    offset=rec.body_offset,
                )
            self._decode_vmsd(rec, desc, None)
            rec.body_end = self.r.offset  # (the reader may have changed, see _buffer_rest)
            return
        rec.body_end = end
        if entry.desc is not None and self.options.decode_devices:
            self._decode_vmsd(rec, entry.desc, end)
            return
        if not self.source.seekable:
            rec.raw = r.bytes(end - r.offset)
        else:
            r.seek(end)
        self._pending.append(rec)

    def _fallback(self, entry: SectionEntry) -> DeviceDesc | None:
        """Without footers, take the description from the end of the input."""
        desc = self.options.fallback_description
        if desc is None and not self.source.seekable:
            desc = self._buffer_rest()
        if desc is None:
            return None
        self.desc = desc
        self.ctx.warn("no section footers: device sections were delimited with the description")
        entry.desc = desc.device(entry.idstr, entry.instance_id)
        return entry.desc

    def _buffer_rest(self) -> Description | None:
        """Read the rest of a streaming input into memory and look for its description.

        Only streams without section footers need this (machine types <= 2.3,
        Xen); what is left by then is device state and the JSON, not RAM.
        """
        from .source.memory import MemorySource

        r = self.r
        start = r.offset
        chunks = []
        total = 0
        while not r.at_end():
            n = r.available()
            total += n
            if total > MAX_BUFFERED:
                raise DescriptionError(
                    "no section footers and more than 256 MiB left to buffer to find the "
                    "description; give one with --desc",
                    offset=start,
                )
            chunks.append(r.bytes(n))
        mem = MemorySource(b"".join(chunks), start, name=self.source.name)
        self.source = mem
        self.r = Reader(mem, start)
        self.ctx.r = self.r
        return locate_description(mem)

    def _decode_vmsd(self, rec: SectionRecord, desc: DeviceDesc, end: int | None) -> None:
        r = self.r
        node = Decoder(r, end).vmsd(desc)
        if end is not None and r.offset != end:
            raise DescriptionError(
                f"device state decoded with the description ends at {r.offset:#x} "
                f"but the section ends at {end:#x}",
                offset=r.offset,
                expected="the description to account for every byte",
            )
        if rec.entry is not None and rec.entry.handler is not None:
            rec.node = node
        else:
            rec.content = node

    def _footer(self, rec: SectionRecord) -> None:
        """Check the footer (0x7e + section id) after a section's data."""
        r = self.r
        sid = rec.entry.section_id  # type: ignore[union-attr]
        if self.footers is None:
            head = r.peek(5)
            self.footers = len(head) == 5 and _FOOTER.unpack(head) == (SECTION_FOOTER, sid)
        if not self.footers:
            return
        off = r.offset
        marker = r.u8()
        if marker != SECTION_FOOTER:
            raise FormatError(
                f"found {marker:#04x} after the section data",
                offset=off,
                expected=f"section footer 0x7e for section id {sid}",
            )
        got = r.u32()
        if got != sid:
            raise FormatError(f"footer names section id {got}", offset=off + 1, expected=f"{sid}")
        rec.footer = True

    def _scan_footer(self, rec: SectionRecord) -> int | None:
        """Offset where the footer of ``rec`` starts, found by searching for it."""
        r = self.r
        sid = rec.entry.section_id  # type: ignore[union-attr]
        pattern = _FOOTER.pack(SECTION_FOOTER, sid)
        start = r.offset
        pos = start
        while True:
            hit = self._find(pattern, pos)
            if hit < 0:
                if self.footers is None:
                    self.footers = False
                    return None
                raise FormatError(
                    "no section footer found",
                    offset=start,
                    expected=f"0x7e + section id {sid} after the device state",
                )
            if self._plausible_after_footer(hit + 5):
                self.footers = True
                return hit
            pos = hit + 1

    def _find(self, pattern: bytes, start: int) -> int:
        """Absolute offset of ``pattern`` at or after ``start`` (-1: not found)."""
        r = self.r
        limit = r.limit
        find = getattr(self.source, "find", None)
        if find is not None:
            end = limit if limit is not None else (self.source.size or 0)
            end = min(end, start + MAX_SCANNED_SECTION)
            return find(pattern, start, end)
        # Windowed input: grow the window until the pattern shows up.
        want = 1 << 16
        while True:
            rel = start - r.offset
            avail = r.available()
            window = bytes(r.buf[r.pos + rel : r.pos + avail]) if rel < avail else b""
            i = window.find(pattern)
            if i >= 0:
                return start + i
            if avail >= MAX_SCANNED_SECTION or (limit is not None and r.offset + avail >= limit):
                return -1
            want = max(want * 2, avail + (1 << 16))
            try:
                r.ensure(min(want, MAX_SCANNED_SECTION))
            except TruncatedError:
                got = r.available()
                if got == avail:
                    return -1

    def _plausible_after_footer(self, off: int) -> bool:
        """Whether a real record (or the end of the input) can start at ``off``."""
        r = self.r
        if r.limit is not None and off >= r.limit:
            return off == r.limit
        head = r.peek_at(off, 6 + 255)
        if not head:
            return True
        t = head[0]
        if t == EOF:
            return len(head) == 1 or head[1] in (VMDESCRIPTION, 0)
        if t in (SECTION_START, SECTION_FULL):
            if len(head) < 6:
                return False
            n = head[5]
            name = head[6 : 6 + n]
            return n > 0 and len(name) == n and all(32 <= c < 127 for c in name)
        if t in (SECTION_PART, SECTION_END):
            return len(head) >= 5 and struct.unpack(">I", head[1:5])[0] in self.entries
        if t == COMMAND:
            return len(head) >= 3 and struct.unpack(">H", head[1:3])[0] in C.COMMANDS
        return False

    # -- after EOF -------------------------------------------------------------
    def _description_or_trailing(self) -> Record:
        r = self.r
        off = r.offset
        if r.peek_u8() == VMDESCRIPTION:
            r.u8()
            length = r.u32()
            if length > MAX_DESCRIPTION:
                raise DescriptionError(
                    f"VM description of {length} bytes",
                    offset=off + 1,
                    expected=f"at most {MAX_DESCRIPTION} bytes",
                )
            text = r.bytes(length)
            early = self.options.fallback_description
            if early is not None and early.offset == off + 5 and early.text == text:
                desc = early  # already parsed when the stream was opened
            else:
                desc = parse_description(text, off + 5)
            if desc.page_size:
                # RAM was read with the page size known then; they must agree.
                self._set_page_size(desc.page_size, "the VM description", off + 5)
            self.stream_desc = desc
            rec: Record = DescriptionRecord(off, r.offset, length, desc)
            if not r.at_end():
                self.ctx.warn(f"data after the VM description at {r.offset:#x}")
            return rec
        if self.source.size is not None:
            end = self.source.size
        else:
            while not r.at_end():
                r.skip(r.available())
            end = r.offset
        self.ctx.warn(f"{end - off} bytes after EOF at {off:#x} are not a VM description")
        return TrailingRecord(off, end)

    def _decode_pending(self) -> None:
        """Decode the device sections that were waiting for the description."""
        desc = self.desc
        if not self.options.decode_devices:
            return
        for rec in self._pending:
            entry = rec.entry
            assert entry is not None
            if entry.desc is None and desc is not None:
                entry.desc = desc.device(entry.idstr, entry.instance_id)
            if entry.desc is None:
                continue
            if entry.handler is not None and rec.node is not None:
                continue
            if rec.raw is not None:
                from .source.memory import MemorySource

                src = MemorySource(rec.raw, rec.body_offset, name=self.source.name)
                r = Reader(src, rec.body_offset)
            else:
                r = Reader(self.source, rec.body_offset)
            try:
                node = Decoder(r, rec.body_end).vmsd(entry.desc)
                if r.offset != rec.body_end:
                    raise DescriptionError(
                        f"{rec.body_end - r.offset} bytes of the section are left after "
                        "decoding it with the description",
                        offset=r.offset,
                        expected="the description to account for every byte",
                    )
            except QevmError as e:
                raise e.located(section=entry.label) from None
            if entry.handler is not None:
                rec.node = node
            else:
                rec.content = node
                rec.raw = None


def parse_stream(source: Source, options: ParseOptions | None = None) -> ParsedStream:
    """Read ``source`` (a stream starting at ``source.start``) completely."""
    return StreamParser(source, options or ParseOptions()).parse()


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
