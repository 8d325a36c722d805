"""RAM section records, read as QEMU's ``ram_load_precopy`` reads them.

Each record starts with a ``u64`` holding a page offset inside a RAM block
and flags in the bits below the target page size.  Page contents are never
copied into Python objects: every record tells the page consumer (the
:class:`~qevm.sections.ram.index.PageIndex`, or a sink writing files) where
the page's bytes are.  :meth:`RamState.records` is the one decoder: the
section reader counts what it yields, the writer copies it.  The block list
is read by :mod:`.blocks`, the runs of CONTINUE records that make up most of
a section by :mod:`.runs`.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...errors import FormatError, UnsupportedError
from ...format import (
    ENCODING_FLAG_XBZRLE,
    RAM_PAGE_KINDS,
    RAM_SAVE_FLAG_BITS,
    RAM_SAVE_FLAG_COMPRESS_PAGE,
    RAM_SAVE_FLAG_CONTINUE,
    RAM_SAVE_FLAG_EOS,
    RAM_SAVE_FLAG_HOOK,
    RAM_SAVE_FLAG_MEM_SIZE,
    RAM_SAVE_FLAG_MULTIFD_FLUSH,
    RAM_SAVE_FLAG_NAMES,
    RAM_SAVE_FLAG_PAGE,
    RAM_SAVE_FLAG_XBZRLE,
    RAM_SAVE_FLAG_ZERO,
)
from .blocks import RamBlock, read_block_list
from .consumer import PageConsumer
from .runs import ContinueRuns

if TYPE_CHECKING:
    from ...stream import ParseContext
    from ...wire import Reader

_U64 = struct.Struct(">Q")

#: Records read one by one before numpy is imported for long runs (numpy's
#: import costs as much as ~200 Ki records read in pure Python).
VECTOR_AFTER = 262144
#: Records between looks at progress, memory and numpy.
HOUSEKEEPING_RECORDS = 0x4000

#: Machine type prefixes of targets with 4 KiB pages that do not state it (not
#: ``virt``: Arm states its size, LoongArch used 16 KiB pages up to QEMU 8.1).
_FOUR_K_MACHINES = ("pc", "q35", "isapc", "microvm", "xenfv", "s390", "pseries")

# Page sizes worth trying when nothing in the stream states it.
_PROBE_SIZES = (4096, 8192, 16384, 65536, 1024, 2048, 32768)


#: The statistics key of each record kind (ZERO with a non-zero fill is "fill").
RECORD_KEYS = {
    RAM_SAVE_FLAG_ZERO: "zero",
    RAM_SAVE_FLAG_PAGE: "page",
    RAM_SAVE_FLAG_XBZRLE: "xbzrle",
    RAM_SAVE_FLAG_COMPRESS_PAGE: "zlib",
    RAM_SAVE_FLAG_EOS: "eos",
    RAM_SAVE_FLAG_MEM_SIZE: "mem_size",
    RAM_SAVE_FLAG_MULTIFD_FLUSH: "multifd_flush",
}


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
        return self.flags & ~RAM_SAVE_FLAG_CONTINUE

    @property
    def named(self) -> bool:
        """Whether the block name is written (page records without CONTINUE)."""
        return self.kind in RAM_PAGE_KINDS and not self.flags & RAM_SAVE_FLAG_CONTINUE

    @property
    def key(self) -> str:
        """What the record counts as in statistics (see :data:`RECORD_KEYS`)."""
        kind = self.kind
        return "fill" if kind == RAM_SAVE_FLAG_ZERO and self.fill else RECORD_KEYS[kind]


@dataclass(eq=False)
class RamRun:
    """ZERO|CONTINUE (fill 0) and PAGE|CONTINUE records of one block, read at once.

    They make up nearly all of a RAM section; the decoder hands their pages
    to the consumer in runs and reports them as one item.
    """

    offset: int
    end: int
    block: RamBlock
    zero: int
    pages: int


@dataclass(eq=False)
class RamRecordStats:
    """What one RAM section record held, for ``info`` and JSON output."""

    records: Counter = field(default_factory=Counter)
    blocks: list[str] = field(default_factory=list)

    def count(self, rec: RamRecord | RamRun) -> None:
        """Count one item of :meth:`RamState.records`."""
        counts = self.records
        if type(rec) is RamRun:
            if rec.zero:
                counts["zero"] += rec.zero
            if rec.pages:
                counts["page"] += rec.pages
            return
        counts[rec.key] += 1  # type: ignore[union-attr]
        if rec.blocks:  # type: ignore[union-attr]
            self.blocks.extend(b.name for b in rec.blocks)  # type: ignore[union-attr]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"records": dict(self.records)}
        if self.blocks:
            out["blocks"] = self.blocks
        return out


class RamState:
    """The RAM section across its START/PART/END records."""

    def __init__(self, ctx: ParseContext) -> None:
        self.ctx = ctx
        self.blocks: dict[str, RamBlock] = {}
        self.page_size: int | None = ctx.page_size
        self.consumer: Any = None
        self.last: RamBlock | None = None
        self.runs = ContinueRuns()
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
    def ensure_consumer(self) -> None:
        """Make the page consumer (once the page size is known) and tell it the blocks."""
        if self.consumer is None:
            factory = self.ctx.options.ram_consumer or (lambda ctx, ps: PageConsumer(ps))
            self.consumer = factory(self.ctx, self.page_size)
            if self.consumer.uses_numpy and self.runs.numpy is None:
                import numpy

                self.runs.numpy = numpy
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
            if (
                flags
                and not flags & ~(RAM_SAVE_FLAG_BITS)
                and (flags & ~RAM_SAVE_FLAG_CONTINUE) in RAM_SAVE_FLAG_NAMES
            ):
                self.ctx.warn(f"target page size not stated before the first page; found {ps}")
                return ps
        raise FormatError(
            "cannot tell the target page size: the stream does not state it and no "
            "candidate size frames the first page",
            offset=record_off,
        )

    def _probe_zero_stride(self, r: Reader) -> int | None:
        """The page size from the ZERO|CONTINUE records after the first ZERO record.

        Consecutive zero pages are one page apart; at least 8 equal steps of a
        candidate size, and no smaller step, are needed to believe it.
        """
        head = r.peek_at(r.offset + 1, 9 * 64)  # after the first record's fill byte
        addrs = []
        for i in range(0, len(head) - 8, 9):
            (v,) = _U64.unpack_from(head, i)
            if v & RAM_SAVE_FLAG_BITS != RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE:
                break
            addrs.append(v & ~RAM_SAVE_FLAG_BITS)
        steps = [b - a for a, b in zip(addrs, addrs[1:])]
        if not steps or min(steps) <= 0:
            return None
        step = min(steps)
        if step in _PROBE_SIZES and steps.count(step) >= 8:
            return step
        return None

    def set_page_size(self, ps: int, offset: int | None = None) -> None:
        """Settle the target page size (stated by the stream or found by probing).

        A size other than the one the page consumer was made with is an error
        (its pages would be indexed at the wrong addresses), and is not kept.
        """
        made = getattr(self.consumer, "page_size", ps) if self.consumer is not None else ps
        if made != ps:
            raise FormatError(
                f"page size {ps}, but pages were already indexed with {made}",
                offset=offset,
                expected=f"page size {made}",
            )
        self.page_size = ps
        self.ctx.page_size = ps

    # -- records --------------------------------------------------------------
    def read_section(self, r: Reader, eof_ok: bool = False) -> RamRecordStats:
        """Read one section body's records, up to and including EOS (or, with
        ``eof_ok``, to the input's end where it falls between records: a
        postcopy-preempt channel)."""
        stats = RamRecordStats()
        for rec in self.records(r, eof_ok=eof_ok):
            stats.count(rec)
        return stats

    def records(
        self, r: Reader, runs: bool = True, eof_ok: bool = False
    ) -> Iterator[RamRecord | RamRun]:
        """The records of one section body, up to and including EOS: the RAM record decoder.

        Every page goes to the consumer as it is read (give the state a plain
        :class:`PageConsumer` to only walk them).  With ``runs`` the
        CONTINUE records that follow a ZERO or PAGE record are read in bulk
        and reported as one :class:`RamRun`; without, every record is its own
        :class:`RamRecord`.  With ``eof_ok`` the input may end between two records.
        """
        if self.page_size is None and self.ctx.page_size is not None:
            self.page_size = self.ctx.page_size
        n = 0
        next_check = HOUSEKEEPING_RECORDS
        while True:
            off = r.offset
            if eof_ok and r.at_end():
                self._records_seen += n
                if self.consumer is not None:
                    self.consumer.flush()
                return
            r.ensure(8)
            (v,) = _U64.unpack_from(r.buf, r.pos)
            r.pos += 8
            ps = self.page_size
            flags = v & ((ps - 1) if ps else RAM_SAVE_FLAG_BITS)
            kind = flags & ~RAM_SAVE_FLAG_CONTINUE
            rec = RamRecord(off, 0, flags, v - flags)
            if kind in RAM_PAGE_KINDS:
                block = self._page(r, rec, kind)
                rec.end = r.offset
                yield rec
                n += 1
                if runs and (kind == RAM_SAVE_FLAG_ZERO or kind == RAM_SAVE_FLAG_PAGE):
                    start = r.offset
                    nz, npg = self.runs.read(r, block, self)
                    if nz or npg:
                        if nz:
                            block.records["zero"] += nz
                        if npg:
                            block.records["page"] += npg
                        n += nz + npg
                        yield RamRun(start, r.offset, block, nz, npg)
            elif kind == RAM_SAVE_FLAG_EOS:
                rec.end = r.offset
                if not self._seen_flush:
                    self._sync_point()  # legacy multifd: each EOS is a sync point
                self._records_seen += n + 1
                self._housekeeping(r)
                if self.consumer is not None:
                    self.consumer.flush()
                yield rec
                return
            else:
                if kind == RAM_SAVE_FLAG_MEM_SIZE:
                    rec.blocks = read_block_list(self, r, rec.addr)
                elif kind == RAM_SAVE_FLAG_MULTIFD_FLUSH:
                    self._seen_flush = True
                    self._sync_point()
                else:
                    _bad_record(kind, flags, off)
                rec.end = r.offset
                yield rec
                n += 1
            if n >= next_check:
                next_check = n + HOUSEKEEPING_RECORDS
                self._housekeeping(r, n)

    def _sync_point(self) -> None:
        """A multifd sync point: channel pages after it belong to the next round."""
        self.syncs += 1
        if self.consumer is not None:
            self.consumer.epoch = self.syncs

    def _page(self, r: Reader, rec: RamRecord, kind: int) -> RamBlock:
        """Read a page record's block name and payload; hand the page to the consumer."""
        off = rec.offset
        block = rec.block = self._block(r, rec.flags, off)
        ps = self.page_size
        if ps is None:
            if kind != RAM_SAVE_FLAG_ZERO and kind != RAM_SAVE_FLAG_PAGE:
                raise FormatError(
                    f"{RAM_SAVE_FLAG_NAMES[kind]} page before the page size is known", offset=off
                )
            ps = self._page_size_for(r, off, kind)
            v = rec.addr | rec.flags
            rec.flags = v & (ps - 1)
            rec.addr = v - rec.flags
            if rec.kind != kind:
                # the flags below the page size hold more bits than the first guess saw
                _bad_record(rec.kind, rec.flags, off)
        addr = rec.addr
        self._check_addr(block, addr, off)
        if kind == RAM_SAVE_FLAG_ZERO:
            rec.fill = fill = r.u8()
            self.consumer.zero(block, addr, fill)
        elif kind == RAM_SAVE_FLAG_PAGE:
            r.ensure(ps)
            rec.data_offset, rec.data_length = r.offset, ps
            self.consumer.page(block, addr, r.offset, r, self.src)
            r.pos += ps
        elif kind == RAM_SAVE_FLAG_XBZRLE:
            self._xbzrle(r, rec)
        else:
            self._compressed(r, rec)
        block.records[rec.key] += 1
        return block

    def _housekeeping(self, r: Reader, pending: int = 0) -> None:
        """Now and then: report progress, drop what was read, switch to numpy."""
        r.release_behind()
        if self.ctx.progress is not None:
            self.ctx.progress(r.offset)
        self.vectorise_if_due(pending)

    def vectorise_if_due(self, pending: int = 0) -> None:
        """Read long runs with numpy once the records read (and ``pending``) repay its import."""
        if self.runs.numpy is None and pending + self._records_seen >= VECTOR_AFTER:
            import numpy

            self.runs.numpy = numpy

    def _page_size_for(self, r: Reader, off: int, kind: int) -> int:
        """The page size when nothing stated it before the first page record."""
        machine = self.ctx.machine or ""
        # x86, s390x, riscv, ppc and loongarch use 4 KiB target pages; arm
        # states its size in the configuration section.
        if machine.startswith(_FOUR_K_MACHINES):
            ps = 4096
        elif kind == RAM_SAVE_FLAG_PAGE:
            ps = self._probe_page_size(r, off)
        else:
            # a ZERO record's framing does not depend on the page size, the distance
            # between the pages of a run of them does
            ps = self._probe_zero_stride(r) or 0
            if not ps:
                ps = 4096
                self.ctx.warn("target page size not stated before the first page; assumed 4096")
        self.set_page_size(ps)
        self.ensure_consumer()
        return ps

    def _block(self, r: Reader, flags: int, off: int) -> RamBlock:
        if flags & RAM_SAVE_FLAG_CONTINUE:
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

    # -- other record kinds -----------------------------------------------------------
    def _xbzrle(self, r: Reader, rec: RamRecord) -> None:
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
        rec.data_offset, rec.data_length = r.offset, length
        delta = r.bytes(length)
        self.consumer.xbzrle(rec.block, rec.addr, delta, rec.data_offset)

    def _compressed(self, r: Reader, rec: RamRecord) -> None:
        loff = r.offset
        length = r.u32()
        ps: int = self.page_size  # type: ignore[assignment]
        bound = ps + (ps >> 12) + (ps >> 14) + (ps >> 25) + 13  # zlib's compressBound
        if length > bound:
            raise FormatError(
                f"compressed page of {length} bytes",
                offset=loff,
                expected=f"at most compressBound(page size) = {bound}",
            )
        rec.data_offset, rec.data_length = r.offset, length
        if r.seekable and not self.consumer.streaming:
            self.consumer.zlib_page(rec.block, rec.addr, loff)
            r.skip(length)
        else:
            self.consumer.zlib_data(rec.block, rec.addr, r.bytes(length), rec.data_offset)


def _bad_record(kind: int, flags: int, off: int) -> None:
    """Refuse a record kind qevm cannot read."""
    if kind == RAM_SAVE_FLAG_HOOK:
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
