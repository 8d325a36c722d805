"""Writing the RAM section back, record by record, with new page contents.

:class:`RamWriter` is the RAM handler's write state: it reads the section's
records again (:meth:`RamState.records`, the one decoder) and copies those no
edit touches as they are.  A mapped-ram block's bitmap and page area (which
sit in the file between MEM_SIZE entries) are copied with holes kept as holes.

:class:`RamPatch` holds new contents for ranges of RAM blocks.  For a stream
of records, the *last* record of every changed page (whatever its kind) is
written as a PAGE record with the new content, and pages the stream never
sent get PAGE records before the final EOS, so a loading QEMU ends with the
new bytes and sees each page no more often than before (postcopy refuses a
page placed twice).  For mapped-ram, the page's slot gets the content and
its bitmap bit is set.
"""

from __future__ import annotations

import bisect
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ...errors import UnsupportedError, UsageError
from ...fileio import copy_range, copy_sparse
from ...format import (
    MAPPED_RAM_FILE_OFFSET_ALIGNMENT,
    RAM_PAGE_KINDS,
    RAM_SAVE_FLAG_CONTINUE,
    RAM_SAVE_FLAG_EOS,
    RAM_SAVE_FLAG_MEM_SIZE,
    RAM_SAVE_FLAG_PAGE,
    RAM_SAVE_FLAG_ZERO,
    MappedRamHeader,
)
from ...wire import Reader, Writer
from .blocks import RamBlock
from .consumer import PageConsumer
from .records import RamRecord, RamState

if TYPE_CHECKING:
    from ...migration import Migration
    from ...stream import SectionEntry, SectionRecord
    from ...writer import WriteContext


# -- records ----------------------------------------------------------------------------

#: ZERO records built at once by :func:`write_zero_run`.
ZERO_RUN_STEP = 1 << 16


def write_record_head(w: Writer, rec_flags: int, addr: int, block: RamBlock | None) -> None:
    """The u64 of a record and, for a page record without CONTINUE, its block name."""
    w.u64(addr | rec_flags)
    if block is not None and rec_flags & ~RAM_SAVE_FLAG_CONTINUE in RAM_PAGE_KINDS:
        if not rec_flags & RAM_SAVE_FLAG_CONTINUE:
            w.counted_str(block.name)


def write_zero(w: Writer, block: RamBlock, addr: int, fill: int = 0, cont: bool = False) -> None:
    """A ZERO record (``fill``: the byte the page is filled with)."""
    write_record_head(w, RAM_SAVE_FLAG_ZERO | (RAM_SAVE_FLAG_CONTINUE if cont else 0), addr, block)
    w.u8(fill)


def write_zero_run(
    w: Writer, block: RamBlock, addr: int, count: int, page_size: int, cont: bool = False
) -> None:
    """ZERO records (fill 0) for ``count`` consecutive pages from ``addr``."""
    if count and not cont:
        write_zero(w, block, addr)
        addr += page_size
        count -= 1
    flags = np.uint64(RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE)
    for done in range(0, count, ZERO_RUN_STEP):
        n = min(ZERO_RUN_STEP, count - done)
        first = addr + done * page_size
        heads = np.arange(n, dtype=np.uint64) * np.uint64(page_size) + np.uint64(first)
        records = np.zeros((n, 9), dtype=np.uint8)  # u64 head, then the fill byte 0
        records[:, :8] = (heads | flags).astype(">u8").view(np.uint8).reshape(n, 8)
        w.bytes(records.reshape(-1).data)


def write_page(
    w: Writer, block: RamBlock, addr: int, data: bytes | memoryview, cont: bool = False
) -> None:
    """A PAGE record with the page's bytes."""
    write_record_head(w, RAM_SAVE_FLAG_PAGE | (RAM_SAVE_FLAG_CONTINUE if cont else 0), addr, block)
    w.bytes(data)


def mem_size_entry(block: RamBlock) -> bytes:
    """A block's entry in the MEM_SIZE list up to its mapped-ram header: the
    counted name, the length, and the host page size and region address when
    the stream has them."""
    buf = io.BytesIO()
    w = Writer(buf)
    w.counted_str(block.name)
    w.u64(block.used_length)
    if block.page_size is not None:
        w.u64(block.page_size)
    if block.mr_addr is not None:
        w.u64(block.mr_addr)
    return buf.getvalue()


def write_mem_size_entry(w: Writer, block: RamBlock, mapped: MappedRamHeader | None = None) -> None:
    """One block of the MEM_SIZE list with its mapped-ram header (``mapped``, or
    the block's own), not the bitmap and pages the header points to."""
    w.bytes(mem_size_entry(block))
    m = mapped or block.mapped
    if m is not None:
        w.bytes(m.pack())


# -- edits ---------------------------------------------------------------------------------


@dataclass
class RamWrite:
    """``length`` new bytes at ``offset`` of block ``block``; ``read(pos, n)``
    returns ``n`` of them from ``pos`` (relative to ``offset``)."""

    block: str
    offset: int
    length: int
    read: Callable[[int, int], bytes]


def bytes_reader(data: bytes) -> Callable[[int, int], bytes]:
    """A :attr:`RamWrite.read` over bytes in memory."""
    return lambda pos, n: data[pos : pos + n]


def file_reader(path: str | os.PathLike[str]) -> tuple[Callable[[int, int], bytes], int]:
    """A :attr:`RamWrite.read` over a file (read when written), and its size."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise UsageError(f"{os.fspath(path)}: {e.strerror}") from None
    size = os.fstat(fd).st_size

    def read(pos: int, n: int) -> bytes:
        data = os.pread(fd, n, pos)
        if len(data) != n:
            raise UsageError(f"{os.fspath(path)} changed while it was being written")
        return data

    return read, size


class RamPatch:
    """New contents for ranges of guest RAM blocks, applied when the stream is written."""

    def __init__(self, mig: Migration) -> None:
        ram = mig.ram
        if ram is None or mig.page_size is None:
            raise UsageError("the stream has no RAM section to write pages into")
        self.mig = mig
        self.page_size = mig.page_size
        self.blocks: dict[str, RamBlock] = ram.blocks
        self.writes: list[RamWrite] = []
        #: block name -> page number -> the writes touching it, in order given
        self.pages: dict[str, dict[int, list[RamWrite]]] = {}
        self._checked = False

    def _check_stream(self) -> None:
        """Refuse streams whose RAM pages are not all in this one file."""
        if self._checked:
            return
        self._checked = True
        mig = self.mig
        if mig.channels:
            raise UsageError(
                "RAM pages of this stream also travel on extra channels; convert it to a "
                "single stream first (qevm convert --channel ...) and write RAM into that"
            )
        ram = mig.ram
        assert ram is not None
        plain = [b for b in ram.blocks.values() if b.mapped is None and b.in_stream]
        # Multifd before QEMU 8.1 writes no MULTIFD_FLUSH: its main channel has
        # zero pages only, the data pages are missing from this file.
        tracked = ram.consumer is not None and ram.consumer.tracks_pages
        missing = mig.missing_pages() if tracked else {}
        only_zero = bool(missing) and not any(b.records.get("page") for b in plain)
        if plain and (ram.multifd_flushes or not any(b.records for b in plain) or only_zero):
            raise UsageError(
                "this stream was sent with multifd: its RAM pages are on the multifd "
                "channels, not in this file; convert it with its channels first "
                "(qevm convert --channel ...)"
            )

    def add(self, write: RamWrite) -> None:
        """Schedule ``write`` (checked against the block)."""
        self._check_stream()
        block = self.blocks.get(write.block)
        if block is None:
            near = ", ".join(sorted(self.blocks))
            raise UsageError(f"no RAM block {write.block!r} (the stream has: {near})")
        if write.length <= 0:
            raise UsageError(f"nothing to write into {write.block!r} at {write.offset:#x}")
        if write.offset < 0 or write.offset + write.length > block.used_length:
            raise UsageError(
                f"{write.length:#x} bytes at {write.offset:#x} do not fit in RAM block "
                f"{block.name!r} ({block.used_length:#x} bytes)"
            )
        if not block.in_stream:
            raise UsageError(
                f"RAM block {block.name!r} is not in the stream (x-ignore-shared leaves "
                "shared memory out); its contents cannot be written here"
            )
        ps = self.page_size
        pages = self.pages.setdefault(block.name, {})
        for p in range(write.offset // ps, -(-(write.offset + write.length) // ps)):
            pages.setdefault(p, []).append(write)
        self.writes.append(write)

    def page(self, name: str, page: int) -> bytes:
        """The new content of one page (the old one where the writes leave gaps)."""
        ps = self.page_size
        start = page * ps
        writes = self.pages[name][page]
        covered = any(w.offset <= start and w.offset + w.length >= start + ps for w in writes)
        if covered:
            buf = bytearray(ps)
        else:
            buf = bytearray(self.mig.page_index.read_page(name, page))
        for w in writes:
            lo = max(start, w.offset)
            hi = min(start + ps, w.offset + w.length)
            buf[lo - start : hi - start] = w.read(lo - w.offset, hi - lo)
        return bytes(buf)


class RamWriter:
    """The RAM handler's write state: one section record after another.

    Records the patch leaves alone are copied as they are (runs of them at
    once); the last record of a changed page becomes a PAGE record with the
    new content; MEM_SIZE is written anew, since a mapped-ram block's header
    points at its bitmap and pages, which may have to move.
    """

    def __init__(self, wctx: WriteContext, entry: SectionEntry) -> None:
        self.wctx = wctx
        self.entry = entry
        self.src = wctx.source
        self.state = self._walker()
        self.patch = wctx.ram_patch
        #: input offset of the record rewritten for a page -> (record, block, page)
        self.replace: dict[int, tuple[RamRecord, str, int]] = {}
        self._replace_at: list[int] = []
        #: (block, page) the stream never sent, written before the last EOS
        self.append: list[tuple[str, int]] = []
        if self.patch is not None and self.patch.pages:
            self._plan()

    def _walker(self) -> RamState:
        """A RAM state that reads records without indexing their pages."""
        ctx = self.wctx.parse_ctx
        state = RamState(ctx)
        state.consumer = PageConsumer(ctx.page_size or 4096)
        return state

    def _plan(self) -> None:
        """Find the last record of every page the patch changes."""
        assert self.patch is not None
        wanted = self.patch.pages
        shift = self.patch.page_size.bit_length() - 1
        last: dict[tuple[str, int], RamRecord] = {}
        state = self._walker()
        for srec in self.entry.records:
            r = Reader(self.src, srec.body_offset)
            for rec in state.records(r, runs=False):
                block = rec.block
                if block is not None and block.name in wanted:
                    page = rec.addr >> shift  # type: ignore[union-attr]
                    if page in wanted[block.name]:
                        last[(block.name, page)] = rec  # type: ignore[assignment]
        self.replace = {rec.offset: (rec, name, p) for (name, p), rec in last.items()}
        self._replace_at = sorted(self.replace)
        order = {name: i for i, name in enumerate(state.blocks)}
        self.append = sorted(
            (
                (name, p)
                for name, pages in wanted.items()
                if state.blocks[name].mapped is None
                for p in pages
                if (name, p) not in last
            ),
            key=lambda k: (order[k[0]], k[1]),
        )

    # -- writing ---------------------------------------------------------------
    def write(self, w: Writer, rec: SectionRecord, r: Reader) -> None:
        """Write the records of one RAM section body."""
        last_section = rec is self.entry.records[-1]
        for item in self.state.records(r):
            r.release_behind()  # (a whole RAM can be one record: let go as it is copied)
            if type(item) is RamRecord:
                if item.kind == RAM_SAVE_FLAG_MEM_SIZE:
                    self._mem_size(w, item)
                    continue
                if item.kind == RAM_SAVE_FLAG_EOS and last_section and self.append:
                    self._append_pages(w)
            self._copy(w, item.offset, item.end)

    def _copy(self, w: Writer, start: int, end: int) -> None:
        """Input records ``[start, end)`` as they are, but for the pages the patch changes."""
        at = self._replace_at
        i = bisect.bisect_left(at, start)
        pos = start
        while i < len(at) and at[i] < end:
            old, name, page = self.replace[at[i]]
            assert self.patch is not None and old.block is not None
            copy_range(w, self.src, pos, old.offset)
            cont = bool(old.flags & RAM_SAVE_FLAG_CONTINUE)
            write_page(w, old.block, old.addr, self.patch.page(name, page), cont=cont)
            pos = old.end
            i += 1
        copy_range(w, self.src, pos, end)

    def _append_pages(self, w: Writer) -> None:
        assert self.patch is not None
        ps = self.patch.page_size
        prev = None
        for name, p in self.append:
            block = self.state.blocks[name]
            write_page(w, block, p * ps, self.patch.page(name, p), cont=name == prev)
            prev = name
        self.append = []

    def _mem_size(self, w: Writer, rec: RamRecord) -> None:
        write_record_head(w, rec.flags, rec.addr, None)
        for b in rec.blocks or []:
            m = b.mapped
            out_header = w.offset + len(mem_size_entry(b))
            if m is None:
                write_mem_size_entry(w, b)
            elif not m.in_stream or out_header == m.at:
                write_mem_size_entry(w, b)
                self._mapped_in_place(w, b)
            else:
                self._mapped_relocated(w, b, out_header)

    def _edited_pages(self, b: RamBlock) -> dict[int, bytes]:
        if self.patch is None or b.name not in self.patch.pages:
            return {}
        return {p: self.patch.page(b.name, p) for p in sorted(self.patch.pages[b.name])}

    def _bitmap(self, b: RamBlock, edited: dict[int, bytes]) -> tuple[bytes, int]:
        m = b.mapped
        assert m is not None
        npages = b.used_length // m.page_size
        length = -(-npages // 64) * 8
        bitmap = bytearray(self.src.read_at(m.bitmap_offset, length))
        for p in edited:
            bitmap[p >> 3] |= 1 << (p & 7)
        return bytes(bitmap), length

    def _mapped_in_place(self, w: Writer, b: RamBlock) -> None:
        """The bitmap and page area between this header and the next, at the same offsets."""
        m = b.mapped
        assert m is not None
        if not m.in_stream:
            return  # x-ignore-shared: no bitmap, no pages
        start = m.at + m.size
        end = m.pages_offset + b.used_length
        edited = self._edited_pages(b)
        overrides: list[tuple[int, bytes]] = []
        if edited:
            bitmap, length = self._bitmap(b, edited)
            if not (start <= m.bitmap_offset and m.bitmap_offset + length <= m.pages_offset):
                raise UnsupportedError(
                    f"mapped-ram block {b.name!r}: its bitmap is not between its header and "
                    "its pages; cannot write pages into this layout",
                    offset=m.at,
                )
            overrides.append((m.bitmap_offset, bitmap))
            ps = m.page_size
            overrides.extend((m.pages_offset + p * ps, data) for p, data in edited.items())
        if end < start:
            raise UnsupportedError(
                f"mapped-ram block {b.name!r}: its pages end before its header",
                offset=m.at,
            )
        copy_sparse(w, self.src, start, end, overrides)

    def _mapped_relocated(self, w: Writer, b: RamBlock, out_header: int) -> None:
        """The block laid out as QEMU lays it out at this output position."""
        m = b.mapped
        assert m is not None
        edited = self._edited_pages(b)
        bitmap, length = self._bitmap(b, edited)
        bitmap_off = out_header + m.size
        pages_off = (
            -(-(bitmap_off + length) // MAPPED_RAM_FILE_OFFSET_ALIGNMENT)
            * MAPPED_RAM_FILE_OFFSET_ALIGNMENT
        )
        write_mem_size_entry(w, b, m.replace(bitmap_offset=bitmap_off, pages_offset=pages_off))
        w.bytes(bitmap)
        w.hole(pages_off - w.offset)
        ps = m.page_size
        npages = b.used_length // ps
        bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")[:npages]
        for p in edited:
            bits[p] = 0  # written on their own below
        # Runs of equal bits: holes for clear ones, copied slots for set ones.
        edges = np.flatnonzero(np.diff(bits.astype(np.int8))) + 1
        starts = [0, *edges.tolist()]
        ends = [*edges.tolist(), npages]
        for lo, hi in zip(starts, ends):
            if lo >= hi:
                continue
            if bits[lo]:
                copy_sparse(w, self.src, m.pages_offset + lo * ps, m.pages_offset + hi * ps)
            else:
                for p in range(lo, hi):
                    if p in edited:
                        w.hole(pages_off + p * ps - w.offset)
                        w.bytes(edited[p])
                w.hole(pages_off + hi * ps - w.offset)
        w.hole(pages_off + b.used_length - w.offset)
