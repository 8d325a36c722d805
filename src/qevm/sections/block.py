"""``block``: block migration of whole disks (migration/block.c, QEMU <= 9.0).

Records ``u64 sector<<9 | flags``: DEVICE_BLOCK carries a counted device name
and, unless ZERO_BLOCK, 1 MiB of data; PROGRESS carries a percentage in the
high bits; EOS ends the section's data.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from ..errors import FormatError
from .registry import SectionHandler, register

if TYPE_CHECKING:
    from ..stream import ParseContext, SectionEntry, SectionRecord

SECTOR_BITS = 9
DEVICE_BLOCK = 0x01
EOS = 0x02
PROGRESS = 0x04
ZERO_BLOCK = 0x08
BLOCK_SIZE = 1 << 20


class BlockHandler(SectionHandler):
    patterns = ("block",)
    title = "block migration (disk contents)"

    def read(self, ctx: ParseContext, entry: SectionEntry, rec: SectionRecord) -> Any:
        r = ctx.r
        blocks: Counter = Counter()
        zero: Counter = Counter()
        progress = None
        while True:
            off = r.offset
            v = r.u64()
            flags = v & ((1 << SECTOR_BITS) - 1)
            if flags & DEVICE_BLOCK:
                name = r.counted_str()
                if flags & ZERO_BLOCK:
                    zero[name] += 1
                else:
                    r.skip(BLOCK_SIZE)
                    blocks[name] += 1
            elif flags & PROGRESS:
                progress = v >> SECTOR_BITS
            elif not flags & EOS:
                raise FormatError(
                    f"block migration flags {flags:#x}",
                    offset=off,
                    expected="DEVICE_BLOCK, PROGRESS or EOS",
                )
            if flags & EOS:
                out: dict[str, Any] = {"blocks": dict(blocks), "zero_blocks": dict(zero)}
                if progress is not None:
                    out["progress"] = progress
                return out


register(BlockHandler())
