"""Virtqueue rings in guest RAM, read the way ``virtio_load()`` reads them.

QEMU migrates neither the used index nor the avail ring.  After loading a
device it computes the ring addresses (legacy devices: from ``desc``, the
ring size and alignment; virtio 1: as migrated), reads ``avail->idx`` and
``used->idx`` from guest memory and checks (hw/virtio/virtio.c):

* ``desc == 0`` with ``last_avail_idx != 0``: "VQ %d address 0x0
  inconsistent with Host index 0x%x" (the load fails);
* ``avail->idx - last_avail_idx`` (mod 2^16) larger than the ring:
  "VQ %d size 0x%x Guest index 0x%x inconsistent with Host index 0x%x:
  delta 0x%x" (the device is marked broken, the load goes on);
* ``last_avail_idx - used->idx`` (mod 2^16, the requests in flight) larger
  than the ring: "VQ %d size 0x%x < last_avail_idx 0x%x - used_idx 0x%x"
  (the load fails).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .wire import SavedQueue

VRING_DESC_SIZE = 16
PCI_VRING_ALIGN = 4096


def legacy_rings(desc: int, num: int, align: int) -> tuple[int, int]:
    """``virtio_queue_update_rings()``: avail right after the descriptors, used aligned."""
    avail = desc + num * VRING_DESC_SIZE
    used = avail + 4 + 2 * num
    used = (used + align - 1) & ~(align - 1)
    return avail, used


@dataclass
class RingCheck:
    """What QEMU finds in guest RAM for one queue when it loads the device."""

    avail_idx: int | None = None
    used_idx: int | None = None
    inuse: int | None = None
    #: QEMU's message when the check fails, and whether the load fails with it
    problem: str | None = None
    fatal: bool = False
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "avail_idx": self.avail_idx,
            "used_idx": self.used_idx,
            "inuse": self.inuse,
        }
        if self.problem:
            out["problem"] = self.problem
            out["fatal"] = self.fatal
        if self.note:
            out["note"] = self.note
        return out


def check_ring(q: SavedQueue, avail: int | None, used: int | None, read_u16) -> RingCheck:
    """Read ``avail->idx`` and ``used->idx`` and apply QEMU's checks.

    ``read_u16(gpa)`` returns the guest's 16-bit value at ``gpa`` (in the
    device's byte order) or None when the stream has no RAM there.
    """
    out = RingCheck()
    if not q.desc:
        # never set up: QEMU reads nothing and keeps the reset values
        out.used_idx = out.inuse = 0
        if q.last_avail_idx:
            out.problem = (
                f"VQ {q.index} address 0x0 inconsistent with Host index 0x{q.last_avail_idx:x}"
            )
            out.fatal = True
        return out
    if avail is None or used is None:
        out.note = "ring addresses not in the stream"
        return out
    aidx = read_u16(avail + 2)
    uidx = read_u16(used + 2)
    if aidx is None or uidx is None:
        out.note = "the rings are in memory the stream does not hold"
        return out
    out.avail_idx, out.used_idx = aidx, uidx
    nheads = (aidx - q.last_avail_idx) & 0xFFFF
    if nheads > q.num:
        out.problem = (
            f"VQ {q.index} size 0x{q.num:x} Guest index 0x{aidx:x} inconsistent with Host "
            f"index 0x{q.last_avail_idx:x}: delta 0x{nheads:x}"
        )
        return out
    out.inuse = (q.last_avail_idx - uidx) & 0xFFFF
    if out.inuse > q.num:
        out.problem = (
            f"VQ {q.index} size 0x{q.num:x} < last_avail_idx 0x{q.last_avail_idx:x} - "
            f"used_idx 0x{uidx:x}"
        )
        out.fatal = True
    return out
