"""Which RAM blocks are the machine's RAM, in which order, and which are device memory.

The machine's RAM is one block named after the board (``pc.ram``,
``mach-virt.ram``...), or the memory backend given with ``-machine
memory-backend=``, or with NUMA one backend per node concatenated in node
order.  Backends left over are device memory (pc-dimm, nvdimm, virtio-mem),
which QEMU places one after the other from the device memory base.

QEMU lists RAM blocks largest first, blocks of equal size in creation order;
so without firmware tables saying otherwise, equal-sized node backends are
taken in stream order.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from .acpi import MemoryAffinity
from .model import Context, Painter, Range


@dataclass
class MachineRam:
    """The blocks making up the machine's RAM (in RAM-offset order) and the rest."""

    blocks: list[str]
    #: why these blocks, in this order
    source: str
    #: backends that are not machine RAM: device memory, in stream order
    device: list[str]

    def size(self, ctx: Context) -> int:
        return sum(ctx.blocks[b] for b in self.blocks)

    def pieces(self, ctx: Context) -> list[tuple[str, int, int]]:
        """``(block, ram_offset, size)`` of each block in the concatenated RAM."""
        out, pos = [], 0
        for b in self.blocks:
            out.append((b, pos, ctx.blocks[b]))
            pos += ctx.blocks[b]
        return out


def backend_candidates(ctx: Context, firmware: tuple[str, ...]) -> list[str]:
    """Blocks no device owns and no firmware rule names: memory backends."""
    return [
        n
        for n in ctx.blocks
        if "/" not in n and not any(fnmatch.fnmatchcase(n, p) for p in firmware)
    ]


def node_sizes(
    srat: list[MemoryAffinity], gpa_to_offset: Callable[[int], int], total: int | None
) -> list[tuple[int, int]] | None:
    """``(node, size)`` in RAM-offset order from SRAT's boot-memory ranges."""
    starts: dict[int, int] = {}
    for e in srat:
        if e.hotpluggable:
            continue
        off = gpa_to_offset(e.base)
        starts[e.node] = min(off, starts.get(e.node, off))
    if not starts:
        return None
    order = sorted(starts.items(), key=lambda kv: kv[1])
    ends = {}
    for e in srat:
        if not e.hotpluggable:
            end = gpa_to_offset(e.base) + e.length
            ends[e.node] = max(end, ends.get(e.node, end))
    out = []
    for i, (node, start) in enumerate(order):
        nxt = order[i + 1][1] if i + 1 < len(order) else (total if total else ends[node])
        out.append((node, nxt - start))
    return out


def machine_ram(
    ctx: Context,
    ram_ids: tuple[str, ...],
    firmware: tuple[str, ...],
    *,
    expected: int | None = None,
    srat: list[MemoryAffinity] | None = None,
    gpa_to_offset: Callable[[int], int] | None = None,
) -> MachineRam:
    """Find the machine's RAM blocks.

    ``expected`` is the RAM size the stream records elsewhere (x86 CMOS);
    ``srat`` with ``gpa_to_offset`` orders NUMA node backends.
    """
    cands = backend_candidates(ctx, firmware)
    for rid in ram_ids:
        if rid in ctx.blocks:
            rest = [c for c in cands if c != rid]
            return MachineRam([rid], f"block {rid} is the board's RAM", rest)
    if not cands:
        return MachineRam([], "no RAM block", [])
    if srat and gpa_to_offset is not None:
        sizes = node_sizes(srat, gpa_to_offset, None)
        if sizes and len(sizes) > 1:
            chosen: list[str] = []
            for _node, size in sizes:
                pick = next((c for c in cands if c not in chosen and ctx.blocks[c] == size), None)
                if pick is None:
                    break
                chosen.append(pick)
            else:
                nodes = ", ".join(f"node {n} {b}" for (n, _), b in zip(sizes, chosen))
                return MachineRam(
                    chosen,
                    f"NUMA memdevs by node (ACPI SRAT: {nodes})",
                    [c for c in cands if c not in chosen],
                )
    if expected is not None:
        exact = [c for c in cands if ctx.blocks[c] == expected]
        if exact:
            return MachineRam(
                [exact[0]],
                f"memory backend {exact[0]} has the machine's RAM size",
                [c for c in cands if c != exact[0]],
            )
        total = 0
        for i, c in enumerate(cands):
            total += ctx.blocks[c]
            if total == expected:
                return MachineRam(
                    cands[: i + 1],
                    "NUMA memdevs in stream order (their sizes add up to the RAM size)",
                    cands[i + 1 :],
                )
    if len(cands) == 1:
        return MachineRam(cands, f"memory backend {cands[0]} is the only one", [])
    return MachineRam(cands, "memory backends in stream order (NUMA memdevs)", [])


def paint_ram(
    painter: Painter, ctx: Context, mram: MachineRam, ram_off: int, size: int, gpa: int, source: str
) -> None:
    """Map machine RAM ``[ram_off, ram_off + size)`` at ``gpa`` (across node backends)."""
    for block, start, length in mram.pieces(ctx):
        lo, hi = max(start, ram_off), min(start + length, ram_off + size)
        if lo < hi:
            painter.paint(Range(gpa + lo - ram_off, hi - lo, block, lo - start, source))


def paint_device_memory(
    painter: Painter, ctx: Context, blocks: list[str], base: int, source: str
) -> None:
    """Place device-memory backends one after the other from ``base`` (QEMU's first fit)."""
    addr = base
    for b in blocks:
        size = ctx.blocks[b]
        painter.paint(Range(addr, size, b, 0, f"{source}; device memory in stream order"))
        addr += size
