"""One PCI function: where it sits, its configuration space and what it means.

Every PCI device migrates its configuration space (``vmstate_pci_device``:
a ``pci config`` field of 256 bytes, 4096 for PCI Express), its INTx levels
(``pci irq state``) and, with MSI-X, its vector table (``msix state``, or
``msix_save()`` inside a virtio section).  The section name is QEMU's device
path: the root bus (``0000:00``, or another root's name such as
``pci@800000020000000``) then ``:slot.function`` for every bridge on the way
and for the device itself; bus numbers come from the bridges' secondary bus
registers, as the guest's firmware programmed them.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Any

from . import caps, express, header
from .header import Bar, u16

_PATH = re.compile(r"^(?P<root>.*?)(?P<slots>(?::[0-9a-fA-F]{2}\.[0-7])+)$")
_ROOT = re.compile(r"^(?P<domain>[0-9a-fA-F]{4}):(?P<bus>[0-9a-fA-F]{2})$")


@dataclass
class DevicePath:
    """A PCI device path as QEMU's ``pcibus_get_dev_path()`` writes it."""

    root: str
    #: (slot, function) of every bridge from the root, then of the device
    hops: list[tuple[int, int]]
    domain: int | None
    root_bus: int

    @property
    def slot(self) -> int:
        return self.hops[-1][0]

    @property
    def function(self) -> int:
        return self.hops[-1][1]

    def parent(self) -> str | None:
        """The path of the bridge the device sits behind (None on a root bus)."""
        if len(self.hops) < 2:
            return None
        return self.root + "".join(f":{s:02x}.{f:x}" for s, f in self.hops[:-1])

    def __str__(self) -> str:
        return self.root + "".join(f":{s:02x}.{f:x}" for s, f in self.hops)


def parse_path(idstr: str) -> DevicePath | None:
    """The PCI path at the start of a section name (``0000:00:1c.0:00.0/virtio-net``)."""
    m = _PATH.match(idstr.split("/", 1)[0])
    if not m:
        return None
    hops = [
        (int(s, 16), int(f, 16))
        for s, f in re.findall(r":([0-9a-fA-F]{2})\.([0-7])", m.group("slots"))
    ]
    root = m.group("root")
    r = _ROOT.match(root)
    domain = int(r.group("domain"), 16) if r else None
    bus = int(r.group("bus"), 16) if r else 0
    return DevicePath(root, hops, domain, bus)


@dataclass
class PciFunction:
    """A PCI function found in the stream, with its configuration space."""

    section: str
    instance_id: int
    path: DevicePath
    config: bytes
    #: offset of the config bytes in the stream
    config_offset: int | None = None
    #: INTx pin levels (``pci irq state``), when saved
    irq_state: list[int] | None = None
    #: the MSI-X vector table and pending bits, as saved
    msix_table: bytes | None = None
    msix_pba: bytes | None = None
    #: bus number (from the bridges above; filled in by :func:`assign_buses`)
    bus: int | None = None
    #: known sizes of BARs (index -> bytes) from RAM blocks behind them
    bar_sizes: dict[int, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    # -- identity ---------------------------------------------------------------
    @property
    def slot(self) -> int:
        return self.path.slot

    @property
    def function(self) -> int:
        return self.path.function

    @property
    def address(self) -> str:
        """``bus:slot.function`` as lspci prints it (``??`` for an unknown bus)."""
        bus = f"{self.bus:02x}" if self.bus is not None else "??"
        return f"{bus}:{self.slot:02x}.{self.function:x}"

    @property
    def vendor_id(self) -> int:
        return u16(self.config, header.VENDOR_ID)

    @property
    def device_id(self) -> int:
        return u16(self.config, header.DEVICE_ID)

    @property
    def class_code(self) -> int:
        """The 16-bit class (base class and subclass), as ``info pci`` shows it."""
        return u16(self.config, header.CLASS_DEVICE)

    @property
    def prog_if(self) -> int:
        return self.config[header.CLASS_PROG]

    @property
    def revision(self) -> int:
        return self.config[header.REVISION_ID]

    @property
    def header_type(self) -> int:
        return header.header_type(self.config)

    @property
    def is_bridge(self) -> bool:
        return self.header_type == header.HEADER_TYPE_BRIDGE

    @property
    def is_express(self) -> bool:
        return len(self.config) >= 4096

    @property
    def subsystem(self) -> tuple[int, int] | None:
        """Subsystem vendor and id: the header's (type 0) or the SSVID capability's."""
        if self.header_type == header.HEADER_TYPE_NORMAL:
            return (
                u16(self.config, header.SUBSYSTEM_VENDOR_ID),
                u16(self.config, header.SUBSYSTEM_ID),
            )
        pos = caps.find(self.config, caps.CAP_SSVID)
        if pos is not None:
            return u16(self.config, pos + 4), u16(self.config, pos + 6)
        return None

    @property
    def command(self) -> int:
        return u16(self.config, header.COMMAND)

    @property
    def status(self) -> int:
        return u16(self.config, header.STATUS)

    @property
    def interrupt_line(self) -> int:
        return self.config[header.INTERRUPT_LINE]

    @property
    def interrupt_pin(self) -> str | None:
        """``A``-``D`` (None: the function uses no INTx pin)."""
        pin = self.config[header.INTERRUPT_PIN]
        return chr(ord("A") + pin - 1) if 1 <= pin <= 4 else None

    # -- resources --------------------------------------------------------------
    def bars(self) -> list[Bar]:
        out = header.bars(self.config)
        for b in out:
            b.size = self.bar_sizes.get(b.index)
        return out

    def rom(self) -> Bar | None:
        return header.rom_bar(self.config, self.bar_sizes.get(6))

    def capabilities(self) -> list[dict[str, Any]]:
        out = caps.decode_all(self.config)
        for c in out:
            if c["id"] == caps.CAP_MSIX:
                c["entries"] = self.msix_entries(c["table_size"])
        return out

    def extended_capabilities(self) -> list[dict[str, Any]]:
        return express.decode_ext_all(self.config)

    def msix_entries(self, count: int | None = None) -> list[dict[str, Any]] | None:
        """The saved MSI-X vector table: address, data, masked per entry."""
        table = self.msix_table
        if table is None:
            return None
        n = len(table) // 16 if count is None else min(count, len(table) // 16)
        pba = self.msix_pba or b""
        out = []
        for i in range(n):
            lo, hi, data, ctrl = struct.unpack_from("<IIII", table, 16 * i)
            pending = bool(pba[i // 8] >> (i % 8) & 1) if i // 8 < len(pba) else False
            out.append(
                {
                    "index": i,
                    "address": lo | (hi << 32),
                    "data": data,
                    "masked": bool(ctrl & 1),
                    "pending": pending,
                }
            )
        return out

    def format(self) -> list[str]:
        """Text lines in the style of ``lspci -vv``."""
        from .text import format_function

        return format_function(self)

    def to_json(self) -> dict[str, Any]:
        from .ids import database

        ids = database()
        sub = self.subsystem
        out: dict[str, Any] = {
            "section": self.section,
            "instance_id": self.instance_id,
            "path": str(self.path),
            "domain": self.path.domain,
            "bus": self.bus,
            "slot": self.slot,
            "function": self.function,
            "vendor_id": self.vendor_id,
            "device_id": self.device_id,
            "vendor": ids.vendor(self.vendor_id),
            "device": ids.device(self.vendor_id, self.device_id),
            "subsystem_vendor_id": sub[0] if sub else None,
            "subsystem_id": sub[1] if sub else None,
            "subsystem": ids.subsystem(self.vendor_id, self.device_id, *sub) if sub else None,
            "class": self.class_code,
            "class_name": ids.subclass_name(self.class_code >> 8, self.class_code & 0xFF),
            "prog_if": self.prog_if,
            "revision": self.revision,
            "header_type": self.header_type,
            "multifunction": bool(self.config[header.HEADER_TYPE] & 0x80),
            "express": self.is_express,
            "command": self.command,
            "command_bits": header.flag_names(self.command, header.COMMAND_BITS),
            "status": self.status,
            "status_bits": header.flag_names(self.status, header.STATUS_BITS),
            "irq": self.interrupt_line,
            "pin": self.interrupt_pin,
        }
        if self.irq_state is not None:
            out["irq_state"] = self.irq_state
        out["bars"] = [b.to_json() for b in self.bars()]
        rom = self.rom()
        out["rom"] = rom.to_json() if rom is not None else None
        if self.is_bridge:
            out["bridge"] = {
                **header.bridge_buses(self.config),
                "windows": header.bridge_windows(self.config),
                "control": u16(self.config, header.BRIDGE_CONTROL),
            }
        out["capabilities"] = self.capabilities()
        if self.is_express:
            out["extended_capabilities"] = self.extended_capabilities()
        if self.notes:
            out["notes"] = self.notes
        return out


def assign_buses(functions: list[PciFunction]) -> None:
    """Fill in bus numbers: a root bus's own number, else the secondary bus
    register of the bridge the function sits behind."""
    by_path = {str(f.path): f for f in functions}

    def bus_of(f: PciFunction, depth: int = 0) -> int | None:
        parent = f.path.parent()
        if parent is None:
            return f.path.root_bus
        bridge = by_path.get(parent)
        if bridge is None or depth > 32 or not bridge.is_bridge:
            f.notes.append(f"bus number unknown: no bridge section for {parent} in the stream")
            return None
        sec = bridge.config[header.SECONDARY_BUS]
        if sec == 0:
            # firmware never numbered the bus: the guest cannot reach the device either
            f.notes.append(f"bus number unknown: bridge {parent} has no secondary bus number")
            return None
        return sec

    for f in functions:
        f.bus = bus_of(f)


def sort_key(f: PciFunction) -> tuple[Any, ...]:
    return (f.path.root, f.bus if f.bus is not None else 256, f.slot, f.function)
