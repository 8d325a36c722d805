"""Writing the RAM section back, record by record, with new page contents.

:class:`RamWriter` is the RAM handler's write state: it reads the section's
records again (:meth:`RamState.records`) and encodes each one; payloads are
copied from the input.  A mapped-ram block's bitmap and page area (which sit
in the file between MEM_SIZE entries) are copied with holes kept as holes.

:class:`RamPatch` holds new contents for ranges of RAM blocks.  For a stream
of records, the *last* record of every changed page (whatever its kind) is
written as a PAGE record with the new content, and pages the stream never
sent get PAGE records before the final EOS, so a loading QEMU ends with the
new bytes and sees each page no more often than before (postcopy refuses a
page placed twice).  For mapped-ram, the page's slot gets the content and
its bitmap bit is set.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ...errors import UnsupportedError, UsageError
from ...wire import Reader, Writer
from .consumer import PageConsumer
from .records import (
    FLAG_CONTINUE,
    FLAG_EOS,
    FLAG_MEM_SIZE,
    FLAG_ZERO,
    MAPPED_RAM_HEADER,
    PAGE_KINDS,
    RamBlock,
    RamState,
    write_mem_size_entry,
    write_page,
    write_record,
    write_record_head,
)

if TYPE_CHECKING:
    from ...migration import Migration
    from ...stream import SectionEntry, SectionRecord
    from ...writer import WriteContext

#: QEMU's MAPPED_RAM_FILE_OFFSET_ALIGNMENT: where a block's pages start.
MAPPED_RAM_ALIGNMENT = 1 << 20


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
    """The RAM handler's write state: one section record after another."""

    def __init__(self, wctx: WriteContext, entry: SectionEntry) -> None:
        self.wctx = wctx
        self.entry = entry
        self.src = wctx.source
        self.state = self._walker()
        self.patch = wctx.ram_patch
        #: ordinal of a page record -> (block, page) it is rewritten for
        self.replace: dict[int, tuple[str, int]] = {}
        #: (block, page) the stream never sent, written before the last EOS
        self.append: list[tuple[str, int]] = []
        self._n = 0
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
        last: dict[tuple[str, int], int] = {}
        state = self._walker()
        n = 0
        for srec in self.entry.records:
            r = Reader(self.src, srec.body_offset)
            for rr in state.records(r):
                if rr.kind in PAGE_KINDS:
                    pages = wanted.get(rr.block.name)  # type: ignore[union-attr]
                    if pages is not None:
                        p = rr.addr >> shift
                        if p in pages:
                            last[(rr.block.name, p)] = n  # type: ignore[union-attr]
                    n += 1
        self.replace = {n: key for key, n in last.items()}
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
        src = self.src
        replace = self.replace
        for rr in self.state.records(r):
            r.release_behind()  # (a whole RAM can be one record: let go as it is copied)
            kind = rr.kind
            if kind in PAGE_KINDS:
                n = self._n
                self._n = n + 1
                key = replace.get(n) if replace else None
                if key is not None:
                    assert self.patch is not None and rr.block is not None
                    data = self.patch.page(*key)
                    write_page(w, rr.block, rr.addr, data, cont=bool(rr.flags & FLAG_CONTINUE))
                elif kind == FLAG_ZERO:
                    write_record(w, rr)
                else:
                    write_record(w, rr, src.read_at(rr.data_offset, rr.data_length))
            elif kind == FLAG_MEM_SIZE:
                self._mem_size(w, rr.flags, rr.addr, rr.blocks or [])
            else:
                if kind == FLAG_EOS and last_section and self.append:
                    self._append_pages(w)
                write_record(w, rr)

    def _append_pages(self, w: Writer) -> None:
        assert self.patch is not None
        ps = self.patch.page_size
        prev = None
        for name, p in self.append:
            block = self.state.blocks[name]
            write_page(w, block, p * ps, self.patch.page(name, p), cont=name == prev)
            prev = name
        self.append = []

    def _mem_size(self, w: Writer, flags: int, total: int, blocks: list[RamBlock]) -> None:
        write_record_head(w, flags, total, None)
        for b in blocks:
            m = b.mapped
            if m is None:
                write_mem_size_entry(w, b)
                continue
            head = 1 + len(b.name.encode("latin-1")) + 8
            head += 8 if b.page_size is not None else 0
            head += 8 if b.mr_addr is not None else 0
            out_header = w.offset + head
            if (m.bitmap_offset, m.pages_offset) == (0, 0) or out_header == m.offset:
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
        from ...writer import copy_sparse

        m = b.mapped
        assert m is not None
        if (m.bitmap_offset, m.pages_offset) == (0, 0):
            return  # x-ignore-shared: no bitmap, no pages
        start = m.offset + MAPPED_RAM_HEADER.size
        end = m.pages_offset + b.used_length
        edited = self._edited_pages(b)
        overrides: list[tuple[int, bytes]] = []
        if edited:
            bitmap, length = self._bitmap(b, edited)
            if not (start <= m.bitmap_offset and m.bitmap_offset + length <= m.pages_offset):
                raise UnsupportedError(
                    f"mapped-ram block {b.name!r}: its bitmap is not between its header and "
                    "its pages; cannot write pages into this layout",
                    offset=m.offset,
                )
            overrides.append((m.bitmap_offset, bitmap))
            ps = m.page_size
            overrides.extend((m.pages_offset + p * ps, data) for p, data in edited.items())
        if end < start:
            raise UnsupportedError(
                f"mapped-ram block {b.name!r}: its pages end before its header",
                offset=m.offset,
            )
        copy_sparse(w, self.src, start, end, overrides)

    def _mapped_relocated(self, w: Writer, b: RamBlock, out_header: int) -> None:
        """The block laid out as QEMU lays it out at this output position."""
        from ...writer import copy_sparse

        m = b.mapped
        assert m is not None
        edited = self._edited_pages(b)
        bitmap, length = self._bitmap(b, edited)
        bitmap_off = out_header + MAPPED_RAM_HEADER.size
        pages_off = -(-(bitmap_off + length) // MAPPED_RAM_ALIGNMENT) * MAPPED_RAM_ALIGNMENT
        w.counted_str(b.name)
        w.u64(b.used_length)
        if b.page_size is not None:
            w.u64(b.page_size)
        if b.mr_addr is not None:
            w.u64(b.mr_addr)
        w.bytes(MAPPED_RAM_HEADER.pack(m.version, m.page_size, bitmap_off, pages_off))
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
