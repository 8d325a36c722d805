"""The ``ram`` section handler (QEMU's ram.c): START/PART/END of RAM records."""

from __future__ import annotations

import re
import struct
from typing import TYPE_CHECKING, Any

from ...errors import UnsupportedError
from ...format import RAM_PAGE_KINDS
from .. import SectionHandler, register
from .blocks import RamBlock
from .records import RamState

if TYPE_CHECKING:
    from ...stream import ParseContext, SectionEntry, SectionRecord
    from ...wire import Reader, Writer

RAM_VERSION = 4


class RamHandler(SectionHandler):
    patterns = ("ram",)
    title = "guest RAM"

    def new_state(self, ctx: ParseContext, entry: SectionEntry) -> RamState:
        return RamState(ctx)

    def read(self, ctx: ParseContext, entry: SectionEntry, rec: SectionRecord) -> Any:
        if entry.version != RAM_VERSION:
            raise UnsupportedError(
                f"RAM section version {entry.version}",
                offset=rec.offset,
                expected=f"{RAM_VERSION} (QEMU 0.13 and later)",
            )
        return entry.state.read_section(ctx.r)

    def lost(self, ctx: ParseContext, entry: SectionEntry, skipped: Any) -> None:
        # A CONTINUE record after the gap is in the block the last named record
        # before it named: find that record in the skipped bytes if they hold one.
        state: RamState = entry.state
        if state.last is None or not state.blocks or not state.page_size:
            return
        block = last_named_block(state, *skipped) if skipped is not None else None
        if block is not None:
            state.last = block
            return
        where = f" ({skipped[1]:#x}-{skipped[2]:#x})" if skipped is not None else ""
        ctx.warn(
            f"RAM pages after the bytes skipped{where} that continue a block are taken "
            f"to be in {state.last.name!r}, the last block named before them"
        )

    def new_write_state(self, wctx: Any, entry: SectionEntry) -> Any:
        from .write import RamWriter

        return RamWriter(wctx, entry)

    def write(
        self, w: Writer, entry: SectionEntry, rec: SectionRecord, r: Reader, state: Any = None
    ) -> None:
        state.write(w, rec, r)

    def to_json(self, entry: SectionEntry, rec: SectionRecord) -> Any:
        return rec.content.to_json() if rec.content is not None else None

    def compat(self, entry: SectionEntry) -> Any:
        state: RamState = entry.state
        return {"section sizes": {b.name: f"0x{b.used_length:016x}" for b in state.blocks.values()}}


#: Bytes of skipped input searched at a time, from its end, for a named page record.
SCAN_STEP = 16 << 20


def last_named_block(state: RamState, source: Any, start: int, end: int) -> RamBlock | None:
    """The block named by the last page record that starts in ``[start, end)`` of
    ``source`` (a record header whose flags name a block, then that block's name)."""
    names = sorted({b.name.encode("latin-1") for b in state.blocks.values()})
    pattern = re.compile(b"|".join(re.escape(bytes([len(n)]) + n) for n in names if len(n) < 256))
    ps = state.page_size
    assert ps is not None
    hi = end
    while hi > start:
        lo = max(start, hi - SCAN_STEP)
        base = max(start, lo - 8)
        data = source.read_at(base, min(end, hi + 256) - base)
        found = None
        for m in pattern.finditer(data, lo - base + 8 if lo == start else lo - base, hi - base):
            (v,) = _U64.unpack_from(data, m.start() - 8)
            flags = v & (ps - 1)
            block = state.blocks.get(m.group()[1:].decode("latin-1"))
            # flags of a page record without CONTINUE: it names its block
            if block is not None and flags in RAM_PAGE_KINDS and v - flags < block.used_length:
                found = block
        source.release(base, base + len(data))
        if found is not None:
            return found
        hi = lo
    return None


_U64 = struct.Struct(">Q")


register(RamHandler())
