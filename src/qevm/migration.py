"""The decoded stream as users see it: :class:`Migration`.

A Migration wraps what the framing found (records in order, sections by id,
the configuration, the description) and answers the questions the CLI and
scripts ask: which devices, which RAM blocks, what state.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import DescriptionError, QevmError, UsageError
from .format import SECTION_FULL
from .stream import (
    CommandRecord,
    ParsedStream,
    Record,
    SectionEntry,
    SectionRecord,
)
from .vmstate.values import StateNode

if TYPE_CHECKING:
    from .sections.ram.blocks import RamBlock
    from .sections.ram.index import PageIndex
    from .sections.ram.records import RamState
    from .source.base import Source
    from .vmstate.desc import Description


@dataclass(eq=False)
class Device:
    """One device section: its entry, its record and its decoded state."""

    entry: SectionEntry
    record: SectionRecord

    @property
    def name(self) -> str:
        return self.entry.idstr

    @property
    def instance_id(self) -> int:
        return self.entry.instance_id

    @property
    def section_id(self) -> int:
        return self.entry.section_id

    @property
    def version(self) -> int:
        return self.entry.version

    @property
    def state(self) -> StateNode | None:
        """The decoded VMSD state (None when no description covers it)."""
        rec = self.record
        if isinstance(rec.content, StateNode):
            return rec.content
        return rec.node

    @property
    def error(self) -> QevmError | None:
        """Why this section could not be read (``qevm.open(..., strict=False)``)."""
        return self.record.error

    @property
    def vmsd_name(self) -> str | None:
        st = self.state
        return st.vmsd_name if st is not None else None

    def __repr__(self) -> str:
        return f"Device({self.name!r}, instance={self.instance_id}, section={self.section_id})"


class Migration:
    """A QEMU migration stream, read completely."""

    def __init__(self, parsed: ParsedStream) -> None:
        self._parsed = parsed
        self.source: Source = parsed.source
        self.records: list[Record] = parsed.records
        self.entries: dict[int, SectionEntry] = parsed.entries
        self.configuration = parsed.configuration
        self.description: Description | None = parsed.description
        self.footers = parsed.footers
        ctx = parsed.context
        self.page_size: int | None = ctx.page_size
        self.capabilities: set[str] = set(ctx.capabilities)
        self.warnings: list[str] = ctx.warnings
        #: Every error met reading the stream, in stream order (``strict=False``).
        self.errors: list[QevmError] = parsed.errors
        #: Summaries of the extra connections added with :meth:`add_channel`.
        self.channels: list[Any] = []
        self._channel_sources: list[Source] = []

    # -- overview ------------------------------------------------------------
    @property
    def machine(self) -> str | None:
        """Machine type from the configuration section (e.g. ``pc-q35-10.0``)."""
        return self.configuration.machine if self.configuration else None

    @property
    def complete(self) -> bool:
        """Whether the whole stream was read without an error."""
        return not self.errors

    @property
    def usable(self) -> bool:
        """Whether anything was read besides the header: a section without an error."""
        return any(r.error is None for r in self.section_records())

    @property
    def has_description(self) -> bool:
        """Whether the stream itself carries a JSON description."""
        return any(r.kind == "description" for r in self.records)

    def all_records(self) -> Iterator[Record]:
        """Every record, descending into PACKAGED blobs."""

        def walk(recs: list[Record]) -> Iterator[Record]:
            for r in recs:
                yield r
                if isinstance(r, CommandRecord) and r.nested:
                    yield from walk(r.nested)

        return walk(self.records)

    def section_records(self) -> Iterator[SectionRecord]:
        """Every section record in stream order (PACKAGED contents included)."""
        for r in self.all_records():
            if isinstance(r, SectionRecord):
                yield r

    def commands(self) -> list[CommandRecord]:
        return [r for r in self.all_records() if isinstance(r, CommandRecord)]

    # -- devices ---------------------------------------------------------------
    def devices(self, pattern: str | None = None) -> list[Device]:
        """Device sections (FULL records), optionally filtered by an idstr glob."""
        out = []
        for rec in self.section_records():
            if rec.type != SECTION_FULL:
                continue
            entry = rec.entry
            assert entry is not None
            if pattern and not fnmatch.fnmatchcase(entry.idstr, pattern):
                continue
            out.append(Device(entry, rec))
        return out

    def device(self, name: str, instance_id: int = 0) -> Device:
        """The device section ``name`` with ``instance_id``."""
        for d in self.devices():
            if d.name == name and d.instance_id == instance_id:
                return d
        raise UsageError(f"no device section {name!r} instance {instance_id}")

    # -- RAM -------------------------------------------------------------------
    @property
    def ram(self) -> RamState | None:
        """The RAM section's state (blocks, page consumer), if the stream has RAM."""
        for e in self.entries.values():
            if e.idstr == "ram" and e.handler is not None:
                return e.state
        return None

    @property
    def ram_blocks(self) -> list[RamBlock]:
        ram = self.ram
        return list(ram.blocks.values()) if ram is not None else []

    @property
    def page_index(self) -> PageIndex:
        """The page index (open the stream with ``index_ram=True``)."""
        from .sections.ram.index import PageIndex

        ram = self._ram_consumed()
        if ram is None or not isinstance(ram.consumer, PageIndex):
            raise UsageError("RAM was not indexed; open the stream with index_ram=True")
        return ram.consumer

    def page_consumer(self) -> Any:
        """What RAM pages were handed to (the page index, or the ``ram_consumer`` asked for,
        made now if no page record of the main stream made it); None without RAM."""
        ram = self._ram_consumed()
        return ram.consumer if ram is not None else None

    def _ram_consumed(self) -> RamState | None:
        """The RAM state, with the page consumer asked for made if no page record made it
        (all pages went on extra channels, or the RAM section could not be read)."""
        ram = self.ram
        if ram is not None and ram.consumer is None and ram.ctx.options.ram_consumer is not None:
            if ram.page_size is None:
                ram.set_page_size(self.page_size or 4096)
            ram.ensure_consumer()
        return ram

    def add_channel(self, path: Any) -> Any:
        """Add the pages of a recorded extra connection (multifd, postcopy-preempt)."""
        from .sections.ram.multifd import apply_channel, channel_page_size
        from .source import open_source

        ram = self.ram
        if ram is None or (ram.consumer is None and ram.ctx.options.ram_consumer is None):
            raise UsageError(
                f"channel {os.fspath(path)}: the stream has no RAM section to add its pages to"
            )
        name = os.fspath(path)
        src = open_source(path, format="stream")  # its errors name the path
        self._channel_sources.append(src)
        try:
            if ram.consumer is None and ram.page_size is None and self.page_size is None:
                # nothing stated the page size: a multifd channel's packets tell it,
                # before the consumer is made with one
                ps = channel_page_size(src)
                if ps is not None:
                    ram.set_page_size(ps)
                    self.page_size = ps
            self._ram_consumed()  # the consumer asked for, made now if no page made it
            inputs = getattr(ram.consumer, "inputs", None)
            if inputs is not None:
                inputs.append(src)
                src_no = len(inputs) - 1
            else:
                src_no = 0
            summary = apply_channel(ram, src, src_no)
        except QevmError as e:
            raise e.located(file=f"channel {name}") from None
        self.channels.append(summary)
        return summary

    def missing_pages(self) -> dict[str, int]:
        """Pages per block that no record gave (x-ignore-shared blocks not counted).

        Needs RAM indexed (``index_ram=True``) or written by a sink as it was
        read; only the blocks the consumer followed are counted.
        """
        ram = self.ram
        if ram is None:
            return {}
        consumer = ram.consumer
        if consumer is None and ram.ctx.options.ram_consumer is not None:
            # asked for, but never made: no page record reached the main stream
            # (every page went on extra channels), so every page is missing
            ps = ram.page_size or self.page_size or 4096
            return {
                b.name: -(-b.used_length // ps)
                for b in self.ram_blocks
                if b.in_stream and b.used_length
            }
        if consumer is None or not consumer.tracks_pages:
            raise UsageError("RAM was not indexed; open the stream with index_ram=True")
        out = {}
        for b in self.ram_blocks:
            if not b.in_stream:
                continue
            n = consumer.absent_pages(b.name)
            if n:
                out[b.name] = n
        return out

    def require_description(self) -> Description:
        if self.description is None:
            raise DescriptionError(
                "the stream has no JSON description (postcopy streams have none); "
                "give one with --desc FILE"
            )
        return self.description

    def close(self) -> None:
        ram = self.ram
        if ram is not None and ram.consumer is not None and hasattr(ram.consumer, "close"):
            ram.consumer.close()
        for src in self._channel_sources:
            src.close()
        self.source.close()

    def __enter__(self) -> Migration:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
