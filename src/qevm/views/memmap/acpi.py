"""ACPI tables QEMU built for the guest, read from the ``etc/acpi/tables`` ROM blob.

QEMU builds the tables into the fw_cfg file ``etc/acpi/tables`` and migrates
it as the RAM block ``/rom@etc/acpi/tables``; the firmware later copies them
into guest memory and patches pointers and checksums (``etc/table-loader``).
Tables without pointers, such as SRAT, are therefore exact in the blob; their
checksum byte may still be unset, so tables are recognised by their header
(signature, a length that fits, a known revision) and by parsing to their
exact end.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: The RAM block holding the tables blob.
TABLES_BLOCK = "/rom@etc/acpi/tables"
HEADER = 36

#: SRAT memory affinity flags
MEM_ENABLED = 1
MEM_HOTPLUGGABLE = 2
MEM_NONVOLATILE = 4


@dataclass(frozen=True)
class MemoryAffinity:
    """One SRAT memory affinity structure: a guest-physical range and its NUMA node."""

    node: int
    base: int
    length: int
    flags: int

    @property
    def enabled(self) -> bool:
        return bool(self.flags & MEM_ENABLED)

    @property
    def hotpluggable(self) -> bool:
        return bool(self.flags & MEM_HOTPLUGGABLE)


def find_tables(blob: bytes, signature: bytes) -> list[bytes]:
    """Every table with ``signature`` whose header fits in ``blob``."""
    out = []
    pos = blob.find(signature)
    while pos >= 0:
        if pos + HEADER <= len(blob):
            (length,) = struct.unpack_from("<I", blob, pos + 4)
            if HEADER <= length <= len(blob) - pos:
                out.append(blob[pos : pos + length])
        pos = blob.find(signature, pos + 1)
    return out


def parse_srat(table: bytes) -> list[MemoryAffinity] | None:
    """The memory affinity structures of an SRAT, or None if it does not parse to its end."""
    pos = HEADER + 12  # table revision (u32) and 8 reserved bytes
    out = []
    while pos < len(table):
        if pos + 2 > len(table):
            return None
        kind, length = table[pos], table[pos + 1]
        if length < 2 or pos + length > len(table):
            return None
        if kind == 1:
            if length != 40:
                return None
            node, base, size, flags = struct.unpack_from("<I2xQQ4xI", table, pos + 2)
            out.append(MemoryAffinity(node, base, size, flags))
        pos += length
    return out if pos == len(table) else None


def memory_affinity(blob: bytes | None) -> list[MemoryAffinity] | None:
    """The enabled SRAT memory ranges in ``blob`` (None when there is no SRAT)."""
    if not blob:
        return None
    for table in find_tables(blob, b"SRAT"):
        entries = parse_srat(table)
        if entries is not None:
            return [e for e in entries if e.enabled and e.length]
    return None
