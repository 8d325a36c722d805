"""The I/O APIC's redirection table (``vmstate_ioapic_common``, hw/intc/ioapic_common.c).

Each entry is shown raw and decoded the way ``info pic`` prints it
(``ioapic_print_redtbl()``): destination (8 bits in logical mode, 4 in
physical), vector, polarity, trigger, mask, delivery mode, destination
mode; IRR from the chip's ``irr`` and remote IRR from level-triggered
entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .registry import Context, register

if TYPE_CHECKING:
    from ..migration import Device
    from ..vmstate.values import StateNode

DELIVERY = ["fixed", "lowest", "SMI", "...", "NMI", "INIT", "...", "extINT"]
REG_REDTBL_BASE = 0x10


def decode_entry(entry: int) -> dict[str, Any]:
    logical = bool(entry & 0x800)
    return {
        "entry": entry,
        "vector": entry & 0xFF,
        "delivery_mode": DELIVERY[(entry >> 8) & 7],
        "dest_mode": "logical" if logical else "physical",
        "delivery_status": bool(entry & 0x1000),
        "polarity": "active-lo" if entry & 0x2000 else "active-hi",
        "remote_irr": bool(entry & 0x4000) and bool(entry & 0x8000),
        "trigger": "level" if entry & 0x8000 else "edge",
        "masked": bool(entry & 0x10000),
        "dest": (entry >> 56) & (0xFF if logical else 0xF),
    }


@dataclass
class Ioapic:
    section: str
    instance_id: int
    apic_id: int
    ioregsel: int
    irr: int
    entries: list[int]

    def pins(self) -> list[dict[str, Any]]:
        out = []
        for i, e in enumerate(self.entries):
            d = {"ioapic": self.instance_id, "pin": i, **decode_entry(e)}
            d["irr"] = bool(self.irr >> i & 1)
            out.append(d)
        return out

    def to_json(self) -> list[dict[str, Any]]:
        """One dict per pin (the chip's id and register select on each)."""
        return [{**p, "ioapic_id": self.apic_id, "ioregsel": self.ioregsel} for p in self.pins()]

    def format(self) -> list[str]:
        sel = f"sel={self.ioregsel:#04x}"
        if self.ioregsel >= REG_REDTBL_BASE:
            sel += f" (redir[{(self.ioregsel - REG_REDTBL_BASE) >> 1}])"
        lines = [f"ioapic{self.instance_id}: id={self.apic_id:#04x} {sel}  [{self.section}]"]
        for p in self.pins():
            lines.append(
                f"  pin {p['pin']:<2} {p['entry']:#018x} dest={p['dest']:x} vec={p['vector']:<3} "
                f"{p['polarity']} {p['trigger']:<5} {'masked' if p['masked'] else '':<6} "
                f"{p['delivery_mode']:<6} {p['dest_mode']}"
            )
        irr = [str(i) for i in range(len(self.entries)) if self.irr >> i & 1]
        rirr = [str(p["pin"]) for p in self.pins() if p["remote_irr"]]
        lines.append(f"  IRR        {' '.join(irr) or '(none)'}")
        lines.append(f"  Remote IRR {' '.join(rirr) or '(none)'}")
        return lines


@register("ioapic", "kvm-ioapic")
def decode_ioapic(dev: Device, state: StateNode, ctx: Context) -> None:
    entries = [int(e) for e in state.get("ioredtbl", [])]
    ctx.add(
        "ioapic",
        Ioapic(
            dev.name,
            dev.instance_id,
            state.get("id", 0),
            state.get("ioregsel", 0),
            state.get("irr", 0),
            entries,
        ),
    )
