"""The qcow2 snapshot table (block/qcow2.h, qcow2-snapshot.c): one entry per snapshot."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from ...errors import ContainerError
from ...structs import CStruct
from ..base import Source
from .header import MAX_SNAPSHOT_EXTRA_DATA, MAX_SNAPSHOTS, QCowHeader, read_header, read_in_image


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

    error_class = ContainerError


class QCowSnapshotExtraData(
    CStruct,
    fields="""
        uint64_t vm_state_size_large;
        uint64_t disk_size;
        uint64_t icount;           /* -1: not recorded */
    """,
):
    """The extra data of a snapshot entry (block/qcow2.h: QCowSnapshotExtraData)."""

    error_class = ContainerError


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


def read_snapshots(src: Source, h: QCowHeader) -> list[Snapshot]:
    """The snapshot table of the image, checked against the file."""
    if h.nb_snapshots == 0:
        return []
    if h.nb_snapshots > MAX_SNAPSHOTS:
        raise h.error(
            "nb_snapshots",
            f"{h.nb_snapshots} snapshots",
            expected=f"at most {MAX_SNAPSHOTS}",
        )
    if h.snapshots_offset % h.cluster_size:
        raise h.error(
            "snapshots_offset",
            f"snapshot table offset {h.snapshots_offset:#x} is not cluster aligned",
            expected=f"a multiple of {h.cluster_size:#x}",
        )
    out = []
    off = h.snapshots_offset
    for i in range(h.nb_snapshots):
        off = (off + 7) & ~7
        what = f"snapshot table entry {i}"
        sh = QCowSnapshotHeader.unpack(read_in_image(src, off, QCowSnapshotHeader.size, what), off)
        off += sh.size
        if sh.extra_data_size > MAX_SNAPSHOT_EXTRA_DATA:
            raise sh.error(
                "extra_data_size",
                f"{what} has {sh.extra_data_size} bytes of extra data",
                expected=f"at most {MAX_SNAPSHOT_EXTRA_DATA}",
            )
        raw = read_in_image(src, off, sh.extra_data_size, f"extra data of {what}")
        # Older QEMUs wrote less extra data: the fields it lacks keep their defaults.
        known = min(len(raw), QCowSnapshotExtraData.size)
        extra = QCowSnapshotExtraData.unpack(
            raw[:known] + QCowSnapshotExtraData(icount=(1 << 64) - 1).pack()[known:], off
        )
        off += sh.extra_data_size
        id_str = read_in_image(src, off, sh.id_str_size, f"id of {what}").decode("utf-8", "replace")
        off += sh.id_str_size
        name = read_in_image(src, off, sh.name_size, f"name of {what}").decode("utf-8", "replace")
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


def find_snapshot(snaps: list[Snapshot], wanted: str) -> Snapshot | None:
    """The snapshot whose id is ``wanted``, else the first whose name is (QEMU's order)."""
    for s in snaps:
        if s.id == wanted:
            return s
    for s in snaps:
        if s.name == wanted:
            return s
    return None
