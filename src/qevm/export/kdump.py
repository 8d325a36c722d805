"""makedumpfile's kdump-compressed ("diskdump") format, as QEMU's dump-guest-memory writes it.

Layout (``dump/dump.c`` ``create_kdump_vmcore``, makedumpfile's
``diskdump_mod.h``), in blocks of the dump's page size::

    block 0            struct disk_dump_header ("KDUMP   ", version 6)
    block 1            struct kdump_sub_header, then the ELF notes (CPU notes,
                       QEMU notes, VMCOREINFO: the PT_NOTE of the ELF)
    block 1 + S        1st bitmap: a bit per page frame that exists
    block 1 + S + B/2  2nd bitmap: a bit per page frame that is dumped (the same)
    block 1 + S + B    a page descriptor (offset, size, flags, page_flags) per
                       dumped frame, in frame order; then the page data: one
                       shared zero page first, then each non-zero page,
                       compressed when that makes it smaller

``kdump-*`` is makedumpfile's flattened form (a 4 KiB ``makedumpfile``
header, then ``(offset, size)``-prefixed pieces, then ``-1, -1``), which a
pipe can carry and crash reads; ``kdump-raw-*`` is the file itself.
Integers are in the dump's byte order, the flattened framing big-endian.
Memory stays bounded: pages are read a few MiB at a time and descriptors and
data are written out as their buffers fill.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from ..errors import UsageError
from .compressors import compressor

SIGNATURE = b"KDUMP   "
HEADER_VERSION = 6
DUMP_LEVEL = 1  # zero pages are not dumped as their own data
FLAT_SIGNATURE = b"makedumpfile"
FLAT_HEADER_SIZE = 4096
DISK_DUMP_HEADER_SIZE = 464
SUB_HEADER_SIZE = 104
DESC_SIZE = 24
#: pages read and compressed per piece
PIECE_PAGES = 1024
#: bytes gathered before a descriptor or data buffer is written
FLUSH = 1 << 22

#: output format -> (compression, flattened)
FORMATS = {
    f"kdump{'-raw' if raw else ''}-{m}": (m, not raw)
    for raw in (False, True)
    for m in ("zlib", "lzo", "snappy", "zstd")
}

#: ``utsname.machine`` QEMU writes (ELF_MACHINE_UNAME) per ELF machine
_UNAME = {62: "x86_64", 183: "aarch64", 22: "s390x", 21: "ppc64", 243: "riscv64"}


@dataclass
class KdumpResult:
    """What :func:`write_kdump` wrote."""

    pages: int  # page frames dumped
    zero_pages: int
    data_bytes: int  # compressed bytes of page data
    size: int  # bytes of the (unflattened) dump


class _Output:
    """Positioned writes to the dump: ``pwrite`` on a file, or flattened pieces."""

    def __init__(self, fileobj: BinaryIO, flattened: bool) -> None:
        self.f = fileobj
        self.flattened = flattened
        self.fd = fileobj.fileno() if not flattened else -1
        if flattened:
            head = FLAT_SIGNATURE.ljust(16, b"\0") + struct.pack(">qq", 1, 1)
            fileobj.write(head.ljust(FLAT_HEADER_SIZE, b"\0"))

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if not len(data):
            return
        if self.flattened:
            self.f.write(struct.pack(">qq", offset, len(data)))
            self.f.write(data)
            return
        view = memoryview(data)
        while len(view):
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n

    def finish(self, size: int) -> None:
        if self.flattened:
            self.f.write(struct.pack(">qq", -1, -1))
        else:
            os.ftruncate(self.fd, size)


def _headers(
    e: str,
    machine: int,
    ncpus: int,
    ps: int,
    max_mapnr: int,
    bitmap_blocks: int,
    notes: bytes,
    vmci: Any,
    flag: int,
    phys_base: int,
) -> tuple[bytes, int]:
    """Block 0 and the sub-header block(s) with the notes; and their block count."""
    sub_blocks = -(-(SUB_HEADER_SIZE + len(notes)) // ps)
    status = flag  # the format's compression, as QEMU and makedumpfile say it
    # QEMU writes only utsname.machine; the kernel's own utsname (as makedumpfile
    # copies it) lets readers such as libkdumpfile (drgn) tell the architecture
    uts = bytearray(6 * 65)
    if vmci is not None and vmci.utsname is not None:
        uts[:] = vmci.utsname[: 6 * 65]
        for i in range(6):
            uts[i * 65 + 64] = 0
    if not uts[260]:
        mach = _UNAME.get(machine, "").encode()
        uts[260 : 260 + len(mach)] = mach
    head = SIGNATURE + struct.pack(e + "I", HEADER_VERSION) + bytes(uts) + bytes(6)
    head += bytes(16)  # timestamp (QEMU leaves it zero)
    head += struct.pack(
        e + "IIIIIIIIII",
        status,
        ps,
        sub_blocks,
        bitmap_blocks,
        min(max_mapnr, 0xFFFFFFFF),
        0,
        0,
        0,
        0,
        ncpus,
    )
    assert len(head) == DISK_DUMP_HEADER_SIZE
    offset_note = ps + SUB_HEADER_SIZE
    off_vmci = size_vmci = 0
    if vmci is not None and notes.endswith(vmci.note):
        namesz, descsz = struct.unpack_from(e + "II", vmci.note)
        off_vmci = offset_note + len(notes) - len(vmci.note) + 12 + -(-namesz // 4) * 4
        size_vmci = descsz
    sub = struct.pack(
        e + "QiiQQqQqQqQQQQ",
        phys_base,
        DUMP_LEVEL,
        0,
        0,
        0,
        off_vmci,
        size_vmci,
        offset_note,
        len(notes),
        0,
        0,
        0,
        max_mapnr,
        max_mapnr,
    )
    assert len(sub) == SUB_HEADER_SIZE
    block0 = head.ljust(ps, b"\0")
    return block0 + (sub + notes).ljust(sub_blocks * ps, b"\0"), 1 + sub_blocks


def frame_spans(ranges: list[Any], ps: int) -> list[tuple[int, int]]:
    """The page frames the ranges touch, as merged ``[first, end)`` spans."""
    spans = sorted((r.gpa // ps, -(-r.end // ps)) for r in ranges if r.size > 0)
    merged: list[tuple[int, int]] = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def write_kdump(
    out: BinaryIO,
    fmt: str,
    *,
    ranges: list[Any],
    read_phys: Callable[[int, int], bytes | bytearray],
    page_size: int,
    machine: int,
    endian: str,
    ncpus: int,
    notes: bytes,
    vmcoreinfo: Any = None,
    phys_base: int = 0,
    progress: Callable[[int], None] | None = None,
) -> KdumpResult:
    """Write guest-physical memory as ``fmt`` (a key of :data:`FORMATS`) to ``out``.

    ``read_phys(gpa, length)`` reads guest-physical memory (zeros where no
    range is), ``ranges`` are the memory map's, ``notes`` the ELF notes,
    ``phys_base`` the sub-header's.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown kdump format {fmt!r} ({', '.join(FORMATS)})")
    method, flattened = FORMATS[fmt]
    flag, compress = compressor(method)
    ps = page_size
    spans = frame_spans(ranges, ps)
    max_mapnr = spans[-1][1] if spans else 0
    bitmap_bytes = (max_mapnr + 7) // 8
    bitmap_len = (bitmap_bytes + ps - 1) // ps * ps
    bitmap_blocks = 2 * (bitmap_len // ps)
    hdr, hdr_blocks = _headers(
        endian, machine, ncpus, ps, max_mapnr, bitmap_blocks, notes, vmcoreinfo, flag, phys_base
    )
    o = _Output(out, flattened)
    o.write(0, hdr)
    bitmap_off = hdr_blocks * ps
    ndump = 0
    for s, e in spans:
        ndump += e - s
    # both bitmaps whole (guest-physical space / 32768 bytes), a MiB at a time
    for b0, piece in _bitmap_pieces(spans, bitmap_len):
        o.write(bitmap_off + b0, piece)
        o.write(bitmap_off + bitmap_len + b0, piece)
    desc_off = bitmap_off + bitmap_len * 2
    data_off = desc_off + DESC_SIZE * ndump
    zero_desc = struct.pack(endian + "QIIQ", data_off, ps, 0, 0)
    o.write(data_off, bytes(ps))
    pos = data_off + ps
    descs = bytearray()
    desc_at = desc_off
    data = bytearray()
    data_at = pos
    zero = 0
    done = 0
    for s, e in spans:
        for first in range(s, e, PIECE_PAGES):
            n = min(PIECE_PAGES, e - first)
            buf = read_phys(first * ps, n * ps)
            words = np.frombuffer(buf, dtype=np.uint64).reshape(n, ps // 8)
            nonzero = words.any(axis=1).tolist()
            view = memoryview(buf)
            for i in range(n):
                if not nonzero[i]:
                    descs += zero_desc
                    zero += 1
                    continue
                page = view[i * ps : (i + 1) * ps]
                packed = compress(bytes(page))
                if len(packed) < ps:
                    descs += struct.pack(endian + "QIIQ", pos, len(packed), flag, 0)
                    data += packed
                    pos += len(packed)
                else:
                    descs += struct.pack(endian + "QIIQ", pos, ps, 0, 0)
                    data += page
                    pos += ps
            done += n
            if len(descs) >= FLUSH:
                o.write(desc_at, descs)
                desc_at += len(descs)
                descs = bytearray()
            if len(data) >= FLUSH:
                o.write(data_at, data)
                data_at += len(data)
                data = bytearray()
            if progress is not None:
                progress(done * ps)
    o.write(desc_at, descs)
    o.write(data_at, data)
    o.finish(pos)
    return KdumpResult(ndump, zero, pos - data_off - ps, pos)


def _bitmap_pieces(spans: list[tuple[int, int]], length: int) -> Iterator[tuple[int, bytes]]:
    """``(byte offset, bytes)`` of a bitmap of ``length`` bytes with the spans' frames set."""
    step = 1 << 20
    for b0 in range(0, length, step):
        n = min(step, length - b0)
        bits = np.zeros(n * 8, dtype=bool)
        for s, e in spans:
            lo, hi = max(s, b0 * 8), min(e, (b0 + n) * 8)
            if lo < hi:
                bits[lo - b0 * 8 : hi - b0 * 8] = True
        yield b0, np.packbits(bits, bitorder="little").tobytes()
