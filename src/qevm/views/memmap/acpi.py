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

from dataclasses import dataclass

from ...structs import CStruct

#: The RAM block holding the tables blob.
TABLES_BLOCK = "/rom@etc/acpi/tables"


class AcpiTableHeader(
    CStruct,
    byte_order="<",
    fields="""
        char signature[4];
        uint32_t length;
        uint8_t revision;
        uint8_t checksum;
        char oem_id[6];
        char oem_table_id[8];
        uint32_t oem_revision;
        char asl_compiler_id[4];
        uint32_t asl_compiler_revision;
    """,
):
    """The header of every ACPI table (ACPICA's acpi_table_header; QEMU's AcpiTableHeader)."""


class AcpiSratMemAffinity(
    CStruct,
    byte_order="<",
    fields="""
        uint8_t type;             /* acpi_subtable_header: 1, memory affinity */
        uint8_t subtable_length;  /* acpi_subtable_header: 40 */
        uint32_t proximity_domain;
        uint16_t reserved;
        uint64_t base_address;
        uint64_t length;
        uint32_t reserved1;
        uint32_t flags;
        uint64_t reserved2;
    """,
):
    """An SRAT memory affinity structure (ACPICA's acpi_srat_mem_affinity)."""


#: Bytes after the table header before SRAT's structures (table revision, 8 reserved).
SRAT_RESERVED = 12
#: The SRAT structure type of memory affinity.
SRAT_MEMORY_AFFINITY = 1

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
        if pos + AcpiTableHeader.size <= len(blob):
            length = AcpiTableHeader.unpack(blob[pos : pos + AcpiTableHeader.size]).length
            if AcpiTableHeader.size <= length <= len(blob) - pos:
                out.append(blob[pos : pos + length])
        pos = blob.find(signature, pos + 1)
    return out


def parse_srat(table: bytes) -> list[MemoryAffinity] | None:
    """The memory affinity structures of an SRAT, or None if it does not parse to its end."""
    pos = AcpiTableHeader.size + SRAT_RESERVED
    out = []
    while pos < len(table):
        if pos + 2 > len(table):
            return None
        kind, length = table[pos], table[pos + 1]
        if length < 2 or pos + length > len(table):
            return None
        if kind == SRAT_MEMORY_AFFINITY:
            if length != AcpiSratMemAffinity.size:
                return None
            m = AcpiSratMemAffinity.unpack(table[pos : pos + length], pos)
            out.append(MemoryAffinity(m.proximity_domain, m.base_address, m.length, m.flags))
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
