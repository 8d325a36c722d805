"""Guest-physical memory reads for decoders that follow pointers into RAM.

Built on :func:`qevm.views.memmap.layout` (which RAM block backs which
guest-physical range) and the page index (where each page's latest bytes
are).  Device DMA addresses are taken as guest-physical: with a vIOMMU in
the guest they are I/O virtual addresses, which the stream cannot translate.
"""

from __future__ import annotations

import bisect
import struct
from typing import TYPE_CHECKING

from ..errors import QevmError

if TYPE_CHECKING:
    from ..migration import Migration
    from ..views.memmap import MemoryMap


class GuestMemory:
    """Reads guest-physical addresses of one stream."""

    def __init__(self, mig: Migration, memmap: MemoryMap | None = None) -> None:
        from ..views.memmap import layout

        self.mig = mig
        self.index = mig.page_index
        self.map = memmap if memmap is not None else layout(mig)
        self._ranges = sorted(self.map.ranges, key=lambda r: r.gpa)
        self._starts = [r.gpa for r in self._ranges]

    def read(self, gpa: int, length: int) -> bytes | None:
        """``length`` bytes at ``gpa``, or None when part of it is not RAM the stream has."""
        out = bytearray()
        pos, end = gpa, gpa + length
        while pos < end:
            i = bisect.bisect_right(self._starts, pos) - 1
            if i < 0:
                return None
            r = self._ranges[i]
            if not r.gpa <= pos < r.end:
                return None
            take = min(end, r.end) - pos
            out += self.index.read(r.block, r.offset + pos - r.gpa, take)
            pos += take
        return bytes(out)

    def u16(self, gpa: int, big_endian: bool = False) -> int | None:
        data = self.read(gpa, 2)
        if data is None:
            return None
        return struct.unpack(">H" if big_endian else "<H", data)[0]


def open_guest_memory(mig: Migration) -> tuple[GuestMemory | None, str | None]:
    """Guest memory for ``mig``, or None and why not (RAM not indexed, unknown board)."""
    try:
        return GuestMemory(mig), None
    except QevmError as e:
        return None, str(e)
