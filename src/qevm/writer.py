"""Writing a decoded stream back: the inverse of :mod:`qevm.stream`.

:class:`StreamWriter` walks the records the framing found, in order, and
writes each through the definitions it was read with: the header, the
configuration (its VMSD node), commands (a PACKAGED blob is written from its
nested records and its length recomputed), sections (header fields, body,
footer), EOF, the JSON description and any bytes after it.  Device bodies
are their decoded :class:`~qevm.vmstate.values.StateNode` re-encoded; RAM is
re-encoded record by record (:mod:`qevm.sections.ram.write`); the formats
whose handlers keep only a summary (block, dirty bitmaps, HTAB, s390, vfio)
and sections no description covers are opaque payload, copied.  Nothing is
edited, so the output is byte-identical to the input.

Edits change the model first (:mod:`qevm.edit`); the writer then encodes
what changed.  Large byte ranges (RAM pages, mapped-ram areas) are copied
from the input, never gathered in memory; zeros become holes in a seekable
output.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import TYPE_CHECKING, Any, BinaryIO

from .errors import UsageError
from .fileio import copy_range, is_zero
from .format import (
    COMMAND,
    CONFIGURATION,
    EOF,
    MIG_CMD_PACKAGED,
    SECTION_FOOTER,
    SECTION_FULL,
    SECTION_START,
    VMDESCRIPTION,
)
from .source.base import CHUNK, FileSource, Source
from .stream import (
    CommandRecord,
    ConfigurationRecord,
    DescriptionRecord,
    EofRecord,
    HeaderRecord,
    Record,
    SectionEntry,
    SectionRecord,
    TrailingRecord,
)
from .vmstate.codec import Encoder
from .vmstate.desc import Description
from .vmstate.jsontext import detect_style, dump
from .vmstate.values import StateNode
from .wire import Reader, Writer

if TYPE_CHECKING:
    from .migration import Migration
    from .sections.ram.write import RamPatch

# -- the input ------------------------------------------------------------------------


def spool(src: Source, tmpdir: str | None = None) -> FileSource:
    """A seekable copy of a streaming source, at the same offsets (zeros as holes).

    Writing needs to go back to the input (RAM pages are located, not kept),
    so a pipe or a decompressor is first copied to a temporary file.
    """
    fd, path = tempfile.mkstemp(prefix="qevm-spool-", dir=tmpdir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.seek(src.start)
            while True:
                data = src.read(CHUNK)
                if not data:
                    break
                if is_zero(data):
                    f.seek(len(data), 1)
                else:
                    f.write(data)
            f.truncate()
        out = FileSource(path, start=src.start)
    finally:
        os.unlink(path)  # the open mapping keeps the data until closed
    out.name = src.name
    out.container = src.container
    out.info = dict(src.info)
    out.spooled = True  # type: ignore[attr-defined]
    return out


def open_for_writing(spec: Any, **kw: Any) -> Migration:
    """:func:`qevm.open` for rewriting: a streaming input is spooled to a file first."""
    from . import open as qopen
    from .source import open_source

    src = open_source(spec, format=kw.pop("format", "auto"), snapshot=kw.pop("snapshot", None))
    if not src.seekable:
        try:
            copy = spool(src)
        finally:
            src.close()
        src = copy
    return qopen(src, **kw)


# -- the description ----------------------------------------------------------------


def description_text(desc: Description) -> bytes:
    """The JSON text to write: the original unless the description was changed."""
    if not desc.modified and desc.text:
        return desc.text
    return dump(desc.raw, detect_style(desc.text))


# -- the writer -----------------------------------------------------------------------


class WriteContext:
    """What section writers need: the input, its parse state, the edits."""

    def __init__(self, mig: Migration, ram_patch: RamPatch | None = None) -> None:
        self.mig = mig
        self.source: Source = mig.source
        self.parse_ctx = mig._parsed.context
        self.ram_patch = ram_patch
        #: Added to an input offset to get the output offset of the same byte,
        #: while writing records that are where they were.
        self.delta = 0


class StreamWriter:
    """Writes a parsed stream back, with whatever edits its model carries."""

    def __init__(self, mig: Migration, ram_patch: RamPatch | None = None) -> None:
        broken = [r for r in mig.all_records() if r.error is not None and r.kind != "trailing"]
        if broken:
            raise UsageError(
                f"the stream has {len(broken)} records that could not be read (the first at "
                f"{broken[0].offset:#x}); it cannot be written back"
            )
        self.mig = mig
        self.source = mig.source
        self.wctx = WriteContext(mig, ram_patch)
        self._states: dict[int, Any] = {}

    def keeps_container(self) -> bool:
        """Whether the output starts with the input's container header (libvirt
        raw and sparse images: mapped-ram offsets count from the file start)."""
        src = self.source
        return (
            isinstance(src, FileSource)
            and src.start > 0
            and src.container != "raw stream"
            and not getattr(src, "spooled", False)
        )

    def write(self, out: BinaryIO) -> int:
        """Write the stream to ``out``; returns the number of bytes written."""
        src = self.source
        base = 0
        if self.keeps_container():
            w0 = Writer(out)
            copy_range(w0, src, 0, src.start)
            base = src.start
        w = Writer(out, base)
        self.wctx.delta = base - src.start
        self.write_records(w, self.mig.records)
        last = self.mig.records[-1].end
        if src.size is not None and src.size > last:
            # Bytes after the description (the framing only warned about them).
            copy_range(w, src, last, src.size)
        w.finish()
        return w.offset

    # -- records ----------------------------------------------------------------
    def write_records(self, w: Writer, records: list[Record]) -> None:
        for rec in records:
            self.write_record(w, rec)

    def write_record(self, w: Writer, rec: Record) -> None:
        if isinstance(rec, SectionRecord):
            self.write_section(w, rec)
        elif isinstance(rec, HeaderRecord):
            w.u32(rec.magic)
            w.u32(rec.version)
        elif isinstance(rec, ConfigurationRecord):
            w.u8(CONFIGURATION)
            assert rec.config is not None
            Encoder(w).node(rec.config.node)
        elif isinstance(rec, CommandRecord):
            self.write_command(w, rec)
        elif isinstance(rec, EofRecord):
            w.u8(EOF)
        elif isinstance(rec, DescriptionRecord):
            assert rec.description is not None
            text = description_text(rec.description)
            w.u8(VMDESCRIPTION)
            w.u32(len(text))
            w.bytes(text)
        elif isinstance(rec, TrailingRecord):
            copy_range(w, self.source, rec.offset, rec.end)
        else:  # pragma: no cover - every record kind is handled above
            raise TypeError(f"cannot write {rec!r}")

    def write_command(self, w: Writer, rec: CommandRecord) -> None:
        w.u8(COMMAND)
        w.u16(rec.wire_cmd if rec.wire_cmd is not None else rec.cmd)
        if rec.cmd != MIG_CMD_PACKAGED or rec.nested is None:
            w.u16(len(rec.payload))
            w.bytes(rec.payload)
            return
        blob = self.packaged_blob(w.offset + 2 + 4, rec)
        w.u16(4)
        w.u32(len(blob))
        w.bytes(blob)

    def packaged_blob(self, at: int, rec: CommandRecord) -> bytes:
        """The nested stream of a PACKAGED command, written at output offset ``at``."""
        assert rec.nested is not None
        buf = io.BytesIO()
        inner = Writer(buf, at)
        self.write_records(inner, rec.nested)
        end = rec.nested[-1].end if rec.nested else rec.nested_offset
        # Bytes QEMU's loader would skip after POSTCOPY_RUN inside the blob.
        copy_range(inner, self.source, end, rec.nested_end)
        return buf.getvalue()

    # -- sections ------------------------------------------------------------------
    def write_section(self, w: Writer, rec: SectionRecord) -> None:
        entry = rec.entry
        assert entry is not None
        w.u8(rec.type)
        w.u32(entry.section_id)
        if rec.type in (SECTION_START, SECTION_FULL):
            w.counted_str(entry.idstr)
            w.u32(entry.instance_id)
            w.u32(rec.version if rec.version is not None else entry.version)
        self.write_body(w, rec)
        if rec.footer:
            w.u8(SECTION_FOOTER)
            w.u32(entry.section_id)

    def write_body(self, w: Writer, rec: SectionRecord) -> None:
        entry = rec.entry
        assert entry is not None
        h = entry.handler
        if h is not None and h.reads(rec.type):
            if h.described and rec.type == SECTION_FULL and rec.node is not None:
                Encoder(w).node(rec.node)
                return
            h.write(w, entry, rec, Reader(self.source, rec.body_offset), self.state(entry))
        elif isinstance(rec.content, StateNode):
            Encoder(w).node(rec.content)
        elif rec.raw is not None:
            w.bytes(rec.raw)
        else:
            copy_range(w, self.source, rec.body_offset, rec.body_end)

    def state(self, entry: SectionEntry) -> Any:
        """The handler's write state for ``entry`` (made on first use)."""
        key = id(entry)
        if key not in self._states:
            assert entry.handler is not None
            self._states[key] = entry.handler.new_write_state(self.wctx, entry)
        return self._states[key]


def write_stream(
    mig: Migration,
    path: str | os.PathLike[str],
    writer: StreamWriter | None = None,
    **kw: Any,
) -> int:
    """Write ``mig`` (with its edits) to ``path`` (``-``: standard output) with
    ``writer`` (a :class:`StreamWriter` made with ``kw`` by default)."""
    from .edit import check_sizes

    check_sizes(mig)  # before anything is written
    writer = writer or StreamWriter(mig, **kw)
    if os.fspath(path) == "-":
        import sys

        out = sys.stdout.buffer
        n = writer.write(out)
        out.flush()
        return n
    if os.path.exists(path):
        if _same_file(path, mig.source):
            raise UsageError(f"{os.fspath(path)}: the output would overwrite the input")
        if not os.path.isfile(path):  # a FIFO or a device: write straight to it
            with open(path, "wb", buffering=1 << 20) as out:
                return writer.write(out)
    tmp = f"{os.fspath(path)}.qevm-tmp"
    try:
        with open(tmp, "wb", buffering=1 << 20) as out:
            n = writer.write(out)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return n


def _same_file(path: str | os.PathLike[str], src: Source) -> bool:
    fd = src.fileno()
    if fd is None:
        return os.path.realpath(path) == os.path.realpath(src.name)
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except OSError:
        return False
