"""The qcow2 header (block/qcow2.h, qcow2.c): read and checked before anything else."""

from __future__ import annotations

from ...errors import ContainerError
from ...fileio import read_exact
from ...structs import CStruct
from ..base import Source
from ..compress import detect_compression

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

    error_class = ContainerError

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


def _need_seekable(src: Source) -> None:
    if not src.seekable:
        raise ContainerError(
            "qcow2 needs a seekable file; save or decompress the image to a regular file first",
            offset=0,
        )


def read_in_image(src: Source, offset: int, n: int, what: str) -> bytes:
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
        raise h.error(
            "version",
            f"qcow2 version {h.version} is not supported",
            expected="version 2 or 3",
        )
    if not MIN_CLUSTER_BITS <= h.cluster_bits <= MAX_CLUSTER_BITS:
        raise h.error(
            "cluster_bits",
            f"cluster_bits {h.cluster_bits} is out of range",
            expected=f"{MIN_CLUSTER_BITS}..{MAX_CLUSTER_BITS}",
        )
    if h.version == 2:
        h.header_length = V2_HEADER_LENGTH
        return _checked(h)
    v3_end = h.field_offset("compression_type")
    read_in_image(src, V2_HEADER_LENGTH, v3_end - V2_HEADER_LENGTH, "qcow2 version 3 header")
    length = QCowHeader.unpack(_covered(head, v3_end)).header_length
    if length < v3_end or length % 8 or length > h.cluster_size:
        raise h.error(
            "header_length",
            f"header_length {length} is invalid",
            expected=f"a multiple of 8, at least {v3_end} and at most one cluster",
        )
    if len(head) < min(length, QCowHeader.size):
        read_in_image(src, len(head), min(length, QCowHeader.size) - len(head), "qcow2 header")
    return _checked(QCowHeader.unpack(_covered(head, length)))


def _covered(head: bytes, length: int) -> bytes:
    """The header's bytes as QEMU reads them: zeros past ``length``."""
    return head[:length].ljust(QCowHeader.size, b"\0")


def _checked(h: QCowHeader) -> QCowHeader:
    """The header, if qevm can read the image it heads."""

    if h.crypt_method:
        raise h.error(
            "crypt_method",
            f"the image is encrypted (crypt_method {h.crypt_method}); encrypted qcow2 images "
            "are not supported",
            expected="crypt_method 0",
        )
    features = h.incompatible_features
    unknown = features & ~INCOMPAT_KNOWN
    if unknown:
        raise h.error(
            "incompatible_features",
            f"unknown incompatible qcow2 features {unknown:#x}",
            expected=f"only bits in {INCOMPAT_KNOWN:#x}",
        )
    if features & INCOMPAT_DATA_FILE:
        raise h.error(
            "incompatible_features",
            "the image keeps its data in an external data file, which is not supported "
            "(and cannot hold internal snapshots)",
        )
    if features & INCOMPAT_COMPRESSION:
        if h.compression_type == 0:
            raise h.error(
                "compression_type",
                "the compression-type feature is set but compression_type is 0",
                expected="a non-zero compression_type",
            )
    elif h.compression_type != 0:
        raise h.error(
            "compression_type",
            f"compression_type {h.compression_type} without the compression-type feature bit",
            expected="0 (deflate)",
        )
    if h.compression_type not in COMPRESSION_TYPES:
        raise h.error(
            "compression_type",
            f"unknown compression_type {h.compression_type}",
            expected="0 (deflate) or 1 (zstd)",
        )
    if h.extended_l2 and h.cluster_bits < 14:
        raise h.error(
            "cluster_bits",
            f"extended L2 entries with {h.cluster_size}-byte clusters",
            expected="clusters of at least 16 KiB with extended L2 entries",
        )
    return h
