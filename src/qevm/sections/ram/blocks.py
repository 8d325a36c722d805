"""RAM blocks and the MEM_SIZE block list (QEMU's parse_ramblocks, parse_ramblock_mapped_ram).

The first record of the RAM section announces every block: its name, its
length and, as capabilities require, the host page size (postcopy), the
region's address (x-ignore-shared) and the mapped-ram header that says where
the block's bitmap and pages are in the file.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...errors import FormatError, TruncatedError, UnsupportedError
from ...format import MAPPED_RAM_HDR_VERSION, MappedRamHeader

if TYPE_CHECKING:
    from ...wire import Reader
    from .records import RamState

_U64 = struct.Struct(">Q")


@dataclass(eq=False)
class RamBlock:
    """A RAMBlock as announced by MEM_SIZE."""

    name: str
    used_length: int
    #: Host page size, sent with postcopy-ram for hugepage-backed blocks.
    page_size: int | None = None
    #: Guest-physical base of the block's region (x-ignore-shared only).
    mr_addr: int | None = None
    mapped: MappedRamHeader | None = None
    #: Where the MEM_SIZE entry sits.
    offset: int = 0
    #: Pages seen per record kind ("zero", "page", "xbzrle", "zlib", "fill").
    records: Counter = field(default_factory=Counter)

    @property
    def in_stream(self) -> bool:
        """False for blocks that x-ignore-shared leaves out (their RAM is shared memory)."""
        if self.mapped is not None:
            return self.mapped.in_stream
        return self.mr_addr is None or bool(self.records)


def read_block_list(state: RamState, r: Reader, total: int) -> list[RamBlock]:
    """The RAM block list (QEMU's parse_ramblocks)."""
    ctx = state.ctx
    caps = ctx.capabilities
    ignore_shared = "x-ignore-shared" in caps
    mapped = "mapped-ram" in caps
    postcopy = ctx.postcopy if ctx.postcopy and ctx.postcopy.get("ram") else None
    blocks = []
    remaining = total
    while remaining:
        boff = r.offset
        name = r.counted_str()
        if not name:
            raise FormatError(
                "empty RAM block name in the block list",
                offset=boff,
                field="idstr",
                expected="a non-empty block name",
            )
        length = r.u64()
        if length > remaining:
            raise FormatError(
                f"block {name!r} of {length:#x} bytes exceeds the announced total "
                f"(left {remaining:#x})",
                offset=boff,
            )
        block = RamBlock(name, length, offset=boff)
        if postcopy is not None:
            block.page_size = _hugepage_size(r, postcopy)
        if ignore_shared:
            block.mr_addr = r.u64()
        state.blocks[name] = block
        blocks.append(block)
        if mapped:
            _mapped_block(state, r, block)
        elif state.page_size is not None:
            state.ensure_consumer()
            state.consumer.add_block(block)
        remaining -= length
    return blocks


def _hugepage_size(r: Reader, postcopy: dict) -> int | None:
    """The optional per-block page size QEMU sends with postcopy-ram.

    QEMU sends it only for blocks whose page size differs from the
    host/target page size; the loader knows its own blocks, a reader
    does not.  A u64 here starts with 0x00, which no block name length
    can be, and must be one of the sizes in ADVISE's page-size summary.
    """
    head = r.peek(8)
    if len(head) < 8 or head[0] != 0:
        return None
    v = _U64.unpack(head)[0]
    summary = postcopy.get("page_size_summary", 0)
    if v and not v & (v - 1) and v & summary and v != postcopy.get("target_page_size"):
        r.skip(8)
        return v
    return None


def _mapped_block(state: RamState, r: Reader, block: RamBlock) -> None:
    """The mapped-ram header after a block's MEM_SIZE entry, and its pages."""
    m = MappedRamHeader.read(r)
    if m.version > MAPPED_RAM_HDR_VERSION:
        raise m.error(
            "version",
            f"mapped-ram header version {m.version}",
            expected=f"{MAPPED_RAM_HDR_VERSION}",
            error=UnsupportedError,
        )
    ps = m.page_size
    if ps == 0 or ps & (ps - 1):
        raise m.error(
            "page_size",
            f"mapped-ram page size {ps}",
            expected="a power of two",
        )
    block.mapped = m
    if state.page_size is None:
        state.set_page_size(ps)
    elif ps != state.page_size:
        raise m.error(
            "page_size",
            f"mapped-ram page size {ps} differs from the stream's {state.page_size}",
        )
    state.ensure_consumer()
    state.consumer.add_block(block)
    if not m.in_stream:
        return  # a block x-ignore-shared leaves out: no bitmap, no pages
    bitmap_off, pages_off = m.bitmap_offset, m.pages_offset
    if pages_off % ps:
        raise m.error(
            "pages_offset",
            f"mapped-ram pages offset {pages_off:#x} is not page aligned",
        )
    npages = block.used_length // ps
    bitmap_len = -(-npages // 64) * 8
    src = r.source
    if src.seekable:
        size = src.size or 0
        if bitmap_off + bitmap_len > size or pages_off + block.used_length > size:
            raise TruncatedError(
                f"mapped-ram block {block.name!r} extends past the end of the file",
                offset=m.at,
            )
        bitmap = bytes(src.read_at(bitmap_off, bitmap_len))
        state.consumer.mapped(block, bitmap, pages_off)
        r.seek(pages_off + block.used_length)
    else:
        # Streaming: QEMU's layout puts bitmap and pages after the header.
        if bitmap_off < r.offset or pages_off < bitmap_off + bitmap_len:
            raise UnsupportedError(
                "this mapped-ram layout needs random access; read it from a file",
                offset=m.at,
            )
        r.seek(bitmap_off)
        bitmap = r.bytes(bitmap_len)
        r.seek(pages_off)
        state.consumer.mapped_stream(block, bitmap, r)
    used_bits = int.from_bytes(bitmap, "little") & ((1 << npages) - 1)
    pages = used_bits.bit_count()
    if pages:
        block.records["page"] += pages
    if npages - pages:
        block.records["zero"] += npages - pages
