"""The pieces every layout is made of: ranges, the painter, the per-stream context."""

from __future__ import annotations

import bisect
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ...errors import QevmError, UsageError

if TYPE_CHECKING:
    from ...migration import Migration
    from ...vmstate.values import StateNode

GiB = 1 << 30
MiB = 1 << 20
KiB = 1 << 10


@dataclass(frozen=True)
class Range:
    """Guest-physical ``[gpa, gpa + size)`` is bytes ``[offset, offset + size)`` of ``block``."""

    gpa: int
    size: int
    block: str
    offset: int
    #: How qevm knows: the stream's record or QEMU rule the range was derived from.
    source: str
    #: ``ram`` (guest-writable), ``rom`` (read-only to the guest) or ``romd`` (flash).
    kind: str = "ram"

    @property
    def end(self) -> int:
        return self.gpa + self.size

    def to_json(self) -> dict[str, Any]:
        return {
            "gpa": self.gpa,
            "size": self.size,
            "block": self.block,
            "offset": self.offset,
            "kind": self.kind,
            "source": self.source,
        }


class Painter:
    """A flat view being built: later ranges cover what earlier ones mapped there."""

    def __init__(self) -> None:
        self._ranges: list[Range] = []

    def cut(self, gpa: int, size: int) -> None:
        """Unmap ``[gpa, gpa + size)``."""
        end = gpa + size
        out = []
        for r in self._ranges:
            if r.end <= gpa or r.gpa >= end:
                out.append(r)
                continue
            if r.gpa < gpa:
                out.append(replace(r, size=gpa - r.gpa))
            if r.end > end:
                out.append(replace(r, gpa=end, size=r.end - end, offset=r.offset + end - r.gpa))
        self._ranges = out

    def paint(self, r: Range) -> None:
        """Map ``r`` over whatever was there."""
        if r.size <= 0:
            return
        self.cut(r.gpa, r.size)
        bisect.insort(self._ranges, r, key=lambda x: x.gpa)

    def clip(self, r: Range, gpa: int, size: int) -> Range | None:
        """The part of ``r`` inside ``[gpa, gpa + size)``."""
        lo, hi = max(r.gpa, gpa), min(r.end, gpa + size)
        if lo >= hi:
            return None
        return replace(r, gpa=lo, size=hi - lo, offset=r.offset + lo - r.gpa)

    def ranges(self) -> list[Range]:
        """The view, adjacent pieces of one block with one source joined."""
        out: list[Range] = []
        for r in sorted(self._ranges, key=lambda x: x.gpa):
            if out:
                p = out[-1]
                if (
                    p.end == r.gpa
                    and p.block == r.block
                    and p.offset + p.size == r.offset
                    and p.source == r.source
                    and p.kind == r.kind
                ):
                    out[-1] = replace(p, size=p.size + r.size)
                    continue
            out.append(r)
        return out


@dataclass
class Context:
    """What a layout function may look at in one stream."""

    mig: Migration
    #: RAM block name -> used length, in stream order.
    blocks: dict[str, int]
    #: Reads bytes of a block (zeros where the stream has none).
    read: Callable[[str, int, int], bytes]
    notes: list[str] = field(default_factory=list)
    #: What was assumed where the stream does not say (the layout may be wrong there).
    guesses: list[str] = field(default_factory=list)
    _cache: dict[str, Any] = field(default_factory=dict)

    def guess(self, text: str) -> None:
        """Record that a part of the layout is assumed, not derived from the stream."""
        if text not in self.guesses:
            self.guesses.append(text)

    @property
    def machine(self) -> str:
        return self.mig.machine or ""

    def state(self, idstr: str) -> StateNode | None:
        """The decoded state of the first device section named ``idstr`` (a glob)."""
        for d in self.mig.devices():
            if fnmatch.fnmatchcase(d.name, idstr):
                return d.state
        return None

    def block_bytes(self, name: str) -> bytes | None:
        """The whole content of block ``name`` (None when the stream has no such block)."""
        if name not in self.blocks:
            return None
        key = "block:" + name
        if key not in self._cache:
            self._cache[key] = self.read(name, 0, self.blocks[name])
        return self._cache[key]

    def arch(self) -> str | None:
        """The CPU architecture of the stream (None when it cannot be told)."""
        if "arch" not in self._cache:
            from ..cpu import cpus

            try:
                found = cpus(self.mig)
                self._cache["arch"] = found[0].arch if found else None
            except QevmError:
                self._cache["arch"] = None
        return self._cache["arch"]

    def cpu_version(self) -> int | None:
        """The version of the first ``cpu`` section (its VMSD's version_id)."""
        found = self.mig.devices("cpu")
        return found[0].version if found else None


def parse_size(text: str) -> int:
    """An integer in any base, with an optional K/M/G/T suffix (powers of 1024)."""
    t = text.strip()
    mult = 1
    if t and t[-1] in "kKmMgGtT":
        mult = 1 << (10 * ("kmgt".index(t[-1].lower()) + 1))
        t = t[:-1]
    try:
        return int(t, 0) * mult
    except ValueError:
        raise UsageError(f"{text!r} is not a number") from None


def parse_overrides(text: str | list[str] | None) -> list[tuple[str, int, int, int | None]]:
    """``BLOCK=GPA[+OFFSET:LEN],...`` as ``(block, gpa, offset, length or None)`` tuples.

    Without ``+OFFSET:LEN`` the whole block is mapped at GPA.  Several items
    may name the same block (one per range it backs).
    """
    if text is None:
        return []
    items = [text] if isinstance(text, str) else list(text)
    out = []
    for item in ",".join(items).split(","):
        item = item.strip()
        if not item:
            continue
        name, eq, spec = item.rpartition("=")
        if not eq or not name:
            raise UsageError(f"--map item {item!r} is not BLOCK=GPA[+OFFSET:LEN]")
        gpa_s, plus, rest = spec.partition("+")
        offset, length = 0, None
        if plus:
            off_s, colon, len_s = rest.partition(":")
            if not colon:
                raise UsageError(f"--map item {item!r}: give +OFFSET:LEN")
            offset, length = parse_size(off_s), parse_size(len_s)
            if length <= 0:
                raise UsageError(f"--map item {item!r}: LEN must be positive")
        gpa = parse_size(gpa_s)
        if gpa < 0 or offset < 0:
            raise UsageError(f"--map item {item!r}: negative address")
        out.append((name, gpa, offset, length))
    return out
