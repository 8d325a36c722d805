"""RAM section records, read as QEMU's ``ram_load_precopy`` reads them.

Each record starts with a ``u64`` holding a page offset inside a RAM block
and flags in the bits below the target page size.  Page contents are never
copied into Python objects: every record tells the page consumer (the
:class:`~qevm.sections.ram.index.PageIndex`, or a sink writing files) where
the page's bytes are.  Long runs of ``ZERO|CONTINUE`` and ``PAGE|CONTINUE``
records are recognised with numpy, up to 64 Ki records at a time, once a
stream has shown it is big enough to repay importing numpy.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...errors import FormatError, TruncatedError, UnsupportedError
from .consumer import PageConsumer
from .xbzrle import ENCODING_FLAG_XBZRLE

if TYPE_CHECKING:
    from ...stream import ParseContext
    from ...wire import Reader, Writer

FLAG_FULL = 0x001
FLAG_ZERO = 0x002
FLAG_MEM_SIZE = 0x004
FLAG_PAGE = 0x008
FLAG_EOS = 0x010
FLAG_CONTINUE = 0x020
FLAG_XBZRLE = 0x040
FLAG_HOOK = 0x080
FLAG_COMPRESS_PAGE = 0x100
FLAG_MULTIFD_FLUSH = 0x200

#: Every flag value QEMU has used fits below this (targets' pages are >= 1 KiB).
FLAG_BITS = 0x3FF

FLAG_NAMES = {
    FLAG_ZERO: "ZERO",
    FLAG_MEM_SIZE: "MEM_SIZE",
    FLAG_PAGE: "PAGE",
    FLAG_EOS: "EOS",
    FLAG_XBZRLE: "XBZRLE",
    FLAG_HOOK: "HOOK",
    FLAG_COMPRESS_PAGE: "COMPRESS_PAGE",
    FLAG_MULTIFD_FLUSH: "MULTIFD_FLUSH",
}

MAPPED_RAM_HEADER = struct.Struct(">IQQQ")
MAPPED_RAM_VERSION = 1
#: zlib's compressBound(64 KiB) is below this; QEMU checks against the page size.
_U64 = struct.Struct(">Q")

#: Most bytes of records one vectorised step looks at.
MAX_RUN_BYTES = 16 << 20
#: Records read one by one before numpy is imported for long runs (numpy's
#: import costs as much as ~200 Ki records read in pure Python).
VECTOR_AFTER = 262144

#: Machine type prefixes of targets with 4 KiB pages that do not state it.
_FOUR_K_MACHINES = ("pc", "q35", "isapc", "microvm", "xenfv", "s390", "pseries", "virt")

# Page sizes worth trying when nothing in the stream states it.
_PROBE_SIZES = (4096, 8192, 16384, 65536, 1024, 2048, 32768)


@dataclass(eq=False)
class MappedRamHeader:
    """Per-block header of a mapped-ram stream."""

    offset: int
    version: int
    page_size: int
    bitmap_offset: int
    pages_offset: int


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
            return not (self.mapped.bitmap_offset == 0 and self.mapped.pages_offset == 0)
        return self.mr_addr is None or bool(self.records)


@dataclass(eq=False)
class RamRecordStats:
    """What one RAM section record held, for ``info`` and JSON output."""

    records: Counter = field(default_factory=Counter)
    blocks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"records": dict(self.records)}
        if self.blocks:
            out["blocks"] = self.blocks
        return out


#: Record kinds that carry a page of a block (and so a block name or CONTINUE).
PAGE_KINDS = frozenset({FLAG_ZERO, FLAG_PAGE, FLAG_XBZRLE, FLAG_COMPRESS_PAGE})


@dataclass(eq=False)
class RamRecord:
    """One RAM record as it is in the stream (see :meth:`RamState.records`)."""

    offset: int
    end: int
    #: Every flag bit of the record's u64, CONTINUE included.
    flags: int
    #: The u64 without the flags: a page offset in ``block``, MEM_SIZE's total.
    addr: int
    block: RamBlock | None = None
    #: ZERO: the byte the page is filled with.
    fill: int = 0
    #: PAGE, XBZRLE, COMPRESS_PAGE: where the payload (page bytes, delta, zlib
    #: data) is, and its length; the framing bytes before it are not counted.
    data_offset: int = 0
    data_length: int = 0
    #: MEM_SIZE: the blocks announced, in order.
    blocks: list[RamBlock] | None = None

    @property
    def kind(self) -> int:
        """The flags without CONTINUE."""
        return self.flags & ~FLAG_CONTINUE

    @property
    def named(self) -> bool:
        """Whether the block name is written (page records without CONTINUE)."""
        return self.kind in PAGE_KINDS and not self.flags & FLAG_CONTINUE


class RamState:
    """The RAM section across its START/PART/END records."""

    def __init__(self, ctx: ParseContext) -> None:
        self.ctx = ctx
        self.blocks: dict[str, RamBlock] = {}
        self.page_size: int | None = ctx.page_size
        self.consumer: Any = None
        self.last: RamBlock | None = None
        self._run_hint = 64
        self._np: Any = None
        self._records_seen = 0
        self._seen_flush = False
        #: Multifd sync points read so far (also before the consumer exists).
        self.syncs = 0
        #: The input the records being read are in (0: the main stream; an
        #: extra channel's number while its bare RAM records are read).
        self.src = 0

    @property
    def multifd_flushes(self) -> bool:
        """Whether MULTIFD_FLUSH records were seen (pages travel on multifd channels)."""
        return self._seen_flush

    # -- setup ----------------------------------------------------------------
    def _ensure_consumer(self) -> None:
        if self.consumer is None:
            factory = self.ctx.options.ram_consumer or (lambda ctx, ps: PageConsumer(ps))
            self.consumer = factory(self.ctx, self.page_size)
            if self.consumer.uses_numpy and self._np is None:
                import numpy

                self._np = numpy
            for b in self.blocks.values():
                self.consumer.add_block(b)
            if self.syncs:
                self.consumer.epoch = self.syncs

    def _probe_page_size(self, r: Reader, record_off: int) -> int:
        """Find the target page size from the framing of the first PAGE record."""
        for ps in _PROBE_SIZES:
            nxt = r.peek_at(r.offset + ps, 8)
            if len(nxt) < 8:
                continue
            v = _U64.unpack(nxt)[0]
            flags = v & (ps - 1)
            if flags and not flags & ~(FLAG_BITS) and (flags & ~FLAG_CONTINUE) in FLAG_NAMES:
                self.ctx.warn(f"target page size not stated before the first page; found {ps}")
                return ps
        raise FormatError(
            "cannot tell the target page size: the stream does not state it and no "
            "candidate size frames the first page",
            offset=record_off,
        )

    def _set_page_size(self, ps: int) -> None:
        self.page_size = ps
        self.ctx.page_size = ps
        if self.consumer is not None and getattr(self.consumer, "page_size", ps) != ps:
            raise FormatError(f"page size changed to {ps} after pages were indexed")

    # -- records --------------------------------------------------------------
    def read_section(self, r: Reader, eof_ok: bool = False) -> RamRecordStats:
        """Read records up to and including EOS (or, with ``eof_ok``, to the input's
        end where it falls between records: a postcopy-preempt channel)."""
        stats = RamRecordStats()
        ctx = self.ctx
        if self.page_size is None and ctx.page_size is not None:
            self.page_size = ctx.page_size
        counts = stats.records
        n = 0
        next_check = 0x4000
        while True:
            off = r.offset
            if eof_ok and r.at_end():
                self._records_seen += n
                if self.consumer is not None:
                    self.consumer.flush()
                return stats
            r.ensure(8)
            (v,) = _U64.unpack_from(r.buf, r.pos)
            r.pos += 8
            ps = self.page_size
            flags = v & ((ps - 1) if ps else FLAG_BITS)
            addr = v - flags
            kind = flags & ~FLAG_CONTINUE
            if kind == FLAG_ZERO or kind == FLAG_PAGE:
                block = self._block(r, flags, off)
                if ps is None:
                    ps = self._page_size_for(r, off, kind)
                    flags = v & (ps - 1)
                    addr = v - flags
                self._check_addr(block, addr, off)
                if kind == FLAG_ZERO:
                    fill = r.u8()
                    self.consumer.zero(block, addr, fill)
                    key = "zero" if fill == 0 else "fill"
                else:
                    r.ensure(ps)
                    self.consumer.page(block, addr, r.base + r.pos, r, self.src)
                    r.pos += ps
                    key = "page"
                block.records[key] += 1
                counts[key] += 1
                nz, npg = self._continued(r, block)
                if nz:
                    block.records["zero"] += nz
                    counts["zero"] += nz
                if npg:
                    block.records["page"] += npg
                    counts["page"] += npg
                n += nz + npg
            elif kind == FLAG_EOS:
                counts["eos"] += 1
                if not self._seen_flush:
                    self._sync_point()  # legacy multifd: each EOS is a sync point
                self._records_seen += n
                self._housekeeping(r)
                if self.consumer is not None:
                    self.consumer.flush()
                return stats
            elif kind == FLAG_MEM_SIZE:
                stats.blocks.extend(self._mem_size(r, addr, off))
                counts["mem_size"] += 1
            elif kind == FLAG_MULTIFD_FLUSH:
                counts["multifd_flush"] += 1
                self._seen_flush = True
                self._sync_point()
            elif kind == FLAG_XBZRLE or kind == FLAG_COMPRESS_PAGE:
                block = self._block(r, flags, off)
                if ps is None:
                    raise FormatError(
                        f"{FLAG_NAMES[kind]} page before the page size is known", offset=off
                    )
                self._check_addr(block, addr, off)
                if kind == FLAG_XBZRLE:
                    self._xbzrle(r, block, addr, off)
                    key = "xbzrle"
                else:
                    self._compressed(r, block, addr, off)
                    key = "zlib"
                block.records[key] += 1
                counts[key] += 1
            else:
                _bad_record(kind, flags, off)
            n += 1
            if n >= next_check:
                next_check = n + 0x4000
                self._housekeeping(r, n)

    def _sync_point(self) -> None:
        """A multifd sync point: channel pages after it belong to the next round."""
        self.syncs += 1
        if self.consumer is not None:
            self.consumer.epoch = self.syncs

    def _housekeeping(self, r: Reader, pending: int = 0) -> None:
        """Now and then: report progress, drop what was read, switch to numpy."""
        r.release_behind()
        if self.ctx.progress is not None:
            self.ctx.progress(r.offset)
        if self._np is None and pending + self._records_seen >= VECTOR_AFTER:
            import numpy

            self._np = numpy

    def records(self, r: Reader) -> Iterator[RamRecord]:
        """The records of one section body, up to and including EOS, one at a time.

        This is the record-level view the writer re-encodes; pages are handed
        to the consumer like :meth:`read_section` does (give the state a plain
        :class:`PageConsumer` to only walk them).
        """
        ctx = self.ctx
        if self.page_size is None and ctx.page_size is not None:
            self.page_size = ctx.page_size
        while True:
            off = r.offset
            v = r.u64()
            ps = self.page_size
            flags = v & ((ps - 1) if ps else FLAG_BITS)
            addr = v - flags
            kind = flags & ~FLAG_CONTINUE
            rec = RamRecord(off, 0, flags, addr)
            if kind in PAGE_KINDS:
                block = rec.block = self._block(r, flags, off)
                if ps is None:
                    if kind not in (FLAG_ZERO, FLAG_PAGE):
                        raise FormatError("page record before the page size is known", offset=off)
                    ps = self._page_size_for(r, off, kind)
                    rec.flags = flags = v & (ps - 1)
                    rec.addr = addr = v - flags
                self._check_addr(block, addr, off)
                if kind == FLAG_ZERO:
                    rec.fill = r.u8()
                    self.consumer.zero(block, addr, rec.fill)
                elif kind == FLAG_PAGE:
                    r.ensure(ps)
                    rec.data_offset, rec.data_length = r.offset, ps
                    self.consumer.page(block, addr, r.offset, r, self.src)
                    r.pos += ps
                elif kind == FLAG_XBZRLE:
                    rec.data_offset = r.offset + 3
                    self._xbzrle(r, block, addr, off)
                    rec.data_length = r.offset - rec.data_offset
                else:
                    rec.data_offset = r.offset + 4
                    self._compressed(r, block, addr, off)
                    rec.data_length = r.offset - rec.data_offset
            elif kind == FLAG_MEM_SIZE:
                rec.blocks = [self.blocks[n] for n in self._mem_size(r, addr, off)]
            elif kind == FLAG_MULTIFD_FLUSH:
                self._seen_flush = True
                self._sync_point()
            elif kind != FLAG_EOS:
                _bad_record(kind, flags, off)
            rec.end = r.offset
            yield rec
            if kind == FLAG_EOS:
                return

    def _page_size_for(self, r: Reader, off: int, kind: int) -> int:
        """The page size when nothing stated it before the first page record."""
        machine = self.ctx.machine or ""
        # x86, s390x, riscv, ppc and loongarch use 4 KiB target pages; arm
        # states its size in the configuration section.
        if machine.startswith(_FOUR_K_MACHINES):
            ps = 4096
        elif kind == FLAG_PAGE:
            ps = self._probe_page_size(r, off)
        else:
            # a ZERO record's framing does not depend on the page size
            ps = 4096
            self.ctx.warn("target page size not stated before the first page; assumed 4096")
        self._set_page_size(ps)
        self._ensure_consumer()
        return ps

    def _block(self, r: Reader, flags: int, off: int) -> RamBlock:
        if flags & FLAG_CONTINUE:
            if self.last is None:
                raise FormatError(
                    "CONTINUE record with no previous block",
                    offset=off,
                    field="flags",
                )
            return self.last
        name_off = r.offset
        name = r.counted_str()
        block = self.blocks.get(name)
        if block is None:
            raise FormatError(
                f"page for unknown RAM block {name!r}",
                offset=name_off,
                expected="a block announced by MEM_SIZE",
            )
        self.last = block
        return block

    def _check_addr(self, block: RamBlock, addr: int, off: int) -> None:
        if addr >= block.used_length:
            raise FormatError(
                f"page offset {addr:#x} is outside block {block.name!r} "
                f"({block.used_length:#x} bytes)",
                offset=off,
            )

    # -- runs of CONTINUE records ------------------------------------------------
    def _continued(self, r: Reader, block: RamBlock) -> tuple[int, int]:
        """Consume the ZERO|CONTINUE (fill 0) and PAGE|CONTINUE records that follow.

        These make up nearly all of a RAM section; this loop reads them with
        no method calls per record (and numpy, once loaded, reads long runs
        of one kind at once).  Returns (zero pages, data pages).
        """
        nz = npg = 0
        while True:
            if self._np is not None:
                while True:
                    k1 = self._run(r, block, 9, FLAG_ZERO | FLAG_CONTINUE)
                    k2 = self._run(r, block, 8 + self.page_size, FLAG_PAGE | FLAG_CONTINUE)  # type: ignore[operator]
                    nz += k1
                    npg += k2
                    if not (k1 or k2):
                        break
            a, b, more = self._continued_py(r, block)
            nz += a
            npg += b
            if not more:
                return nz, npg
            # A run longer than one step (a whole RAM in one record): let go of
            # what was read, and go on with numpy once it pays.
            r.release_behind()
            if self._np is None and self._records_seen + nz + npg >= VECTOR_AFTER:
                import numpy

                self._np = numpy

    def _continued_py(self, r: Reader, block: RamBlock) -> tuple[int, int, bool]:
        """Records of the run in at most ``MAX_RUN_BYTES``; whether the run may go on."""
        buf, pos, base = r.buf, r.pos, r.base
        avail_end = pos + r.available()
        end = min(avail_end, pos + MAX_RUN_BYTES)
        ps = self.page_size
        assert ps is not None
        mask = ps - 1
        rec_page = 8 + ps
        used = block.used_length
        consumer = self.consumer
        keep = type(consumer) is not PageConsumer
        zero, page = consumer.zero, consumer.page
        src = self.src
        unpack = _U64.unpack_from
        zc = FLAG_ZERO | FLAG_CONTINUE
        pc = FLAG_PAGE | FLAG_CONTINUE
        nz = npg = 0
        while pos + 9 <= end:
            v = unpack(buf, pos)[0]
            fl = v & mask
            a = v - fl
            if fl == zc:
                if buf[pos + 8] or a >= used:
                    break
                if keep:
                    zero(block, a, 0)
                pos += 9
                nz += 1
            elif fl == pc:
                if pos + rec_page > end or a >= used:
                    break
                if keep:
                    r.pos = pos + 8
                    page(block, a, base + pos + 8, r, src)
                pos += rec_page
                npg += 1
            else:
                break
        r.pos = pos
        return nz, npg, end < avail_end and end - pos < 9 + rec_page

    # -- vectorised runs ----------------------------------------------------------
    def _run(self, r: Reader, block: RamBlock, size: int, want: int) -> int:
        np = self._np
        total = 0
        ps = self.page_size
        assert ps is not None
        mask = np.uint64(ps - 1)
        used = np.uint64(block.used_length)
        while True:
            r.release_behind()
            n = min(self._run_hint, r.available() // size, MAX_RUN_BYTES // size)
            if n < 8:
                try:
                    r.ensure(size * 64)
                except TruncatedError:
                    pass
                n = min(self._run_hint, r.available() // size, MAX_RUN_BYTES // size)
                if n < 2:
                    return total
            hdr = np.ndarray((n,), ">u8", r.buf, r.pos, (size,)).astype(np.uint64)
            ok = (hdr & mask) == np.uint64(want)
            if want & FLAG_ZERO:
                ok &= np.ndarray((n,), np.uint8, r.buf, r.pos + 8, (size,)) == 0
            addrs = hdr & ~mask
            ok &= addrs < used
            k = n if ok.all() else int(np.argmin(ok))
            if k == 0:
                return total
            addrs = addrs[:k]
            if want & FLAG_ZERO:
                self.consumer.zero_run(block, addrs)
            else:
                start = r.base + r.pos + 8
                offs = np.arange(k, dtype=np.uint64) * np.uint64(size) + np.uint64(start)
                self.consumer.page_run(block, addrs, offs, r, self.src)
            r.pos += k * size
            total += k
            if k < n:
                self._run_hint = max(64, self._run_hint // 2)
                return total
            self._run_hint = min(self._run_hint * 2, 1 << 16)

    # -- other record kinds -----------------------------------------------------------
    def _xbzrle(self, r: Reader, block: RamBlock, addr: int, off: int) -> None:
        hoff = r.offset
        enc = r.u8()
        if enc != ENCODING_FLAG_XBZRLE:
            raise FormatError(f"XBZRLE encoding byte {enc:#04x}", offset=hoff, expected="0x01")
        length = r.u16()
        if length > self.page_size:  # type: ignore[operator]
            raise FormatError(
                f"XBZRLE delta of {length} bytes",
                offset=hoff + 1,
                expected=f"at most the page size {self.page_size}",
            )
        delta = r.bytes(length)
        self.consumer.xbzrle(block, addr, delta, hoff + 3)

    def _compressed(self, r: Reader, block: RamBlock, addr: int, off: int) -> None:
        loff = r.offset
        length = r.u32()
        bound = (
            self.page_size
            + (self.page_size >> 12)
            + (self.page_size >> 14)
            + (self.page_size >> 25)
            + 13
        )  # type: ignore[operator]
        if length > bound:
            raise FormatError(
                f"compressed page of {length} bytes",
                offset=loff,
                expected=f"at most compressBound(page size) = {bound}",
            )
        if r.seekable and not self.consumer.streaming:
            self.consumer.zlib_page(block, addr, loff)
            r.skip(length)
        else:
            self.consumer.zlib_data(block, addr, r.bytes(length), loff + 4)

    # -- MEM_SIZE -----------------------------------------------------------------------
    def _mem_size(self, r: Reader, total: int, off: int) -> list[str]:
        """The RAM block list (QEMU's parse_ramblocks)."""
        ctx = self.ctx
        caps = ctx.capabilities
        ignore_shared = "x-ignore-shared" in caps
        mapped = "mapped-ram" in caps
        postcopy = ctx.postcopy if ctx.postcopy and ctx.postcopy.get("ram") else None
        names = []
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
                block.page_size = self._hugepage_size(r, postcopy)
            if ignore_shared:
                block.mr_addr = r.u64()
            self.blocks[name] = block
            if mapped:
                self._mapped_block(r, block)
            elif self.page_size is not None:
                self._ensure_consumer()
                self.consumer.add_block(block)
            names.append(name)
            remaining -= length
        return names

    def _hugepage_size(self, r: Reader, postcopy: dict) -> int | None:
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

    def _mapped_block(self, r: Reader, block: RamBlock) -> None:
        """The mapped-ram header after a block's MEM_SIZE entry, and its pages."""
        hoff = r.offset
        version, ps, bitmap_off, pages_off = MAPPED_RAM_HEADER.unpack(
            r.bytes(MAPPED_RAM_HEADER.size)
        )
        if version > MAPPED_RAM_VERSION:
            raise UnsupportedError(
                f"mapped-ram header version {version}", offset=hoff, expected="1"
            )
        if ps == 0 or ps & (ps - 1):
            raise FormatError(
                f"mapped-ram page size {ps}", offset=hoff + 4, expected="a power of two"
            )
        m = block.mapped = MappedRamHeader(hoff, version, ps, bitmap_off, pages_off)
        if self.page_size is None:
            self._set_page_size(ps)
        elif ps != self.page_size:
            raise FormatError(
                f"mapped-ram page size {ps} differs from the stream's {self.page_size}",
                offset=hoff + 4,
            )
        self._ensure_consumer()
        self.consumer.add_block(block)
        if bitmap_off == 0 and pages_off == 0:
            return  # a block x-ignore-shared leaves out: no bitmap, no pages
        if pages_off % ps:
            raise FormatError(
                f"mapped-ram pages offset {pages_off:#x} is not page aligned", offset=hoff + 20
            )
        npages = block.used_length // ps
        bitmap_len = -(-npages // 64) * 8
        src = r.source
        if src.seekable:
            size = src.size or 0
            if bitmap_off + bitmap_len > size or pages_off + block.used_length > size:
                raise TruncatedError(
                    f"mapped-ram block {block.name!r} extends past the end of the file",
                    offset=m.offset,
                )
            bitmap = bytes(src.read_at(bitmap_off, bitmap_len))
            self.consumer.mapped(block, bitmap, pages_off)
            r.seek(pages_off + block.used_length)
        else:
            # Streaming: QEMU's layout puts bitmap and pages after the header.
            if bitmap_off < r.offset or pages_off < bitmap_off + bitmap_len:
                raise UnsupportedError(
                    "this mapped-ram layout needs random access; read it from a file",
                    offset=hoff,
                )
            r.seek(bitmap_off)
            bitmap = r.bytes(bitmap_len)
            r.seek(pages_off)
            self.consumer.mapped_stream(block, bitmap, r)
        used_bits = int.from_bytes(bitmap, "little") & ((1 << npages) - 1)
        pages = used_bits.bit_count()
        if pages:
            block.records["page"] += pages
        if npages - pages:
            block.records["zero"] += npages - pages


def _bad_record(kind: int, flags: int, off: int) -> None:
    """Refuse a record kind qevm cannot read."""
    if kind == FLAG_HOOK:
        raise UnsupportedError(
            "RAM_SAVE_FLAG_HOOK: the stream was made for RDMA migration, whose "
            "pages travel outside the byte stream",
            offset=off,
            field="flags",
        )
    raise FormatError(
        f"unknown RAM record flags {flags:#x}",
        offset=off,
        field="flags",
        expected="one of ZERO, PAGE, MEM_SIZE, EOS, XBZRLE, COMPRESS_PAGE, "
        "MULTIFD_FLUSH (with CONTINUE)",
    )


# -- writing ---------------------------------------------------------------------------


def write_record_head(w: Writer, rec_flags: int, addr: int, block: RamBlock | None) -> None:
    """The u64 of a record and, for a page record without CONTINUE, its block name."""
    w.u64(addr | rec_flags)
    if block is not None and rec_flags & ~FLAG_CONTINUE in PAGE_KINDS:
        if not rec_flags & FLAG_CONTINUE:
            w.counted_str(block.name)


def write_zero(w: Writer, block: RamBlock, addr: int, fill: int = 0, cont: bool = False) -> None:
    """A ZERO record (``fill``: the byte the page is filled with)."""
    write_record_head(w, FLAG_ZERO | (FLAG_CONTINUE if cont else 0), addr, block)
    w.u8(fill)


def write_page(
    w: Writer, block: RamBlock, addr: int, data: bytes | memoryview, cont: bool = False
) -> None:
    """A PAGE record with the page's bytes."""
    write_record_head(w, FLAG_PAGE | (FLAG_CONTINUE if cont else 0), addr, block)
    w.bytes(data)


def write_mem_size_entry(w: Writer, block: RamBlock) -> None:
    """One block of the MEM_SIZE list, up to its mapped-ram header (not the
    bitmap and pages it points to)."""
    w.counted_str(block.name)
    w.u64(block.used_length)
    if block.page_size is not None:
        w.u64(block.page_size)
    if block.mr_addr is not None:
        w.u64(block.mr_addr)
    m = block.mapped
    if m is not None:
        w.bytes(MAPPED_RAM_HEADER.pack(m.version, m.page_size, m.bitmap_offset, m.pages_offset))


def write_record(w: Writer, rec: RamRecord, payload: bytes | memoryview | None = None) -> None:
    """Re-encode a record read by :meth:`RamState.records` (not MEM_SIZE's block
    entries: see :func:`write_mem_size_entry`); ``payload`` is its data."""
    write_record_head(w, rec.flags, rec.addr, rec.block)
    kind = rec.kind
    if kind == FLAG_ZERO:
        w.u8(rec.fill)
    elif kind == FLAG_PAGE:
        w.bytes(payload)  # type: ignore[arg-type]
    elif kind == FLAG_XBZRLE:
        w.u8(ENCODING_FLAG_XBZRLE)
        w.u16(len(payload))  # type: ignore[arg-type]
        w.bytes(payload)  # type: ignore[arg-type]
    elif kind == FLAG_COMPRESS_PAGE:
        w.u32(len(payload))  # type: ignore[arg-type]
        w.bytes(payload)  # type: ignore[arg-type]
