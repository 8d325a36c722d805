"""Guest-physical and kernel-virtual reads of a stream's memory.

:class:`GuestMemory` reads guest-physical addresses through a memory map
(:func:`qevm.views.memmap.layout`) and a block reader (the page index, or the
staging file of a stream read from a pipe).  :func:`translate` walks the
guest's page tables as the MMU would, from a CPU's registers: x86-64 4- and
5-level paging from CR3, AArch64 stage-1 translation of the upper (TTBR1)
half with 4, 16 or 64 KiB granules.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..views.memmap import MemoryMap

BlockReader = Callable[[str, int, int], bytes]


class GuestMemory:
    """Reads of guest-physical memory; addresses no range covers read as ``None``."""

    def __init__(self, memmap: MemoryMap, read: BlockReader) -> None:
        self.ranges = sorted(memmap.ranges, key=lambda r: r.gpa)
        self._starts = [r.gpa for r in self.ranges]
        self._read = read

    def read(self, gpa: int, length: int) -> bytes | None:
        """``length`` bytes at ``gpa``, or ``None`` if part of them is not RAM or ROM."""
        out = bytearray()
        while length > 0:
            i = bisect.bisect_right(self._starts, gpa) - 1
            if i < 0 or gpa >= self.ranges[i].end:
                return None
            r = self.ranges[i]
            n = min(length, r.end - gpa)
            out += self._read(r.block, r.offset + gpa - r.gpa, n)
            gpa += n
            length -= n
        return bytes(out)

    def read_filled(self, gpa: int, length: int) -> bytearray:
        """``length`` bytes at ``gpa`` with zeros where no range is."""
        out = bytearray(length)
        end = gpa + length
        i = max(bisect.bisect_right(self._starts, gpa) - 1, 0)
        while i < len(self.ranges) and self.ranges[i].gpa < end:
            r = self.ranges[i]
            lo, hi = max(r.gpa, gpa), min(r.end, end)
            if lo < hi:
                out[lo - gpa : hi - gpa] = self._read(r.block, r.offset + lo - r.gpa, hi - lo)
            i += 1
        return out

    def u64(self, gpa: int, endian: str = "<") -> int | None:
        data = self.read(gpa, 8)
        return None if data is None else struct.unpack(endian + "Q", data)[0]


# -- x86-64 -------------------------------------------------------------------------

_X86_ADDR = 0x000F_FFFF_FFFF_F000  # bits 51:12 of an entry
CR4_LA57 = 1 << 12
CR0_PG = 1 << 31
EFER_LMA = 1 << 10


def x86_translate(mem: GuestMemory, cr3: int, vaddr: int, la57: bool = False) -> int | None:
    """The guest-physical address of ``vaddr`` under page tables rooted at ``cr3``."""
    table = cr3 & _X86_ADDR
    levels = 5 if la57 else 4
    for level in range(levels, 0, -1):
        shift = 12 + 9 * (level - 1)
        entry = mem.u64(table + ((vaddr >> shift) & 0x1FF) * 8)
        if entry is None or not entry & 1:
            return None
        if level in (2, 3) and entry & 0x80:  # PS: a 2 MiB or 1 GiB page
            base = entry & _X86_ADDR & ~((1 << shift) - 1)
            return base | (vaddr & ((1 << shift) - 1))
        table = entry & _X86_ADDR
    return table | (vaddr & 0xFFF)


# -- AArch64 ------------------------------------------------------------------------

#: TCR_EL1.TG1 -> granule shift
_TG1 = {1: 14, 2: 12, 3: 16}


def arm64_translate(mem: GuestMemory, ttbr1: int, tcr: int, vaddr: int) -> int | None:
    """Stage-1 translation of an upper-half ``vaddr`` through TTBR1_EL1 (little-endian tables)."""
    granule = _TG1.get((tcr >> 30) & 3)
    if granule is None:
        return None
    t1sz = (tcr >> 16) & 0x3F
    in_bits = 64 - t1sz
    stride = granule - 3
    levels = -(-(in_bits - granule) // stride)
    oa_mask = ((1 << 48) - 1) & ~((1 << granule) - 1)
    table = ttbr1 & ((1 << 48) - 1) & ~1
    for n in range(levels):
        shift = granule + stride * (levels - 1 - n)
        index = (vaddr >> shift) & ((1 << min(stride, in_bits - shift)) - 1)
        entry = mem.u64(table + index * 8)
        if entry is None or not entry & 1:
            return None
        last = n == levels - 1
        if not last and entry & 2:  # table descriptor
            table = entry & oa_mask
            continue
        if last and not entry & 2:  # reserved at the last level
            return None
        base = entry & ((1 << 48) - 1) & ~((1 << shift) - 1)
        return base | (vaddr & ((1 << shift) - 1))
    return None


def translate(mem: GuestMemory, cpu: Any, vaddr: int) -> int | None:
    """Translate a kernel virtual address with a CPU's registers (x86-64 or AArch64).

    ``None`` when the CPU has paging off, the walk reaches memory that is not
    in the dump, or the address is not mapped.
    """
    r = cpu.registers
    if cpu.arch in ("x86_64", "i386"):
        if not (r.get("cr0", 0) & CR0_PG and r.get("efer", 0) & EFER_LMA):
            return None
        return x86_translate(mem, r["cr3"], vaddr, bool(r.get("cr4", 0) & CR4_LA57))
    if cpu.arch == "aarch64" and "TTBR1_EL1" in r and "TCR_EL1" in r:
        if not r.get("SCTLR_EL1", 0) & 1:  # MMU off
            return None
        return arm64_translate(mem, r["TTBR1_EL1"], r["TCR_EL1"], vaddr)
    return None
