"""``dirty-bitmap``: block dirty bitmaps (migration/block-dirty-bitmap.c).

Chunks: flags (1, 2 or 4 bytes), then the node and bitmap aliases when the
flags say they changed, then START (u32 granularity, u8 flags), BITS (u64
first sector, u32 sector count, and unless ZEROES a u64-sized buffer) or
COMPLETE.  A chunk with EOS ends the section's data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .registry import SectionHandler, register

if TYPE_CHECKING:
    from ..stream import ParseContext, SectionEntry, SectionRecord
    from ..wire import Reader

EOS = 0x01
ZEROES = 0x02
BITMAP_NAME = 0x04
DEVICE_NAME = 0x08
START = 0x10
COMPLETE = 0x20
BITS = 0x40
EXTRA_FLAGS = 0x80


def read_flags(r: Reader) -> int:
    flags = r.u8()
    if flags & EXTRA_FLAGS:
        flags = flags << 8 | r.u8()
        if flags & EXTRA_FLAGS:
            flags = flags << 16 | r.u16()
    return flags


class DirtyBitmapHandler(SectionHandler):
    patterns = ("dirty-bitmap",)
    title = "block dirty bitmaps"

    def new_state(self, ctx: ParseContext, entry: SectionEntry) -> dict:
        return {"node": None, "bitmap": None}

    def read(self, ctx: ParseContext, entry: SectionEntry, rec: SectionRecord) -> Any:
        r = ctx.r
        st = entry.state
        chunks: list[dict[str, Any]] = []
        while True:
            flags = read_flags(r)
            if flags & DEVICE_NAME:
                st["node"] = r.counted_str()
            if flags & BITMAP_NAME:
                st["bitmap"] = r.counted_str()
            chunk: dict[str, Any] = {"node": st["node"], "bitmap": st["bitmap"]}
            if flags & START:
                chunk.update(kind="start", granularity=r.u32(), flags=r.u8())
            elif flags & COMPLETE:
                chunk.update(kind="complete")
            elif flags & BITS:
                first = r.u64()
                count = r.u32()
                chunk.update(kind="bits", first_sector=first, sectors=count)
                if flags & ZEROES:
                    chunk["zeroes"] = True
                else:
                    size = r.u64()
                    r.skip(size)
                    chunk["bytes"] = size
            if "kind" in chunk:
                chunks.append(chunk)
            if flags & EOS:
                return {"chunks": chunks}


register(DirtyBitmapHandler())
