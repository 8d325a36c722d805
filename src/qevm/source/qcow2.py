"""qcow2 internal snapshots: the VM state that ``savevm`` stores in the image.

QEMU writes the migration stream into the image's "vmstate area", guest
offsets just past the virtual disk (the first L1 entry that maps no disk
cluster, see ``qcow2_vm_state_offset()``), then takes the snapshot and
discards those clusters from the active L1 table.  The bytes are therefore
reachable only through the snapshot's own L1/L2 tables, which is what
:class:`SnapshotVMState` reads.

Every table offset and size read from the image is checked against the file
before use; no allocation is sized by a field of the image beyond one cluster
(at most 2 MiB) or the fixed-size tables QEMU itself bounds.
"""

from __future__ import annotations

import datetime
import mmap
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..errors import ContainerError, TruncatedError, UsageError
from ..fileio import read_exact
from ..structs import CStruct
from .base import Source
from .compress import detect_compression

MAGIC = b"QFI\xfb"

# Incompatible feature bits (docs/interop/qcow2.rst).
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = (1 << 5) - 1

COMPRESSION_TYPES = {0: "deflate", 1: "zstd"}

#: QEMU refuses clusters larger than 2 MiB (MAX_CLUSTER_BITS).
MAX_CLUSTER_BITS = 21
MIN_CLUSTER_BITS = 9
#: QEMU's QCOW_MAX_SNAPSHOTS, QCOW_MAX_SNAPSHOT_EXTRA_DATA, QCOW_MAX_L1_SIZE.
MAX_SNAPSHOTS = 65536
MAX_SNAPSHOT_EXTRA_DATA = 1024
MAX_L1_BYTES = 32 << 20

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


class QCowHeader(
    CStruct,
    fields="""
        uint32_t magic;
        uint32_t version;
        uint64_t backing_file_offset;
        uint32_t backing_file_size;
        uint32_t cluster_bits;
        uint64_t size;                  /* of the virtual disk, in bytes */
        uint32_t crypt_method;
        uint32_t l1_size;
        uint64_t l1_table_offset;
        uint64_t refcount_table_offset;
        uint32_t refcount_table_clusters;
        uint32_t nb_snapshots;
        uint64_t snapshots_offset;
        /* version 3 */
        uint64_t incompatible_features;
        uint64_t compatible_features;
        uint64_t autoclear_features;
        uint32_t refcount_order;
        uint32_t header_length;
        /* additional fields */
        uint8_t compression_type;
        uint8_t padding[7];
    """,
):
    """The qcow2 header (block/qcow2.h: QCowHeader)."""

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_EXTL2)

    @property
    def l2_bits(self) -> int:
        """log2 of the entries in one L2 table (16-byte entries with extended L2)."""
        return self.cluster_bits - (4 if self.extended_l2 else 3)

    @property
    def l1_span(self) -> int:
        """Guest bytes mapped by one L1 entry."""
        return 1 << (self.cluster_bits + self.l2_bits)


#: Bytes of the header a version 2 image has (the version 3 fields read as 0).
V2_HEADER_LENGTH = QCowHeader.field_offset("incompatible_features")


class QCowSnapshotHeader(
    CStruct,
    fields="""
        uint64_t l1_table_offset;
        uint32_t l1_size;
        uint16_t id_str_size;
        uint16_t name_size;
        uint32_t date_sec;
        uint32_t date_nsec;
        uint64_t vm_clock_nsec;
        uint32_t vm_state_size;
        uint32_t extra_data_size;  /* then the extra data, the id and the name */
    """,
):
    """An entry of the snapshot table (block/qcow2.h: QCowSnapshotHeader)."""


class QCowSnapshotExtraData(
    CStruct,
    fields="""
        uint64_t vm_state_size_large;
        uint64_t disk_size;
        uint64_t icount;           /* -1: not recorded */
    """,
):
    """The extra data of a snapshot entry (block/qcow2.h: QCowSnapshotExtraData)."""


@dataclass
class Snapshot:
    """One entry of the snapshot table: its header, extra data, id and name."""

    index: int
    header: QCowSnapshotHeader
    id: str
    name: str
    #: The 64-bit size from the extra data where present, else the header's.
    vm_state_size: int
    #: The disk size at the snapshot (the image's when the extra data has none).
    disk_size: int
    #: Instructions executed (None: not recorded).
    icount: int | None

    @property
    def date(self) -> str:
        """The creation time, ISO 8601 in UTC."""
        t = datetime.datetime.fromtimestamp(self.header.date_sec, datetime.timezone.utc)
        return t.replace(microsecond=self.header.date_nsec // 1000 % 1000000).isoformat()

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as plain JSON-able values."""
        return {
            "id": self.id,
            "name": self.name,
            "date": self.date,
            "date_sec": self.header.date_sec,
            "date_nsec": self.header.date_nsec,
            "vm_clock_nsec": self.header.vm_clock_nsec,
            "vm_state_size": self.vm_state_size,
            "disk_size": self.disk_size,
            "icount": self.icount,
            "l1_table_offset": self.header.l1_table_offset,
            "l1_size": self.header.l1_size,
        }


def _need_seekable(src: Source) -> None:
    if not src.seekable:
        raise ContainerError(
            "qcow2 needs a seekable file; save or decompress the image to a regular file first",
            offset=0,
        )


def _read(src: Source, offset: int, n: int, what: str) -> bytes:
    # A table or name the header points past the end of the file is the image's fault.
    return read_exact(src, offset, n, what, where="image", error=ContainerError)


def read_header(src: Source) -> QCowHeader:
    """Parse and check the qcow2 header of ``src`` (a seekable source)."""
    _need_seekable(src)
    size = src.size or 0
    head = bytes(src.read_at(0, min(size, QCowHeader.size)))
    if not head.startswith(MAGIC):
        kind = detect_compression(head)
        if kind:
            raise ContainerError(
                f"the image is {kind}-compressed; qcow2 needs a seekable file, decompress it first",
                offset=0,
            )
        raise ContainerError(
            f"not a qcow2 image: magic {head[:4].hex()}", offset=0, expected="QFI\\xfb"
        )
    if len(head) < V2_HEADER_LENGTH:
        raise ContainerError(
            f"qcow2 header truncated: the file has {size} bytes",
            offset=0,
            expected=f"at least {V2_HEADER_LENGTH} bytes",
        )
    h = QCowHeader.unpack(_covered(head, V2_HEADER_LENGTH))
    if h.version not in (2, 3):
        raise ContainerError(
            f"qcow2 version {h.version} is not supported",
            offset=h.offset_of("version"),
            expected="version 2 or 3",
        )
    if not MIN_CLUSTER_BITS <= h.cluster_bits <= MAX_CLUSTER_BITS:
        raise ContainerError(
            f"cluster_bits {h.cluster_bits} is out of range",
            offset=h.offset_of("cluster_bits"),
            expected=f"{MIN_CLUSTER_BITS}..{MAX_CLUSTER_BITS}",
        )
    if h.version == 2:
        h.header_length = V2_HEADER_LENGTH
        return _checked(h)
    v3_end = h.field_offset("compression_type")
    _read(src, V2_HEADER_LENGTH, v3_end - V2_HEADER_LENGTH, "qcow2 version 3 header")
    length = QCowHeader.unpack(_covered(head, v3_end)).header_length
    if length < v3_end or length % 8 or length > h.cluster_size:
        raise ContainerError(
            f"header_length {length} is invalid",
            offset=h.offset_of("header_length"),
            expected=f"a multiple of 8, at least {v3_end} and at most one cluster",
        )
    if len(head) < min(length, QCowHeader.size):
        _read(src, len(head), min(length, QCowHeader.size) - len(head), "qcow2 header")
    return _checked(QCowHeader.unpack(_covered(head, length)))


def _covered(head: bytes, length: int) -> bytes:
    """The header's bytes as QEMU reads them: zeros past ``length``."""
    return head[:length].ljust(QCowHeader.size, b"\0")


def _checked(h: QCowHeader) -> QCowHeader:
    """The header, if qevm can read the image it heads."""

    if h.crypt_method:
        raise ContainerError(
            f"the image is encrypted (crypt_method {h.crypt_method}); encrypted qcow2 images "
            "are not supported",
            offset=h.offset_of("crypt_method"),
            expected="crypt_method 0",
        )
    features = h.incompatible_features
    unknown = features & ~INCOMPAT_KNOWN
    if unknown:
        raise ContainerError(
            f"unknown incompatible qcow2 features {unknown:#x}",
            offset=h.offset_of("incompatible_features"),
            expected=f"only bits in {INCOMPAT_KNOWN:#x}",
        )
    if features & INCOMPAT_DATA_FILE:
        raise ContainerError(
            "the image keeps its data in an external data file, which is not supported "
            "(and cannot hold internal snapshots)",
            offset=h.offset_of("incompatible_features"),
        )
    where = h.offset_of("compression_type")
    if features & INCOMPAT_COMPRESSION:
        if h.compression_type == 0:
            raise ContainerError(
                "the compression-type feature is set but compression_type is 0",
                offset=where,
                expected="a non-zero compression_type",
            )
    elif h.compression_type != 0:
        raise ContainerError(
            f"compression_type {h.compression_type} without the compression-type feature bit",
            offset=where,
            expected="0 (deflate)",
        )
    if h.compression_type not in COMPRESSION_TYPES:
        raise ContainerError(
            f"unknown compression_type {h.compression_type}",
            offset=where,
            expected="0 (deflate) or 1 (zstd)",
        )
    if h.extended_l2 and h.cluster_bits < 14:
        raise ContainerError(
            f"extended L2 entries with {h.cluster_size}-byte clusters",
            offset=h.offset_of("cluster_bits"),
            expected="clusters of at least 16 KiB with extended L2 entries",
        )
    return h


def read_snapshots(src: Source, h: QCowHeader) -> list[Snapshot]:
    """The snapshot table of the image, checked against the file."""
    if h.nb_snapshots == 0:
        return []
    if h.nb_snapshots > MAX_SNAPSHOTS:
        raise ContainerError(
            f"{h.nb_snapshots} snapshots",
            offset=h.offset_of("nb_snapshots"),
            expected=f"at most {MAX_SNAPSHOTS}",
        )
    if h.snapshots_offset % h.cluster_size:
        raise ContainerError(
            f"snapshot table offset {h.snapshots_offset:#x} is not cluster aligned",
            offset=h.offset_of("snapshots_offset"),
            expected=f"a multiple of {h.cluster_size:#x}",
        )
    out = []
    off = h.snapshots_offset
    for i in range(h.nb_snapshots):
        off = (off + 7) & ~7
        what = f"snapshot table entry {i}"
        sh = QCowSnapshotHeader.unpack(_read(src, off, QCowSnapshotHeader.size, what), off)
        off += sh.size
        if sh.extra_data_size > MAX_SNAPSHOT_EXTRA_DATA:
            raise ContainerError(
                f"{what} has {sh.extra_data_size} bytes of extra data",
                offset=sh.offset_of("extra_data_size"),
                expected=f"at most {MAX_SNAPSHOT_EXTRA_DATA}",
            )
        raw = _read(src, off, sh.extra_data_size, f"extra data of {what}")
        # Older QEMUs wrote less extra data: the fields it lacks keep their defaults.
        known = min(len(raw), QCowSnapshotExtraData.size)
        extra = QCowSnapshotExtraData.unpack(
            raw[:known] + QCowSnapshotExtraData(icount=(1 << 64) - 1).pack()[known:], off
        )
        off += sh.extra_data_size
        id_str = _read(src, off, sh.id_str_size, f"id of {what}").decode("utf-8", "replace")
        off += sh.id_str_size
        name = _read(src, off, sh.name_size, f"name of {what}").decode("utf-8", "replace")
        off += sh.name_size
        if off - h.snapshots_offset > MAX_SNAPSHOTS * 1024:
            raise ContainerError(
                "the snapshot table is larger than QEMU allows",
                offset=sh.at,
                expected=f"at most {MAX_SNAPSHOTS * 1024} bytes",
            )
        has = sh.extra_data_size
        out.append(
            Snapshot(
                index=i,
                header=sh,
                id=id_str,
                name=name,
                vm_state_size=extra.vm_state_size_large if has >= 8 else sh.vm_state_size,
                disk_size=extra.disk_size if has >= 16 else h.size,
                icount=None if extra.icount == (1 << 64) - 1 else extra.icount,
            )
        )
    return out


def list_snapshots(src: Source) -> list[dict[str, Any]]:
    """Every internal snapshot of the qcow2 image ``src``, as dicts (see :class:`Snapshot`)."""
    h = read_header(src)
    return [s.to_dict() for s in read_snapshots(src, h)]


def _describe(snaps: list[Snapshot]) -> str:
    with_state = [f"{s.name!r} (id {s.id})" for s in snaps if s.vm_state_size]
    if not with_state:
        return "no snapshot in the image has VM state"
    return "snapshots with VM state: " + ", ".join(with_state)


def find_snapshot(snaps: list[Snapshot], wanted: str) -> Snapshot | None:
    """The snapshot whose id is ``wanted``, else the first whose name is (QEMU's order)."""
    for s in snaps:
        if s.id == wanted:
            return s
    for s in snaps:
        if s.name == wanted:
            return s
    return None


def open_snapshot(src: Source, snapshot: str | None) -> Source:
    """The VM state stored with internal snapshot ``snapshot`` (a name or an id) of ``src``."""
    h = read_header(src)
    snaps = read_snapshots(src, h)
    if snapshot is None:
        raise UsageError(
            f"{src.name} is a qcow2 image; choose a snapshot with --snapshot NAME|ID "
            f"({_describe(snaps)})"
        )
    sn = find_snapshot(snaps, snapshot)
    if sn is None:
        raise UsageError(f"{src.name} has no snapshot {snapshot!r} ({_describe(snaps)})")
    if sn.vm_state_size == 0:
        raise UsageError(
            f"snapshot {sn.name!r} (id {sn.id}) has no VM state: it is a disk-only snapshot "
            f"({_describe(snaps)})"
        )
    return SnapshotVMState(src, h, sn)


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
            raise ContainerError(
                f"snapshot {snap.name!r} has an L1 table of {entry.l1_size} entries",
                offset=entry.offset_of("l1_size"),
                expected=f"at most {MAX_L1_BYTES // 8}",
            )
        if entry.l1_table_offset % self._cs:
            raise ContainerError(
                f"L1 table of snapshot {snap.name!r} at {entry.l1_table_offset:#x} is not "
                "cluster aligned",
                offset=entry.offset_of("l1_table_offset"),
                expected=f"a multiple of {self._cs:#x}",
            )
        if entry.l1_table_offset + entry.l1_size * 8 > self._file_size:
            raise ContainerError(
                f"L1 table of snapshot {snap.name!r} ({entry.l1_size} entries at "
                f"{entry.l1_table_offset:#x}) extends beyond the end of the image",
                offset=entry.offset_of("l1_table_offset"),
                expected="the table inside the file",
            )
        end = self.vmstate_offset + snap.vm_state_size
        if end > entry.l1_size * span:
            raise ContainerError(
                f"VM state of snapshot {snap.name!r} ({snap.vm_state_size} bytes at guest "
                f"offset {self.vmstate_offset:#x}) extends past what its L1 table of "
                f"{entry.l1_size} entries maps",
                offset=entry.offset_of("vm_state_size"),
                expected=f"at most {max(0, entry.l1_size * span - self.vmstate_offset)} bytes",
            )

    # -- address translation ------------------------------------------
    def _l1_entry(self, index: int) -> int:
        e = self._l1.get(index)
        if e is None:
            at = self.snapshot.header.l1_table_offset + 8 * index
            e = _U64.unpack(_read(self._img, at, 8, "L1 table entry"))[0]
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
