"""The decoder registry: which function decodes which device section.

A decoder is registered for VMSD names (``@register("apic", "kvm-apic")``),
or for a field type found anywhere in a section's state
(``@register_field("pci config")``: every PCI device).  It is called as
``decoder(device, state, ctx)`` with the :class:`~qevm.migration.Device`,
its decoded :class:`~qevm.vmstate.values.StateNode` and a :class:`Context`,
and adds what it decoded to the report with ``ctx.add(kind, item)``; an item
has ``section``, ``instance_id``, ``to_json()`` and ``format()`` (text
lines).  Adding a device is adding one small module that registers itself
(and is imported by :mod:`qevm.devices`); a QevmError it raises becomes a
warning naming the section, and the other sections are still decoded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..migration import Device, Migration
    from ..vmstate.values import StateNode
    from .guestmem import GuestMemory


class Item(Protocol):
    section: str

    def to_json(self) -> dict[str, Any]: ...

    def format(self) -> list[str]: ...


#: report kinds in the order ``qevm devices`` shows them (JSON keys)
KINDS = ("pci", "virtio", "lapic", "ioapic", "pic", "hpet", "pit", "rtc", "nic", "serial")


@dataclass
class Context:
    """What a decoder may use besides its section."""

    mig: Migration
    #: guest-physical memory (None when RAM was not indexed or the board is unknown)
    memory: GuestMemory | None
    #: why :attr:`memory` is None
    memory_note: str | None = None
    items: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in KINDS})
    warnings: list[str] = field(default_factory=list)
    #: scratch space shared by decoders (e.g. the virtual clock for the APIC timer)
    cache: dict[str, Any] = field(default_factory=dict)

    def add(self, kind: str, item: Any) -> None:
        self.items.setdefault(kind, []).append(item)

    def state(self, name: str, instance_id: int = 0) -> StateNode | None:
        """The decoded state of another section (``timer``, ``cpu``...)."""
        for d in self.mig.devices(name):
            if d.instance_id == instance_id:
                return d.state
        return None

    @property
    def big_endian_target(self) -> bool:
        """Whether the guest's CPUs are big-endian by default (virtio legacy byte order)."""
        m = (self.mig.machine or "").lower()
        return m.startswith(("pseries", "s390", "mac99", "g3beige", "ppce500", "40p"))


Decoder = Callable[["Device", "StateNode", Context], None]

BY_VMSD: dict[str, Decoder] = {}
BY_FIELD: dict[str, Decoder] = {}


def register(*vmsd_names: str) -> Callable[[Decoder], Decoder]:
    """Register a decoder for sections whose VMSD is one of ``vmsd_names``."""

    def deco(fn: Decoder) -> Decoder:
        for n in vmsd_names:
            BY_VMSD[n] = fn
        return fn

    return deco


def register_field(field_type: str) -> Callable[[Decoder], Decoder]:
    """Register a decoder for sections that hold a field of ``field_type``."""

    def deco(fn: Decoder) -> Decoder:
        BY_FIELD[field_type] = fn
        return fn

    return deco


def field_types(state: StateNode) -> set[str]:
    """Every field type used in a section's state (nested structs and subsections too)."""
    out = set()
    for node in state.walk():
        for f in node.fields:
            out.add(f.desc.type)
    return out
