"""Guest-physical memory layout: which RAM block backs which guest-physical range.

>>> from qevm.views.memmap import layout
>>> with qevm.open("vm.mig", index_ram=True) as mig:
...     for r in layout(mig).ranges:
...         print(hex(r.gpa), hex(r.size), r.block, hex(r.offset), r.source)

The layout is derived from the stream: the machine type (configuration
section), the RAM blocks and their sizes, device state (the RTC's CMOS, PCI
configuration space with BARs and PAM registers) and the firmware tables
QEMU built for the guest (ACPI SRAT in ``etc/acpi/tables``), falling back to
QEMU's documented rules per board.  ``overrides`` (``--map``) replace what
qevm derived for the blocks they name.

A small registry maps machine families to layout functions: each family
says which machine types (and, for the unversioned ``virt`` boards, which
RAM block names or CPU architectures) it covers.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...errors import UsageError
from . import boards, x86
from .model import Context, Painter, Range, parse_overrides

if TYPE_CHECKING:
    from ...migration import Migration


X86 = ("x86_64", "i386")


@dataclass(frozen=True)
class Family:
    """A family of machines sharing one layout function."""

    name: str
    #: regular expression on the machine type (configuration section)
    machine: str
    build: Callable[[Context, Painter], None]
    #: CPU architectures the family's machines have (the ``cpu`` section tells)
    arches: tuple[str, ...] = ()
    #: RAM blocks only this board has, and device sections only it has: what tells
    #: the board when the stream does not name the machine (or shares the name)
    blocks: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()


FAMILIES: list[Family] = [
    Family(
        "q35",
        r"^pc-q35-|^q35$",
        lambda c, p: x86.layout(c, p, "q35"),
        X86,
        ("pc.ram",),
        ("*/mch",),
    ),
    Family("microvm", r"^microvm", lambda c, p: x86.layout(c, p, "microvm"), X86, ("microvm.ram",)),
    Family(
        "pc",
        r"^pc(-i440fx-.*|-\d.*)?$|^xenfv",
        lambda c, p: x86.layout(c, p, "pc"),
        X86,
        ("pc.ram",),
        ("*/I440FX",),
    ),
    # the PC without PCI: its RAM blocks and no chipset section
    Family("isapc", r"^isapc$", lambda c, p: x86.layout(c, p, "isapc"), X86, ("pc.ram",)),
    Family("pseries", r"^pseries", boards.pseries, ("ppc64",), ("ppc_spapr.ram",)),
    Family("s390-ccw-virtio", r"^s390-ccw-virtio", boards.s390_ccw, ("s390x",), ("s390.ram",)),
    Family(
        "riscv virt",
        r"^virt$",
        boards.riscv_virt,
        ("riscv64", "riscv32"),
        ("riscv_virt_board.ram", "riscv_virt_board.mrom"),
    ),
    Family(
        "loongarch virt", r"^virt$", boards.loongarch_virt, ("loongarch64",), ("loongarch.ram",)
    ),
    Family("arm virt", r"^virt(-\d.*)?$", boards.arm_virt, ("aarch64", "arm"), ("mach-virt.ram",)),
]


@dataclass
class MemoryMap:
    """The layout of one stream: ranges by guest-physical address."""

    machine: str | None
    family: str | None
    ranges: list[Range]
    #: RAM blocks that back no guest-physical range (and why, when known)
    unmapped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Pages per block that no record gave (they read as zeros).
    missing: dict[str, int] = field(default_factory=dict)
    #: Parts of the layout assumed, not derived from the stream.
    guesses: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "family": self.family,
            "ranges": [r.to_json() for r in self.ranges],
            "unmapped_blocks": self.unmapped,
            "notes": self.notes,
            "guesses": self.guesses,
            "missing_pages": self.missing,
        }


def _evidence(ctx: Context, f: Family) -> str | None:
    """What in the stream points to ``f`` (its RAM blocks, its chipset), or None."""
    blocks = [b for b in f.blocks if b in ctx.blocks]
    if not blocks:
        return None
    if f.sections:
        names = (d.name for d in ctx.mig.devices())
        found = [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in f.sections)]
        if not found:
            return None
        return f"RAM block {blocks[0]!r} and section {found[0]!r}"
    return f"RAM block {blocks[0]!r}"


def family_for(ctx: Context) -> Family | None:
    """The family of the stream's machine: by machine type and CPU architecture.

    Where the stream names no machine type (no configuration section: machine
    types up to 2.3, or ``send-configuration=off``) or names one several boards
    share (``virt``) and the architecture is not known (no description), the
    board's RAM blocks and chipset decide, and that is recorded as a guess.
    """
    machine, arch = ctx.machine, ctx.arch()
    fams = [f for f in FAMILIES if arch is None or arch in f.arches]
    if machine:
        fams = [f for f in fams if re.search(f.machine, machine)]
        if len(fams) == 1:
            return fams[0]
        why = f"machine {machine!r}, CPU architecture unknown (no description)"
    else:
        why = "no machine type in the stream (no configuration section)"
    if arch is not None:
        why += f", {arch} CPU"
    for f in fams:
        evidence = _evidence(ctx, f)
        if evidence is not None:
            ctx.guess(f"{why}: taken as {f.name} from its {evidence}")
            return f
    return None


def _default_reader(mig: Migration) -> Callable[[str, int, int], bytes]:
    index = mig.page_index
    return lambda name, off, n: index.read(name, off, n)


def layout(
    mig: Migration,
    overrides: str | list[str] | list[tuple[str, int, int, int | None]] | None = None,
    *,
    read: Callable[[str, int, int], bytes] | None = None,
) -> MemoryMap:
    """The guest-physical layout of ``mig``'s RAM blocks.

    ``overrides`` is ``--map`` text (``BLOCK=GPA[+OFFSET:LEN],...``) or parsed
    tuples; ``read(block, offset, length)`` reads block bytes (by default
    from the page index, so open the stream with ``index_ram=True``).
    Raises :class:`~qevm.errors.UsageError` for an unknown machine without
    overrides, or overrides naming blocks the stream does not have.
    """
    blocks = {b.name: b.used_length for b in mig.ram_blocks}
    ctx = Context(mig, blocks, read or _default_reader(mig))
    items = (
        overrides
        if isinstance(overrides, list) and overrides and isinstance(overrides[0], tuple)
        else parse_overrides(overrides)  # type: ignore[arg-type]
    )
    fam = family_for(ctx)
    painter = Painter()
    if fam is not None:
        fam.build(ctx, painter)
    elif not items:
        arch = ctx.arch()
        what = f"machine {mig.machine!r}" if mig.machine else "a machine whose type the stream "
        if not mig.machine:
            what += "does not name"
        raise UsageError(
            f"qevm does not know the memory layout of {what}"
            + (f" ({arch} CPU)" if arch else "")
            + f"; give it with --map BLOCK=GPA[+OFFSET:LEN] (blocks: {', '.join(blocks)})"
        )
    if items:
        _apply_overrides(painter, blocks, items)  # type: ignore[arg-type]
    ranges = painter.ranges()
    used = {r.block for r in ranges}
    unmapped = [b for b in blocks if b not in used]
    for b in mig.ram_blocks:
        if not b.in_stream and b.name in used:
            ctx.notes.append(f"{b.name} is not in the stream (x-ignore-shared): reads as zeros")
    try:
        missing = mig.missing_pages()
    except UsageError:  # RAM read through ``read`` only: nothing counted
        missing = {}
    fam_name = fam.name if fam else None
    return MemoryMap(mig.machine, fam_name, ranges, unmapped, ctx.notes, missing, ctx.guesses)


def _apply_overrides(
    painter: Painter, blocks: dict[str, int], items: list[tuple[str, int, int, int | None]]
) -> None:
    named = {name for name, *_ in items}
    for name in named:
        if name not in blocks:
            raise UsageError(f"--map names block {name!r}; blocks: {', '.join(blocks)}")
    # the block's derived ranges go; the given ones replace them
    for r in painter.ranges():
        if r.block in named:
            painter.cut(r.gpa, r.size)
    for name, gpa, offset, length in items:
        size = blocks[name]
        n = size - offset if length is None else length
        if offset + n > size or n <= 0:
            raise UsageError(
                f"--map {name}={gpa:#x}+{offset:#x}:{n:#x} is outside the block ({size:#x} bytes)"
            )
        painter.paint(Range(gpa, n, name, offset, "--map"))


__all__ = ["FAMILIES", "Family", "MemoryMap", "Range", "layout", "parse_overrides"]
