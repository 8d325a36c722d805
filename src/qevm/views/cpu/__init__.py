"""Named CPU registers from the decoded ``cpu`` sections of a stream.

>>> from qevm.views.cpu import cpus
>>> with qevm.open("vm.mig") as mig:
...     for cpu in cpus(mig):
...         print(cpu.index, cpu.arch, hex(cpu.registers["rip"]))

Every CPU has a ``cpu`` section (instance id = QEMU's ``cpu_index``) whose
VMSD is the target's own (target/*/machine.c).  The architecture is
recognised from the fields that VMSD has; one module per architecture family
names the registers (see :mod:`.base` for the registry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import DescriptionError, UsageError
from ...migration import Migration
from ...vmstate.values import StateNode
from . import arm, loongarch, ppc, riscv, s390x, x86  # noqa: F401 - each registers itself
from .base import REGISTRY, Arch, CpuSection, family_of

#: Sections that carry per-CPU state besides ``cpu``, paired with CPUs by order.
_PEERS = ("apic",)


@dataclass
class CpuState:
    """The registers of one CPU."""

    index: int
    arch: str
    registers: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """``{"index", "arch", "registers"}``; composite registers stay dicts."""
        return {"index": self.index, "arch": self.arch, "registers": self.registers}

    def format(self) -> list[str]:
        """The registers as readable text lines, grouped like ``info registers``."""
        return family_of(self.arch).format(self.registers, self.arch)


def cpus(mig: Migration) -> list[CpuState]:
    """Every CPU of the stream, by index.

    Raises :class:`~qevm.errors.DescriptionError` when the stream has ``cpu``
    sections but no description to decode them with, and
    :class:`~qevm.errors.UsageError` when it has no ``cpu`` section or one of
    an architecture qevm does not know.
    """
    found = mig.devices("cpu")
    # Sections that could not be read (``strict=False``) carry their error; the others count.
    sections = [d for d in found if d.error is None]
    if not sections:
        if found:
            raise UsageError(f"none of the {len(found)} 'cpu' sections could be read")
        raise UsageError("the stream has no 'cpu' section (no CPU state was migrated)")
    if any(d.state is None for d in sections):
        why = (
            "the stream has no JSON description (postcopy streams have none)"
            if mig.description is None
            else "the JSON description does not describe its 'cpu' sections"
        )
        raise DescriptionError(
            f"{why}, so its CPU state cannot be decoded; give one with --desc FILE "
            "(another stream of the same QEMU build and machine, or saved `qevm desc` output)"
        )
    peers = {name: _by_order(mig, name, len(sections)) for name in _PEERS}
    out = []
    for pos, dev in enumerate(sorted(sections, key=lambda d: d.instance_id)):
        state = dev.state
        assert state is not None
        section = CpuSection(
            index=dev.instance_id,
            state=state,
            machine=mig.machine,
            peers={k: v[pos] for k, v in peers.items() if v is not None},
        )
        arch, family = _recognise(section)
        try:
            registers = family.decode(section, arch)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            # a description whose 'cpu' fields have other types or shapes than the
            # architecture's VMSD (hand-made or damaged)
            raise DescriptionError(
                f"cpu {dev.instance_id}: the description of the 'cpu' section does not "
                f"have the fields of a {arch} CPU ({type(e).__name__}: {e})",
                offset=dev.record.body_offset,
                section="cpu",
            ) from None
        out.append(CpuState(dev.instance_id, arch, registers))
    return out


def _by_order(mig: Migration, name: str, count: int) -> list[StateNode] | None:
    """The decoded ``name`` sections, one per CPU in instance order, if they pair up."""
    found = sorted((d for d in mig.devices(name) if d.error is None), key=lambda d: d.instance_id)
    states = [d.state for d in found]
    if len(states) != count or any(s is None for s in states):
        return None
    return states  # type: ignore[return-value]


def _recognise(section: CpuSection) -> tuple[str, Arch]:
    for family in REGISTRY:
        try:
            arch = family.detect(section)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError):
            arch = None  # fields of the family's names, of other types: not its CPU
        if arch is not None:
            return arch, family
    names = ", ".join(f.desc.name for f in section.state.fields[:6])
    raise UsageError(
        f"cpu {section.index}: the 'cpu' section (machine {section.machine or 'unknown'}) "
        f"is of an architecture qevm does not know (VMSD fields {names}, ...)"
    )


__all__ = ["CpuState", "cpus"]
