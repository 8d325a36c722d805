"""The VM state area of one internal snapshot, read through the snapshot's L1/L2 tables
(qcow2-cluster.c; compressed clusters as qcow2-threads.c inflates them)."""

from __future__ import annotations

import mmap
import struct
import zlib
from collections import OrderedDict

from ...errors import ContainerError, TruncatedError
from ..base import Source
from .header import COMPRESSION_TYPES, MAX_L1_BYTES, QCowHeader, read_in_image
from .snapshots import Snapshot

OFFSET_MASK = 0x00FFFFFFFFFFFE00
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1 << 0
SECTOR = 512

_U64 = struct.Struct(">Q")

#: L1 entries and L2 tables (one cluster each) kept in memory per snapshot.
L1_CACHE = 1 << 16
L2_CACHE = 64
#: Bytes read by find/rfind at first, and at most per step as a search goes on.
SCAN_FIRST = 1 << 16
SCAN_CHUNK = 1 << 20


class _InflateError(Exception):
    """A compressed cluster that does not decompress."""


def _inflate_deflate(data: bytes, size: int) -> bytes:
    # Raw deflate without a zlib header; decompression stops at one cluster.
    try:
        return zlib.decompressobj(-15).decompress(data, size)
    except zlib.error as e:
        raise _InflateError(str(e)) from None


def _inflate_zstd(data: bytes, size: int) -> bytes:
    import zstandard

    out = b""
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(data)
        while len(out) < size:
            more = reader.read(size - len(out))
            if not more:
                break
            out += more
    except zstandard.ZstdError as e:
        raise _InflateError(str(e)) from None
    return out


_INFLATE = {"deflate": _inflate_deflate, "zstd": _inflate_zstd}


class SnapshotVMState(Source):
    """The VM state of one internal snapshot, read through the snapshot's L1/L2 tables.

    Offsets run from 0 to ``vm_state_size``; guest offset ``vmstate_offset +
    offset`` is resolved cluster by cluster.  Unallocated and zero clusters
    read as zeros, compressed clusters are inflated (deflate or zstd).
    """

    seekable = True

    def __init__(self, image: Source, header: QCowHeader, snap: Snapshot) -> None:
        super().__init__()
        self._img = image
        self._h = header
        self.snapshot = snap
        self.name = image.name
        self.start = 0
        self.size = snap.vm_state_size
        self._pos = 0
        self._file_size = image.size or 0
        cb = header.cluster_bits
        self._cb = cb
        self._cs = 1 << cb
        self._l2_entries = 1 << header.l2_bits
        self._l1_shift = cb + header.l2_bits
        self._entry_size = 16 if header.extended_l2 else 8
        span = header.l1_span
        first_l1 = -(-snap.disk_size // span)
        self.vmstate_offset = first_l1 * span
        self._check_l1(snap, span)
        self._l1: dict[int, int] = {}
        self._l2: OrderedDict[int, bytes] = OrderedDict()
        self._cluster_cache: tuple[int, bytes] | None = None
        # host ranges of data clusters read by the current read_at
        self._touched: list[tuple[int, int]] = []
        # The last buffer find/rfind read: successive searches mostly stay inside it.
        self._window: tuple[int, bytes] | None = None
        self._zero = bytes(self._cs)
        self.container = f"qcow2 snapshot {snap.name!r}"
        # Keys stay within 11 characters: `qevm info` aligns them in a 12-column field.
        self.info = {
            "snapshot": snap.name,
            "snapshot_id": snap.id,
            "date": snap.date,
            "vm_clock_ns": snap.header.vm_clock_nsec,
            "state_size": snap.vm_state_size,
            "disk_size": snap.disk_size,
            "qcow2": header.version,
            "cluster": self._cs,
            "compression": COMPRESSION_TYPES[header.compression_type],
            "extended_l2": header.extended_l2,
            "state_at": self.vmstate_offset,
        }
        if snap.icount is not None:
            self.info["icount"] = snap.icount

    def _check_l1(self, snap: Snapshot, span: int) -> None:
        entry = snap.header
        if entry.l1_size * 8 > MAX_L1_BYTES:
            raise entry.error(
                "l1_size",
                f"snapshot {snap.name!r} has an L1 table of {entry.l1_size} entries",
                expected=f"at most {MAX_L1_BYTES // 8}",
            )
        if entry.l1_table_offset % self._cs:
            raise entry.error(
                "l1_table_offset",
                f"L1 table of snapshot {snap.name!r} at {entry.l1_table_offset:#x} is not "
                "cluster aligned",
                expected=f"a multiple of {self._cs:#x}",
            )
        if entry.l1_table_offset + entry.l1_size * 8 > self._file_size:
            raise entry.error(
                "l1_table_offset",
                f"L1 table of snapshot {snap.name!r} ({entry.l1_size} entries at "
                f"{entry.l1_table_offset:#x}) extends beyond the end of the image",
                expected="the table inside the file",
            )
        end = self.vmstate_offset + snap.vm_state_size
        if end > entry.l1_size * span:
            raise entry.error(
                "vm_state_size",
                f"VM state of snapshot {snap.name!r} ({snap.vm_state_size} bytes at guest "
                f"offset {self.vmstate_offset:#x}) extends past what its L1 table of "
                f"{entry.l1_size} entries maps",
                expected=f"at most {max(0, entry.l1_size * span - self.vmstate_offset)} bytes",
            )

    # -- address translation ------------------------------------------
    def _l1_entry(self, index: int) -> int:
        e = self._l1.get(index)
        if e is None:
            at = self.snapshot.header.l1_table_offset + 8 * index
            e = _U64.unpack(read_in_image(self._img, at, 8, "L1 table entry"))[0]
            if len(self._l1) >= L1_CACHE:
                self._l1.clear()
            self._l1[index] = e
        return e

    def _l2_table(self, l1_index: int) -> bytes | None:
        entry = self._l1_entry(l1_index)
        off = entry & OFFSET_MASK
        if off == 0:
            return None
        table = self._l2.get(off)
        if table is not None:
            self._l2.move_to_end(off)
            return table
        where = self.snapshot.header.l1_table_offset + 8 * l1_index
        if off % self._cs:
            raise ContainerError(f"L2 table offset {off:#x} is not cluster aligned", offset=where)
        if off + self._cs > self._file_size:
            raise ContainerError(
                f"L2 table at {off:#x} lies beyond the end of the image", offset=where
            )
        table = bytes(self._img.read_at(off, self._cs))
        self._l2[off] = table
        if len(self._l2) > L2_CACHE:
            self._l2.popitem(last=False)
        return table

    def _compressed(self, entry: int, where: int) -> bytes:
        cached = self._cluster_cache
        if cached is not None and cached[0] == entry:
            return cached[1]
        shift = 62 - (self._cb - 8)
        host = entry & ((1 << shift) - 1)
        sectors = ((entry >> shift) & ((1 << (self._cb - 8)) - 1)) + 1
        length = sectors * SECTOR - (host & (SECTOR - 1))
        if host >= self._file_size:
            raise ContainerError(
                f"compressed cluster at {host:#x} lies beyond the end of the image",
                offset=where,
            )
        # The last sector may extend past the end of the file; QEMU reads it as zeros.
        data = bytes(self._img.read_at(host, min(length, self._file_size - host)))
        kind = COMPRESSION_TYPES[self._h.compression_type]
        try:
            out = _INFLATE[kind](data, self._cs)
        except _InflateError as e:
            raise ContainerError(
                f"{kind} data of the compressed cluster at {host:#x} is corrupt: {e}",
                offset=where,
            ) from None
        if len(out) != self._cs:
            raise ContainerError(
                f"compressed cluster at {host:#x} inflates to {len(out)} bytes",
                offset=where,
                expected=f"{self._cs} bytes",
            )
        self._cluster_cache = (entry, out)
        return out

    def _cluster_piece(self, guest: int, n: int) -> bytes | memoryview:
        """``n`` bytes at guest offset ``guest``, all inside one cluster."""
        cb = self._cb
        l1_index = guest >> self._l1_shift
        table = self._l2_table(l1_index)
        if table is None:
            return self._zero[:n]
        l2_index = (guest >> cb) & (self._l2_entries - 1)
        pos = l2_index * self._entry_size
        entry = _U64.unpack_from(table, pos)[0]
        where = (self._l1_entry(l1_index) & OFFSET_MASK) + pos
        in_cluster = guest & (self._cs - 1)
        if entry & OFLAG_COMPRESSED:
            return self._compressed(entry, where)[in_cluster : in_cluster + n]
        host = entry & OFFSET_MASK
        if self._entry_size == 16:
            bitmap = _U64.unpack_from(table, pos + 8)[0]
            return self._subclusters(host, bitmap, in_cluster, n, where)
        if entry & OFLAG_ZERO or host == 0:
            return self._zero[:n]
        return self._host(host, in_cluster, n, where)

    def _subclusters(
        self, host: int, bitmap: int, in_cluster: int, n: int, where: int
    ) -> bytes | memoryview:
        alloc = bitmap & 0xFFFFFFFF
        zero = bitmap >> 32
        if alloc & zero:
            raise ContainerError(
                f"extended L2 entry marks subclusters both allocated and zero ({bitmap:#x})",
                offset=where + 8,
            )
        if host == 0 and alloc:
            raise ContainerError(
                f"extended L2 entry allocates subclusters ({bitmap:#x}) without a host cluster",
                offset=where,
            )
        sc_bits = self._cb - 5
        pieces: list[bytes | memoryview] = []
        end = in_cluster + n
        pos = in_cluster
        while pos < end:
            sc = pos >> sc_bits
            stop = min(end, (sc + 1) << sc_bits)
            if alloc >> sc & 1:
                pieces.append(self._host(host, pos, stop - pos, where))
            else:
                pieces.append(self._zero[: stop - pos])
            pos = stop
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _host(self, host: int, in_cluster: int, n: int, where: int) -> bytes | memoryview:
        if host % self._cs:
            raise ContainerError(
                f"data cluster offset {host:#x} is not cluster aligned", offset=where
            )
        if host + in_cluster + n > self._file_size:
            raise ContainerError(
                f"data cluster at {host:#x} lies beyond the end of the image", offset=where
            )
        self._touched.append((host + in_cluster, n))
        return self._img.read_at(host + in_cluster, n)

    # -- Source interface ---------------------------------------------
    def read_at(self, offset: int, n: int) -> bytes:
        """Exactly ``n`` bytes of the VM state at ``offset``."""
        size = self.size or 0
        if offset < 0 or n < 0 or offset + n > size:
            raise TruncatedError(
                f"need {n} bytes but the VM state has {max(0, size - offset)} left",
                offset=offset,
            )
        cs = self._cs
        guest = self.vmstate_offset + offset
        end = guest + n
        pieces = []
        while guest < end:
            l1_index = guest >> self._l1_shift
            if self._l2_table(l1_index) is None:
                # A whole unallocated L1 entry reads as zeros in one step.
                stop = min(end, (l1_index + 1) << self._l1_shift)
                pieces.append(bytes(stop - guest))
            else:
                stop = min(end, (guest | (cs - 1)) + 1)
                pieces.append(self._cluster_piece(guest, stop - guest))
            guest = stop
        data = bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)
        self._release_touched()
        return data

    def _release_touched(self) -> None:
        """Let the image's data clusters just copied out leave memory (a mapped
        image file would otherwise keep every cluster read in the process)."""
        touched, self._touched = self._touched, []
        page = mmap.PAGESIZE
        lo = hi = -1
        for start, n in [*touched, (-1, 0)]:
            if start == hi:
                hi += n
                continue
            if hi > lo:
                self._img.release(lo - lo % page, hi + (-hi) % page)
            lo, hi = start, start + n

    def read(self, n: int) -> bytes:
        size = self.size or 0
        n = max(0, min(n, size - self._pos))
        data = self.read_at(self._pos, n)
        self._pos += n
        return data

    def seek(self, offset: int) -> None:
        """Move the streaming position."""
        self._pos = offset

    def skip(self, n: int) -> None:
        self._pos = min(self._pos + n, self.size or 0)

    def find(self, pattern: bytes, start: int, end: int) -> int:
        """Offset of ``pattern`` in ``[start, end)``, or -1."""
        end = min(end, self.size or 0)
        k = len(pattern)
        pos = max(0, start)
        step = SCAN_FIRST
        while pos + k <= end:
            w = self._window
            if w is not None and w[0] <= pos < w[0] + len(w[1]):
                base, data = w
            else:
                base = pos
                data = self.read_at(pos, min(end, pos + step) - pos)
                self._window = (base, data)
                step = min(step * 2, SCAN_CHUNK)
            stop = min(end, base + len(data))
            i = data.find(pattern, pos - base, stop - base)
            if i >= 0:
                return base + i
            if stop >= end:
                break
            pos = max(pos + 1, stop - k + 1)
        return -1

    def rfind(self, pattern: bytes, start: int, end: int) -> int:
        """Offset of the last ``pattern`` in ``[start, end)``, or -1."""
        start = max(0, start)
        k = len(pattern)
        stop = min(end, self.size or 0)
        step = SCAN_FIRST
        while stop - start >= k:
            w = self._window
            if w is not None and w[0] < stop <= w[0] + len(w[1]):
                base, data = w
            else:
                base = max(start, stop - step)
                data = self.read_at(base, stop - base)
                self._window = (base, data)
                step = min(step * 2, SCAN_CHUNK)
            lo = max(start, base)
            i = data.rfind(pattern, lo - base, stop - base)
            if i >= 0:
                return base + i
            if lo <= start:
                break
            stop = min(stop - 1, lo + k - 1)
        return -1

    def close(self) -> None:
        self._l2.clear()
        self._cluster_cache = None
        self._window = None
        self._img.close()
