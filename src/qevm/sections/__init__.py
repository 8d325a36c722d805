"""The registry of sections that are not (only) described by the JSON.

QEMU's live handlers (``register_savevm_live``) write their own formats in
START/PART/END sections — RAM, block migration, dirty bitmaps, the spapr hash
page table, s390 storage attributes, vfio — and some old-style handlers
write a FULL section the description only calls ``data``.  Each such format
is a :class:`SectionHandler` here; the framing asks :func:`handler_for` and
falls back to the description (or opaque bytes bounded by the footer).
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..stream import ParseContext, SectionEntry, SectionRecord
    from ..wire import Reader, Writer


class SectionHandler:
    """Reads (and writes back) one kind of non-VMSD section."""

    #: idstr patterns (fnmatch) this handler claims.
    patterns: tuple[str, ...] = ()
    #: Short description for ``qevm info``.
    title: str = ""
    #: True when FULL sections are still described by the JSON as a buffer
    #: (old-style handlers): the framing decodes both views.
    described: bool = False

    def claims(self, idstr: str) -> bool:
        return any(fnmatch.fnmatchcase(idstr, p) for p in self.patterns)

    def reads(self, rec_type: int) -> bool:
        """Whether this handler reads records of this type (else: as a device)."""
        return True

    def new_state(self, ctx: ParseContext, entry: SectionEntry) -> Any:
        """Per-section state kept across its START/PART/END records."""
        return None

    def read(self, ctx: ParseContext, entry: SectionEntry, rec: SectionRecord) -> Any:
        """Consume one record's body from ``ctx.r``; return what it held."""
        raise NotImplementedError

    def lost(self, ctx: ParseContext, entry: SectionEntry, skipped: Any) -> None:
        """Bytes of the stream were skipped (non-strict reading resynchronised):
        ``skipped`` is ``(source, start, end)`` when they can still be read, else
        None.  Forget (or recover from them) what the records in them changed."""

    def new_write_state(self, wctx: Any, entry: SectionEntry) -> Any:
        """Per-section state kept while its records are written back
        (``wctx``: the :class:`~qevm.writer.WriteContext`)."""
        return None

    def write(
        self, w: Writer, entry: SectionEntry, rec: SectionRecord, r: Reader, state: Any = None
    ) -> None:
        """Write one record's body back; ``r`` is positioned at its original body.

        The default copies the body: the formats whose handlers keep only a
        summary are opaque payload to qevm, so their bytes are the encoding.
        """
        left = rec.body_end - rec.body_offset
        while left:
            step = min(left, 1 << 22)
            w.bytes(r.bytes(step))
            left -= step

    def to_json(self, entry: SectionEntry, rec: SectionRecord) -> Any:
        """Native JSON of one record's content."""
        return rec.content

    def compat(self, entry: SectionEntry) -> Any:
        """What analyze-migration.py shows for this section."""
        return ""


#: Registered handlers, most specific first.
HANDLERS: list[SectionHandler] = []


def register(handler: SectionHandler) -> SectionHandler:
    """Add a handler to the registry."""
    HANDLERS.append(handler)
    return handler


def handler_for(idstr: str) -> SectionHandler | None:
    """The handler for section ``idstr``, or None for plain VMSD sections."""
    for h in HANDLERS:
        if h.claims(idstr):
            return h
    return None


def load_all() -> None:
    """Import the handler modules so they register themselves."""
    from . import block, dirty_bitmap, htab, s390, vfio  # noqa: F401
    from .ram import section  # noqa: F401
