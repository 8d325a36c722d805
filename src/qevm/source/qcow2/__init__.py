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

from ...errors import UsageError
from ..base import Source
from .header import MAGIC, QCowHeader, read_header
from .snapshot_state import OFFSET_MASK, SnapshotVMState
from .snapshots import Snapshot, find_snapshot, list_snapshots, read_snapshots


def _describe(snaps: list[Snapshot]) -> str:
    with_state = [f"{s.name!r} (id {s.id})" for s in snaps if s.vm_state_size]
    if not with_state:
        return "no snapshot in the image has VM state"
    return "snapshots with VM state: " + ", ".join(with_state)


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


__all__ = [
    "MAGIC",
    "OFFSET_MASK",
    "QCowHeader",
    "Snapshot",
    "SnapshotVMState",
    "find_snapshot",
    "list_snapshots",
    "open_snapshot",
    "read_header",
    "read_snapshots",
]
