"""The ``ram`` section handler (QEMU's ram.c): START/PART/END of RAM records."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import UnsupportedError
from .. import SectionHandler, register
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


register(RamHandler())
