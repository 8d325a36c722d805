"""What every architecture module shares: the registry and field accessors.

An architecture module registers an :class:`Arch`: ``detect`` looks at a
decoded ``cpu`` section and names the architecture (or returns None when the
section is not one of its own), ``decode`` turns the section into named
registers and ``format`` lays them out as text lines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ...vmstate.values import StateNode


@dataclass
class CpuSection:
    """One CPU as the stream has it: its ``cpu`` section and related sections."""

    index: int
    state: StateNode
    machine: str | None = None
    #: Other decoded sections that belong to this CPU, by section name
    #: (``apic`` on x86).
    peers: dict[str, StateNode] = field(default_factory=dict)


@dataclass(frozen=True)
class Arch:
    """An architecture family: how to recognise, decode and print its CPUs."""

    family: str
    #: The architecture names ``detect`` can return.
    arches: tuple[str, ...]
    detect: Callable[[CpuSection], str | None]
    decode: Callable[[CpuSection, str], dict[str, Any]]
    format: Callable[[dict[str, Any], str], list[str]]


#: Registered architecture families, tried in order.
REGISTRY: list[Arch] = []


def register(arch: Arch) -> Arch:
    """Add ``arch`` to the registry."""
    REGISTRY.append(arch)
    return arch


def family_of(arch: str) -> Arch:
    """The registered family that decodes ``arch``."""
    for fam in REGISTRY:
        if arch in fam.arches:
            return fam
    raise KeyError(arch)


def field_index(node: StateNode) -> dict[str, Any]:
    """Every field of ``node`` and of its subsections (nested too), by name.

    The first field with a name wins: QEMU repeats a name only for different
    slices of one array (x86 ``env.xmm_regs[0]``), which callers pick by
    their struct type instead.
    """
    out: dict[str, Any] = {}

    def add(n: StateNode) -> None:
        for f in n.fields:
            out.setdefault(f.desc.name, n.get(f.desc.name))
        for s in n.subsections:
            add(s.node)

    add(node)
    return out


def nodes(node: StateNode) -> Iterator[StateNode]:
    """``node`` and its subsections (nested too), not struct elements."""
    yield node
    for s in node.subsections:
        yield from nodes(s.node)


def be_int(value: Any) -> int:
    """An opaque big-endian field (``bytes``) or an integer, as an integer."""
    if isinstance(value, (bytes, bytearray)):
        return int.from_bytes(value, "big")
    return int(value)


def unsigned(value: int, bits: int = 64) -> int:
    """``value`` as an unsigned integer of ``bits`` bits (signed fields wrap)."""
    return value & ((1 << bits) - 1)


def hexw(value: int, digits: int) -> str:
    """``value`` as zero-padded lower-case hex."""
    return f"{value:0{digits}x}"


def grid(items: Iterable[tuple[str, Any]], per_line: int, digits: int, sep: str = "=") -> list[str]:
    """``NAME=value`` cells, ``per_line`` to a line, integers as hex of ``digits``."""
    cells = [f"{name}{sep}{hexw(v, digits) if isinstance(v, int) else v}" for name, v in items]
    return [" ".join(cells[i : i + per_line]) for i in range(0, len(cells), per_line)]
