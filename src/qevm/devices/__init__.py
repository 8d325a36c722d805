"""What device state means: PCI functions, virtio devices, interrupt controllers,
timers, NICs and serial ports, decoded from a stream's device sections.

>>> import qevm
>>> from qevm.devices import decode
>>> with qevm.open("vm.mig", index_ram=True) as mig:
...     report = decode(mig)
...     for f in report.pci:
...         print(f.address, f.section, f.interrupt_pin)
...     for v in report.virtio:
...         print(v.type, v.status_names, [q.used_idx for q in v.queues])
...     print(report.to_json()["lapic"][0]["spiv"])

:func:`decode` runs every registered decoder (see :mod:`.registry`) over the
device sections and returns a :class:`DeviceReport`: lists of items per kind
(``pci``, ``virtio``, ``lapic``, ``ioapic``, ``pic``, ``hpet``, ``pit``,
``rtc``, ``nic``, ``serial``), each with ``to_json()`` and ``format()``.
Virtio rings are read from guest RAM, which needs the page index (open with
``index_ram=True``); without it the rest is decoded and the ring indexes are
left out.  A section that does not decode becomes a warning naming it, the
others are still decoded.

For ``qevm check``: :func:`pci_functions` (functions by device path),
:func:`qevm.devices.pci.qemu_masks` (the config bits QEMU compares on load,
``first_mismatch()`` giving QEMU's own message) and
:meth:`VirtioDevice.ring_sizes`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import QevmError
from . import (  # noqa: F401 - each module registers its decoders
    apic,
    ioapic,
    nics,
    pic,
    serial,
    timers,
)
from . import pci as pci_pkg
from .guestmem import GuestMemory, open_guest_memory
from .pci import PciFunction
from .registry import BY_FIELD, BY_VMSD, KINDS, Context, field_types
from .virtio import VirtioDevice
from .virtio import section as _virtio_section  # noqa: F401 - registers the virtio decoder

if TYPE_CHECKING:
    from ..migration import Migration


@dataclass
class DeviceReport:
    """Everything :func:`decode` found, by kind."""

    machine: str | None
    items: dict[str, list[Any]]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def pci(self) -> list[PciFunction]:
        return self.items["pci"]

    @property
    def virtio(self) -> list[VirtioDevice]:
        return self.items["virtio"]

    @property
    def lapic(self) -> list[Any]:
        return self.items["lapic"]

    @property
    def ioapic(self) -> list[Any]:
        return self.items["ioapic"]

    @property
    def pic(self) -> list[Any]:
        return self.items["pic"]

    @property
    def timers(self) -> list[Any]:
        """HPET, PIT and RTC items."""
        return self.items["hpet"] + self.items["pit"] + self.items["rtc"]

    @property
    def nics(self) -> list[Any]:
        return self.items["nic"]

    @property
    def serial(self) -> list[Any]:
        return self.items["serial"]

    def for_section(self, name: str) -> list[tuple[str, Any]]:
        """``(kind, item)`` decoded from the section ``name``."""
        return [(k, it) for k in self.items for it in self.items[k] if it.section == name]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"machine": self.machine}
        for kind in self.items:
            out[kind] = []
            for it in self.items[kind]:
                j = it.to_json()
                out[kind].extend(j if isinstance(j, list) else [j])
        out["warnings"] = self.warnings
        if self.notes:
            out["notes"] = self.notes
        return out

    def format(self) -> list[str]:
        """The text view: one block per kind, items separated by blank lines."""
        lines: list[str] = []
        titles = {
            "pci": "PCI",
            "virtio": "virtio",
            "lapic": "local APICs",
            "ioapic": "I/O APIC",
            "pic": "8259 PICs",
            "hpet": "HPET",
            "pit": "8254 PIT",
            "rtc": "RTC (MC146818)",
            "nic": "network cards",
            "serial": "serial ports (16550)",
        }
        for kind, items in self.items.items():
            if not items:
                continue
            if lines:
                lines.append("")
            lines.append(f"== {titles.get(kind, kind)}")
            for i, it in enumerate(items):
                if i and kind in ("pci", "virtio", "lapic"):
                    lines.append("")
                lines += it.format()
        for n in self.notes:
            lines.append(f"note: {n}")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        return lines


def decode(
    mig: Migration, *, memory: GuestMemory | None | bool = True, pattern: str | None = None
) -> DeviceReport:
    """Decode the device sections of ``mig``; keep what those matching ``pattern`` gave.

    ``memory``: True reads guest RAM through the page index when the stream
    was opened with ``index_ram=True`` (else the rings are skipped, with a
    note); False never reads it; a :class:`GuestMemory` is used as given.
    """
    note = None
    if memory is True:
        ram = mig.ram
        indexed = ram is not None and getattr(ram.consumer, "tracks_pages", False)
        if indexed:
            mem, note = open_guest_memory(mig)
        else:
            mem, note = None, "RAM was not indexed (open the stream with index_ram=True)"
    elif memory is False or memory is None:
        mem = None
    else:
        mem = memory
    ctx = Context(mig, mem, note)
    for dev in mig.devices():
        state = dev.state
        if state is None:
            continue
        decoders = []
        fn = BY_VMSD.get(state.vmsd_name or "")
        if fn is not None:
            decoders.append(fn)
        types = field_types(state)
        decoders += [f for t, f in BY_FIELD.items() if t in types and f not in decoders]
        for fn in decoders:
            try:
                fn(dev, state, ctx)
            except QevmError as e:
                ctx.warnings.append(f"{dev.name}: not decoded: {e}")
    ctx.items["pci"] = pci_pkg.finish(ctx.items["pci"])
    ctx.items["nic"] = sorted(
        ctx.items["nic"] + nics.virtio_net_nics(ctx.items["virtio"]), key=lambda n: n.section
    )
    items = {k: ctx.items.get(k, []) for k in KINDS}
    for k, v in ctx.items.items():
        items.setdefault(k, v)
    if pattern:
        items = {
            k: [it for it in v if fnmatch.fnmatchcase(it.section, pattern)]
            for k, v in items.items()
        }
        ctx.warnings = [w for w in ctx.warnings if fnmatch.fnmatchcase(w.split(":", 1)[0], pattern)]
    report = DeviceReport(mig.machine, items, ctx.warnings)
    if mig.description is None:
        report.notes.append(
            "the stream has no JSON description: device sections cannot be decoded "
            "(use --desc FILE)"
        )
    return report


def pci_functions(mig: Migration) -> dict[str, PciFunction]:
    """Every PCI function by QEMU device path (``0000:00:1c.0:00.0``), RAM not read.

    The pairing ``qevm check`` needs: a source's and a destination's function
    with the same path are the same device to QEMU.
    """
    return {str(f.path): f for f in decode(mig, memory=False).pci}


__all__ = ["DeviceReport", "GuestMemory", "PciFunction", "VirtioDevice", "decode", "pci_functions"]
