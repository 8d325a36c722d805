"""The loader's record loop (QEMU's qemu_loadvm_state_main in savevm.c).

:class:`StreamParser` reads the header, then records until EOF: sections
(their headers and footers here, live bodies by their handlers, device
bodies by :mod:`qevm.delimit`), commands with PACKAGED blobs, the
configuration, and after EOF the VM description.  Not strict, it keeps what
it cannot read as records with their errors and goes on at the next record.
"""

from __future__ import annotations

import struct

from . import commands as C
from .configuration import Configuration, read_configuration
from .delimit import FOOTER, DeviceSections
from .errors import (
    DescriptionError,
    FormatError,
    QevmError,
    TruncatedError,
    UnsupportedError,
    UsageError,
)
from .format import (
    COMMAND,
    CONFIGURATION,
    EOF,
    FILE_MAGIC,
    FILE_VERSION,
    FILE_VERSION_COMPAT,
    MIG_CMD_PACKAGED,
    MIG_CMD_POSTCOPY_ADVISE,
    MIG_CMD_POSTCOPY_RESUME,
    MIG_CMD_POSTCOPY_RUN,
    MIG_CMD_RECV_BITMAP,
    SECTION_END,
    SECTION_FOOTER,
    SECTION_FULL,
    SECTION_PART,
    SECTION_START,
    SECTION_TYPE_NAMES,
    VMDESCRIPTION,
)
from .sections import handler_for
from .source.base import Source
from .stream import (
    MAX_DESCRIPTION,
    MAX_PACKAGED_DEPTH,
    BrokenRecord,
    CommandRecord,
    ConfigurationRecord,
    DescriptionRecord,
    EofRecord,
    HeaderRecord,
    ParseContext,
    ParsedStream,
    ParseOptions,
    Record,
    SectionEntry,
    SectionRecord,
    TrailingRecord,
)
from .vmstate.desc import Description, parse_description
from .wire import Reader


class StreamParser:
    """Reads a whole stream once.  Use :func:`parse_stream`."""

    def __init__(self, source: Source, options: ParseOptions) -> None:
        self.input = source
        self.r = Reader(source)
        self.ctx = ParseContext(self.r, options)
        self.options = options
        self.strict = options.strict
        self.entries: dict[int, SectionEntry] = {}
        self.footers: bool | None = None
        self.config: Configuration | None = None
        #: The stream's own description: found ahead of time, then read after EOF.
        self.own_desc: Description | None = options.own_description
        self.stream_desc: Description | None = None
        self.errors: list[QevmError] = []
        self.devices = DeviceSections(self)
        desc = self.devices.desc
        if desc is not None and desc.page_size and not self.ctx.page_size:
            self.ctx.page_size = desc.page_size
        self._depth = 0
        #: Set when the input ended inside a record (non-strict): nothing more to read.
        self._ended = False

    # -- top level --------------------------------------------------------
    def parse(self) -> ParsedStream:
        header = self._header()
        self._announce(header)
        records: list[Record] = [header]
        records.extend(self._records(top=True))
        if not self._ended and not self.r.at_end():
            for rec in self._after_eof():
                records.append(rec)
                self._announce(rec)
        self.devices.finish(self.stream_desc)
        return ParsedStream(
            self.input,
            header,
            records,
            self.entries,
            self.config,
            self.devices.desc,
            self.footers,
            self.ctx,
            self.errors,
        )

    def _announce(self, rec: Record) -> None:
        if self.options.on_record is not None:
            self.options.on_record(rec)

    def error(self, error: QevmError) -> None:
        """Keep ``error`` (non-strict) or raise it.

        A :class:`UsageError` raised while reading is about what was asked or
        where the output goes (extract refusing to write over its input), not
        about the input: reading on past it would be wrong, so it always ends
        the reading.
        """
        if self.strict or isinstance(error, UsageError):
            raise error
        self.errors.append(error)

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
        if magic != FILE_MAGIC:
            raise FormatError(
                f"not a QEMU migration stream (magic {magic:#010x})",
                offset=off,
                expected='0x5145564d ("QEVM")',
            )
        version = r.u32()
        if version == FILE_VERSION_COMPAT:
            raise UnsupportedError(
                "stream version 2 (QEMU before 0.10) is obsolete and not supported",
                offset=off + 4,
            )
        if version != FILE_VERSION:
            raise FormatError(f"stream version {version}", offset=off + 4, expected="3")
        return HeaderRecord(off, r.offset, magic, version)

    def _records(self, top: bool) -> list[Record]:
        """Records until EOF (top level) or POSTCOPY_RUN / the blob's end (nested)."""
        out: list[Record] = []
        r = self.r
        while not self._ended:
            if not top and r.at_end():
                break
            off = r.offset
            try:
                rec: Record | None = self._record(off)
            except QevmError as e:
                self.error(e)
                rec = self._broken(off, e)
                if rec is None:
                    break
            out.append(rec)
            self._announce(rec)
            if isinstance(rec, EofRecord):
                if not top:
                    self.ctx.warn(f"EOF marker inside a PACKAGED blob at {off:#x}")
                break
            if not top and isinstance(rec, CommandRecord) and rec.cmd == MIG_CMD_POSTCOPY_RUN:
                break
            if self.ctx.progress is not None:
                self.ctx.progress(r.offset)
        return out

    def _record(self, off: int) -> Record:
        """The record at ``off``, the reader's position."""
        r = self.r
        try:
            t = r.u8()
        except TruncatedError:
            raise TruncatedError(
                "the input ends without an EOF marker",
                offset=off,
                expected="another section or EOF (0x00)",
            ) from None
        if t == EOF:
            return EofRecord(off, r.offset)
        if t in SECTION_TYPE_NAMES:
            return self._section(t, off)
        if t == COMMAND:
            return self._command(off)
        if t == CONFIGURATION:
            return self._configuration(off)
        if t == SECTION_FOOTER:
            raise FormatError(
                "section footer without a section",
                offset=off,
                expected="a section, command or EOF",
            )
        raise FormatError(
            f"unknown record type {t:#04x}",
            offset=off,
            expected="a section (0x01-0x04), command (0x08), configuration (0x07) or EOF (0x00)",
        )

    def _broken(self, off: int, error: QevmError) -> BrokenRecord | None:
        """The bytes from ``off`` up to the next record found (None: nothing was left)."""
        found = self.devices.next_record(off + 1)
        end = found[0] if found is not None else self._skip_to_end()
        if found is None:
            self._ended = True
        self._lost(off, end)
        return BrokenRecord(off, end, error=error) if end > off else None

    def _lost(self, start: int, end: int) -> None:
        """Bytes ``[start, end)`` were skipped: the live sections' handlers are told."""
        skipped = (self.input, start, end) if self.r.seekable else None
        for entry in self.entries.values():
            if entry.handler is not None:
                entry.handler.lost(self.ctx, entry, skipped)

    def _skip_to_end(self) -> int:
        """Move to the end of the input (or of the PACKAGED blob); its offset."""
        r = self.r
        end = r.limit if r.limit is not None else self.input.size
        if end is not None and r.seekable:
            r.seek(end)
        else:
            while not r.at_end():
                r.skip(r.available())
        return r.offset

    # -- configuration and commands -----------------------------------------
    def _configuration(self, off: int) -> ConfigurationRecord:
        desc = self.devices.desc.configuration if self.devices.desc is not None else None
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
        if cmd == MIG_CMD_POSTCOPY_RESUME and length:
            cmd = MIG_CMD_RECV_BITMAP
        C.check_command(cmd, length, off)
        payload = r.bytes(length)
        info = C.decode_payload(cmd, payload, off)
        rec = CommandRecord(off, r.offset, cmd, length, payload, info, wire_cmd=wire_cmd)
        if cmd == MIG_CMD_POSTCOPY_ADVISE:
            self.ctx.postcopy = info
            if info.get("ram"):
                self.ctx.capabilities.add("postcopy-ram")
        elif cmd == MIG_CMD_PACKAGED:
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
        # What is left of the blob when reading inside it stopped early is not
        # the rest of the outer stream.
        self._ended = False
        if r.offset != end:
            self.ctx.warn(f"PACKAGED blob at {start:#x}: {end - r.offset} bytes after POSTCOPY_RUN")
            r.seek(end)
        rec.nested_offset, rec.nested_end = start, end
        rec.end = end

    # -- sections ------------------------------------------------------------
    def _section(self, t: int, off: int) -> SectionRecord:
        r = self.r
        section_id = r.u32()
        version = None
        if t in (SECTION_START, SECTION_FULL):
            idstr = self._idstr()
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
        rec = SectionRecord(off, 0, t, entry, r.offset, version=version)
        entry.records.append(rec)
        try:
            self._body(rec)
            self._footer(rec)
        except QevmError as e:
            self.error(e.located(section=entry.label))
            self._recover_section(rec, e)
        finally:
            r.unmark()
        rec.end = r.offset
        return rec

    def _idstr(self) -> str:
        """A section's name: QEMU's are never empty nor hold control characters."""
        r = self.r
        off = r.offset
        raw = r.counted_bytes()
        if not raw or any(c < 0x20 or c == 0x7F for c in raw):
            raise FormatError(
                f"section name of {len(raw)} bytes: {raw.hex(' ') or 'empty'}",
                offset=off,
                field="idstr",
                expected="a non-empty name without control characters",
            )
        return raw.decode("latin-1")

    def _body(self, rec: SectionRecord) -> None:
        entry = rec.entry
        assert entry is not None
        r = self.r
        h = entry.handler
        if h is None or not h.reads(rec.type):
            self.devices.body(rec)
            return
        described = h.described and rec.type == SECTION_FULL
        keep = described and not r.seekable
        if keep:
            r.mark()
        rec.content = h.read(self.ctx, entry, rec)
        rec.body_end = r.offset
        if keep:
            rec.raw = r.since_mark()
        if described:
            self.devices.described(rec)

    def _footer(self, rec: SectionRecord) -> None:
        """Check the footer (0x7e + section id) after a section's data."""
        r = self.r
        sid = rec.entry.section_id  # type: ignore[union-attr]
        if self.footers is None:
            head = r.peek(5)
            self.footers = len(head) == 5 and FOOTER.unpack(head) == (SECTION_FOOTER, sid)
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

    def _recover_section(self, rec: SectionRecord, error: QevmError) -> None:
        """Keep ``rec`` with its error; go on after its footer or at the next record."""
        rec.error = error
        rec.content = rec.node = rec.raw = None
        found = self.devices.next_record(rec.body_offset)
        if found is None:
            rec.body_end = self._skip_to_end()
            self._ended = True
        else:
            start, footer = found
            sid = rec.entry.section_id  # type: ignore[union-attr]
            if footer is not None and footer + 5 == start and self.devices.footer_sid == sid:
                rec.body_end, rec.footer = footer, True
            else:
                rec.body_end = start
        # Records before the error were read; the bytes from it on were skipped.
        failed = error.offset if error.offset is not None else rec.body_offset
        self._lost(max(rec.body_offset, min(failed, rec.body_end)), rec.body_end)

    def plausible_record_at(self, off: int) -> bool:
        """Whether a real record (or the end of the input) can start at ``off``."""
        r = self.r
        if r.limit is not None and off >= r.limit:
            return off == r.limit
        head = r.peek_at(off, 6 + 255)
        if not head:
            return True
        t = head[0]
        if t == EOF:
            return len(head) == 1 or self._description_at(off + 1, head[1:])
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

    def _description_at(self, off: int, head: bytes) -> bool:
        """Whether ``head`` (at ``off``) starts a VM description that fits the input."""
        if len(head) < 6 or head[0] != VMDESCRIPTION or head[5:6] != b"{":
            return False
        (length,) = struct.unpack(">I", head[1:5])
        end = off + 5 + length
        size = self.r.limit if self.r.limit is not None else self.input.size
        return length <= MAX_DESCRIPTION and (size is None or end <= size)

    # -- after EOF -------------------------------------------------------------
    def _after_eof(self) -> list[Record]:
        """The VM description, then nothing: other bytes are an error."""
        r = self.r
        out: list[Record] = []
        off = r.offset
        if r.peek_u8() == VMDESCRIPTION:
            try:
                out.append(self._description(off))
            except QevmError as e:
                self.error(e.located(section="VM description"))
                end = r.offset if r.offset > off + 5 else self._skip_to_end()
                out.append(DescriptionRecord(off, end, error=e))
        if not r.at_end():
            start = r.offset
            end = self._skip_to_end()
            after = "the VM description" if out else "EOF"
            e = FormatError(
                f"{end - start} bytes after {after} are not part of the stream",
                offset=start,
                expected="the end of the input" if out else "the VM description (0x06) or the end",
            )
            self.error(e)
            out.append(TrailingRecord(start, end, error=e))
        return out

    def _description(self, off: int) -> DescriptionRecord:
        r = self.r
        r.u8()
        length = r.u32()
        if length > MAX_DESCRIPTION:
            raise DescriptionError(
                f"VM description of {length} bytes",
                offset=off + 1,
                expected=f"at most {MAX_DESCRIPTION} bytes",
            )
        text = r.bytes(length)
        own = self.own_desc
        if own is not None and own.offset == off + 5 and own.text == text:
            desc = own  # already parsed when the stream was opened
        else:
            desc = parse_description(text, off + 5)
        if desc.page_size:
            # RAM was read with the page size known then; they must agree.
            self._set_page_size(desc.page_size, "the VM description", off + 5)
        self.stream_desc = desc
        return DescriptionRecord(off, r.offset, length, desc)


def parse_stream(source: Source, options: ParseOptions | None = None) -> ParsedStream:
    """Read ``source`` (a stream starting at ``source.start``) completely."""
    return StreamParser(source, options or ParseOptions()).parse()
