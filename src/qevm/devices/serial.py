"""16550 UART registers (``vmstate_serial``, hw/char/serial.c), for ISA, PCI and
memory-mapped serial ports: the line settings they give (baud rate from the
divisor latch at QEMU's 1.8432 MHz clock, word length, parity, stop bits),
interrupt enables and modem lines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .registry import Context, register

if TYPE_CHECKING:
    from ..migration import Device
    from ..vmstate.values import StateNode

BASE_BAUD = 115200  # 1.8432 MHz / 16
PARITY = {0: "N", 1: "O", 3: "E", 5: "M", 7: "S"}
IIR_ID = {
    0x1: "none",
    0x6: "line status",
    0x4: "received data",
    0xC: "timeout",
    0x2: "THR empty",
    0x0: "modem status",
}  # noqa: E501
IER_BITS = [(0x1, "RDI"), (0x2, "THRI"), (0x4, "RLSI"), (0x8, "MSI")]
MCR_BITS = [(0x1, "DTR"), (0x2, "RTS"), (0x4, "OUT1"), (0x8, "OUT2"), (0x10, "LOOP")]
LSR_BITS = [
    (0x01, "DR"),
    (0x02, "OE"),
    (0x04, "PE"),
    (0x08, "FE"),
    (0x10, "BI"),
    (0x20, "THRE"),
    (0x40, "TEMT"),
    (0x80, "FIFOERR"),
]
MSR_BITS = [(0x10, "CTS"), (0x20, "DSR"), (0x40, "RI"), (0x80, "DCD")]


def _names(value: int, bits: list[tuple[int, str]]) -> list[str]:
    return [n for b, n in bits if value & b]


def line_settings(divider: int, lcr: int) -> dict[str, Any]:
    return {
        "baud": BASE_BAUD // divider if divider else None,
        "data_bits": 5 + (lcr & 3),
        "parity": PARITY.get((lcr >> 3) & 7, "N") if lcr & 0x8 else "N",
        "stop_bits": (1.5 if lcr & 3 == 0 else 2) if lcr & 4 else 1,
        "break": bool(lcr & 0x40),
        "dlab": bool(lcr & 0x80),
    }


@dataclass
class Uart:
    section: str
    instance_id: int
    regs: dict[str, int]

    def facts(self) -> dict[str, Any]:
        r = self.regs
        return {
            **r,
            **line_settings(r["divider"], r["lcr"]),
            "ier_bits": _names(r["ier"], IER_BITS),
            "interrupt": IIR_ID.get(r["iir"] & 0xF, f"{r['iir'] & 0xF:#x}"),
            "fifo_enabled": bool(r["fcr"] & 1),
            "mcr_bits": _names(r["mcr"], MCR_BITS),
            "lsr_bits": _names(r["lsr"], LSR_BITS),
            "msr_bits": _names(r["msr"], MSR_BITS),
        }

    def to_json(self) -> dict[str, Any]:
        return {"section": self.section, "instance_id": self.instance_id, **self.facts()}

    def format(self) -> list[str]:
        f = self.facts()
        stop = f["stop_bits"]
        line = f"{f['baud'] or '?'} {f['data_bits']}{f['parity']}{stop:g}"
        return [
            f"{self.section} #{self.instance_id}: {line}  divisor {f['divider']}"
            f"  FIFO {'on' if f['fifo_enabled'] else 'off'}  IER {' '.join(f['ier_bits']) or '-'}"
            f"  MCR {' '.join(f['mcr_bits']) or '-'}  LSR {' '.join(f['lsr_bits']) or '-'}"
            f"  MSR {' '.join(f['msr_bits']) or '-'}  pending {f['interrupt']}  scr {f['scr']:#04x}"
        ]


_REGS = ("divider", "rbr", "ier", "iir", "lcr", "mcr", "lsr", "msr", "scr")


@register("serial", "pci-serial", "pci-serial-multi", "serial-mm", "serial-isa")
def decode_serial(dev: Device, state: StateNode, ctx: Context) -> None:
    for node in state.walk():
        if node.vmsd_name != "serial" or node.field("divider") is None:
            continue
        regs = {k: int(node.get(k, 0) or 0) for k in _REGS}
        fcr = node.get("fcr_vmstate")
        if fcr is None:
            fcr = node.get("fcr", 0)
        regs["fcr"] = int(fcr or 0)
        ctx.add("serial", Uart(dev.name, dev.instance_id, regs))
