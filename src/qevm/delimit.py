"""Where device sections end: decoding them with the description, footers, resynchronising.

QEMU's loader knows where a device (VMSD) section ends by reading it with
its own definitions, then checks the footer (0x7e + section id) that
follows.  qevm does the same with the JSON description when it knows it:
given with ``--desc``, found at the end of a file before reading, or found
in the last MiB of a pipe when its device sections begin.  Device state can
hold the footer's bytes, so a footer pattern is only a candidate: each is
tried in order until decoding ends exactly there.  Without a description a
section ends at the first candidate a plausible record follows, and is
decoded (and so checked) when the description arrives after EOF.

:meth:`DeviceSections.next_record` finds where reading can go on after a
record that could not be read.
"""

from __future__ import annotations

import re
import struct
import sys
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from .errors import DescriptionError, FormatError, QevmError, TruncatedError
from .format import SECTION_FOOTER, SECTION_FULL
from .source.base import CHUNK
from .source.memory import MemorySource
from .stream import SectionRecord, locate_description
from .vmstate.codec import Decoder
from .vmstate.desc import Description, DeviceDesc
from .vmstate.values import StateNode
from .wire import Reader

if TYPE_CHECKING:
    from .source.base import Source
    from .stream import ParseContext, ParseOptions, SectionEntry

#: A section footer: 0x7e, then the section id.
FOOTER = struct.Struct(">BI")
#: Bytes of a pipe read ahead, at its first device section, to find the
#: description at the end (device state after RAM is a few MiB at most).
LOOKAHEAD = 32 << 20
#: Read ahead when the stream has no footers either: nothing else can delimit
#: its device sections.
LOOKAHEAD_NO_FOOTERS = 256 << 20
#: Footer candidates tried per section when decoding it with the description.
MAX_CANDIDATES = 64
#: Candidates checked for a plausible next record per section without one.
MAX_IMPLAUSIBLE = 4096
#: Longest device section searched for its footer in a mapped file, and in a pipe
#: (whose bytes are kept in memory meanwhile).
MAX_SCANNED_SECTION = 1 << 30
MAX_SCANNED_PIPE = 64 << 20
#: Past any offset.
END = sys.maxsize
#: A section footer with a section id below 65536.
_ANY_FOOTER = re.compile(b"\x7e\x00\x00(?s:..)")


class DescriptionMatcher:
    """Pairs FULL sections with description entries in the order QEMU wrote both.

    QEMU writes a section's entry while it saves the section, so the n-th
    section named (idstr, instance id) goes with the n-th entry of that
    name: two sections can share both (an ISA PC's two ``isa-ide``).
    """

    def __init__(self, desc: Description) -> None:
        self._queues: dict[tuple[str, int], deque[DeviceDesc]] = {}
        for d in desc.devices:
            self._queues.setdefault((d.name, d.instance_id), deque()).append(d)
        self._last: dict[tuple[str, int], DeviceDesc] = {}

    def next(self, name: str, instance_id: int) -> DeviceDesc | None:
        """The entry of the next section ``name``/``instance_id`` (a section
        saved more often than described reuses the last entry)."""
        key = (name, instance_id)
        q = self._queues.get(key)
        if q:
            self._last[key] = q.popleft()
        return self._last.get(key)


class Loader(Protocol):
    """What :class:`DeviceSections` asks of the loader (:class:`qevm.loadvm.StreamParser`)."""

    r: Reader
    ctx: ParseContext
    options: ParseOptions
    input: Source
    entries: dict[int, SectionEntry]
    #: Whether sections end with footers (None until the first section says).
    footers: bool | None
    #: The stream's own description, when found before reading.
    own_desc: Description | None

    def error(self, error: QevmError) -> None:
        """Keep ``error`` (reading on) or raise it."""

    def plausible_record_at(self, off: int) -> bool:
        """Whether a record (or the end of the input) can start at ``off``."""


class DeviceSections:
    """Delimits and decodes the device sections the loader meets."""

    def __init__(self, parser: Loader) -> None:
        self.parser = parser
        opts = parser.options
        #: The description device sections are decoded with.
        self.desc: Description | None = opts.description or opts.own_description
        #: Whether it is the stream's own (every FULL section has an entry).
        self.own = opts.description is None
        self._matcher = DescriptionMatcher(self.desc) if self.desc is not None else None
        #: Sections delimited without a description, decoded when it is known.
        self.pending: list[SectionRecord] = []
        #: The section id of the footer :meth:`next_record` last found.
        self.footer_sid: int | None = None
        self._lookahead_after = 0
        #: Whether the last footer search reached the end of the input.
        self._scan_reached_end = False

    # -- the description ---------------------------------------------------------
    def known(self, desc: Description) -> None:
        """The description became known: sections delimited so far get their entries."""
        self.desc = desc
        self._matcher = DescriptionMatcher(desc)
        for rec in self.pending:
            self._match(rec)

    def _match(self, rec: SectionRecord) -> DeviceDesc | None:
        if self._matcher is None or rec.type != SECTION_FULL:
            return None
        entry = rec.entry
        assert entry is not None
        d = self._matcher.next(entry.idstr, entry.instance_id)
        if d is None and self.own:
            self.parser.ctx.warn(f"section {entry.label} has no entry in the stream's description")
        rec.desc = d
        if entry.desc is None:
            entry.desc = d
        return d

    def _look_ahead(self, span: int | None = None) -> None:
        """On a pipe, read ahead (``span`` bytes, else LOOKAHEAD, not again before
        as many were read) to find the description at the end of the input."""
        p = self.parser
        r = p.r
        if r.seekable or r.limit is not None:
            return
        if r.offset < self._lookahead_after and (span is None or self._lookahead_after == END):
            return  # (END: the end of the input was in the window, and no description)
        span = span or LOOKAHEAD
        try:
            r.ensure(span)
        except TruncatedError:
            # The rest of the input is in the reader's window: search it in place.
            self._lookahead_after = END
            desc = locate_description(MemorySource(r.buf, r.base, name=r.source.name))
            if desc is not None:
                p.own_desc = desc
                self.known(desc)
            return
        # More than that is left (early device sections before RAM): try again later.
        self._lookahead_after = r.offset + span

    # -- device sections ------------------------------------------------------------
    def body(self, rec: SectionRecord) -> None:
        """Read a device section's body: decode it, or find its footer."""
        if self.desc is None:
            self._look_ahead()
            if self.desc is None and self.parser.footers is False:
                self._look_ahead(LOOKAHEAD_NO_FOOTERS)
        desc = self._match(rec)
        if desc is not None:
            self._decode(rec, desc)
        else:
            self._delimit(rec)

    def described(self, rec: SectionRecord) -> None:
        """An old-style section a handler read that the description also describes."""
        self._match(rec)
        self.pending.append(rec)

    def _decode(self, rec: SectionRecord, desc: DeviceDesc) -> None:
        """Decode with the description, ending at a footer candidate if there is one."""
        p = self.parser
        r = p.r
        start = r.offset
        if not r.seekable:
            r.mark()  # decoding may run past the section: come back for the next try
        first: QevmError | None = None
        if p.footers is not False:
            for n, end in enumerate(self._footer_hits(rec, start, MAX_SCANNED_PIPE)):
                if n == MAX_CANDIDATES:
                    break
                try:
                    node = Decoder(r, end).vmsd(desc)
                    if r.offset == end:
                        self._store(rec, node)
                        return
                    raise DescriptionError(
                        f"device state decoded with the description ends at {r.offset:#x}, "
                        f"the section footer found at {end:#x}",
                        offset=min(r.offset, end),
                        expected="the description to account for every byte",
                    )
                except QevmError as e:
                    first = first or e
                r.seek(start)
        # No candidate fits: decode as far as the description says; the footer
        # check that follows, or the error, says what is wrong.
        try:
            node = Decoder(r).vmsd(desc)
        except QevmError as e:
            raise e if first is None or isinstance(e, TruncatedError) else first from None
        self._store(rec, node)

    def _store(self, rec: SectionRecord, node: StateNode) -> None:
        rec.body_end = node.offset + node.size
        if rec.entry is not None and rec.entry.handler is not None:
            rec.node = node
        else:
            rec.content = node

    def _delimit(self, rec: SectionRecord) -> None:
        """Without a description: the section ends at its footer; decoded later."""
        p = self.parser
        r = p.r
        end = self._scan(rec) if p.footers is not False else None
        if end is None:
            raise DescriptionError(
                "cannot find where this section ends: the stream has no section footers "
                "and no description for it is known",
                offset=rec.body_offset,
                expected="a description to decode it with (--desc FILE)",
            )
        rec.body_end = end
        if not r.seekable:
            rec.raw = r.bytes(end - r.offset)
        else:
            r.seek(end)
        self.pending.append(rec)

    def _scan(self, rec: SectionRecord) -> int | None:
        """Where the footer of ``rec`` starts (None: the stream has no footers)."""
        p = self.parser
        start = p.r.offset
        first = None
        for n, hit in enumerate(self._footer_hits(rec, start, MAX_SCANNED_SECTION)):
            if p.plausible_record_at(hit + 5):
                p.footers = True
                return hit
            if first is None:
                first = hit
            if n == MAX_IMPLAUSIBLE:
                break
        if first is not None:
            # What follows is no record: let reading it there say what is wrong.
            p.footers = True
            return first
        if p.footers is None:
            p.footers = False
            return None
        sid = rec.entry.section_id  # type: ignore[union-attr]
        if self._scan_reached_end:
            raise TruncatedError(
                "the input ends inside this section (no section footer before its end)",
                offset=start,
                expected=f"0x7e + section id {sid} after the device state",
            )
        raise FormatError(
            "no section footer found",
            offset=start,
            expected=f"0x7e + section id {sid} after the device state",
        )

    def _footer_hits(self, rec: SectionRecord, start: int, pipe_span: int) -> Iterator[int]:
        sid = rec.entry.section_id  # type: ignore[union-attr]
        pattern = re.compile(re.escape(FOOTER.pack(SECTION_FOOTER, sid)))
        r = self.parser.r
        span = MAX_SCANNED_SECTION if r.source.view() is not None else pipe_span
        self._scan_reached_end = False
        for hit, _ in self._search(pattern, start, span, consume=False):
            yield hit

    # -- after EOF ----------------------------------------------------------------------
    def finish(self, stream_desc: Description | None) -> None:
        """Decode the sections that were waiting for the description."""
        p = self.parser
        if self.desc is None and stream_desc is not None:
            self.known(stream_desc)
        if not p.options.decode_devices:
            return
        for rec in self.pending:
            entry = rec.entry
            assert entry is not None
            if rec.error is not None or rec.desc is None or rec.node is not None:
                continue
            if rec.raw is not None:
                r = Reader(MemorySource(rec.raw, rec.body_offset, name=p.input.name))
            else:
                r = Reader(p.input, rec.body_offset)
            try:
                node = Decoder(r, rec.body_end).vmsd(rec.desc)
                if r.offset != rec.body_end:
                    raise DescriptionError(
                        f"{rec.body_end - r.offset} bytes of the section are left after "
                        "decoding it with the description",
                        offset=r.offset,
                        expected="the description to account for every byte",
                    )
            except QevmError as e:
                p.error(e.located(section=entry.label))
                rec.error = e
                continue
            if entry.handler is not None:
                rec.node = node
            else:
                rec.content = node
                rec.raw = None

    # -- resynchronising ------------------------------------------------------------------
    def next_record(self, start: int) -> tuple[int, int | None] | None:
        """The first record found at or after ``start``, and the offset of the
        footer just before it (None: no footer), with the reader moved there;
        None, with the reader moved to the end, when there is none.

        A record counts where a section footer (or, in streams without
        footers, a section header of a known name) is followed by a
        plausible record, or where the stream's own description says EOF is.
        """
        p = self.parser
        r = p.r
        # Search from ``start``, also where decoding ran ahead of it (a pipe's
        # window still holds what was decoded).
        if r.seekable:
            r.seek(start)
        elif start < r.offset:
            r.seek(max(start, r.base))
        eof_at = None
        own = p.own_desc
        if own is not None and own.offset is not None and own.offset - 6 >= start:
            eof_at = own.offset - 6
        found = None
        pattern, is_footer = self._resync_pattern()
        if pattern is not None:
            lo = start - 5 if is_footer else start
            span = (eof_at if eof_at is not None else END) - lo
            for hit, matched in self._search(pattern, lo, span, consume=True):
                at = hit + 5 if is_footer else hit
                if at >= start and p.plausible_record_at(at):
                    found = (at, hit if is_footer else None)
                    self.footer_sid = FOOTER.unpack(matched)[1] if is_footer else None
                    break
        if found is None and eof_at is not None:
            found = (eof_at, None)
        if found is None:
            return None
        r.seek(found[0])
        return found

    def _resync_pattern(self) -> tuple[re.Pattern[bytes] | None, bool]:
        p = self.parser
        if p.footers is not False:
            # Any section's footer, also of one whose header was lost: QEMU
            # numbers sections from 0, one per registered handler.
            return _ANY_FOOTER, True
        names = {e.idstr for e in p.entries.values()}
        if self.desc is not None:
            names.update(d.name for d in self.desc.devices)
        if not names:
            return None, False
        counted = b"|".join(
            re.escape(bytes([len(n)]) + n.encode("latin-1")) for n in sorted(names) if len(n) < 256
        )
        return re.compile(b"[\x01\x04](?s:.{4})(?:" + counted + b")"), False

    # -- searching the input ------------------------------------------------------------------
    def _search(
        self, pattern: re.Pattern[bytes], start: int, span: int, *, consume: bool
    ) -> Iterator[tuple[int, bytes]]:
        """Offsets and bytes of ``pattern``'s matches in ``[start, start + span)``, in order.

        A mapped file is searched in place.  Otherwise the reader's window is
        searched: grown (every byte from ``start`` stays in memory, so ``span``
        bounds it) or, with ``consume``, moved along (what was searched is
        read past).  ``_scan_reached_end`` says whether the input ended first.
        """
        r = self.parser.r
        view = r.source.view()
        if view is not None:
            end = min(start + span, len(view) if r.limit is None else r.limit)
            for m in pattern.finditer(view, max(start, 0), max(end, 0)):
                yield m.start(), m.group()
            self._scan_reached_end = end >= (len(view) if r.limit is None else r.limit)
            return
        pos = max(start, r.base)
        stop = start + span
        # Bytes a match may need beyond its start (footers: 5; counted names: 261).
        overlap = 6 + 255
        while True:
            window_end = r.offset + r.available()
            hi = min(window_end, stop)
            m = pattern.search(r.buf, pos - r.base, max(pos, hi) - r.base)
            if m is not None:
                pos = r.base + m.start()
                yield pos, m.group()
                pos += 1
                continue
            if window_end >= stop:
                return
            pos = max(pos, window_end - overlap)
            if consume and pos > r.offset:
                r.unmark()
                r.seek(pos)
            try:
                r.ensure(min(r.available() + CHUNK, stop - r.offset))
            except TruncatedError:
                if r.offset + r.available() == window_end:
                    self._scan_reached_end = True
                    return
