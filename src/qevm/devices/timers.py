"""Timers: HPET (hw/timer/hpet.c), the 8254 PIT (hw/timer/i8254_common.c) and the
MC146818 RTC (hw/rtc/mc146818rtc.c) with its date and time from CMOS."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .registry import Context, register

if TYPE_CHECKING:
    from ..migration import Device
    from ..vmstate.values import StateNode

HPET_PERIOD_NS = 10  # HPET_CLK_PERIOD: QEMU's HPET counts at 100 MHz
PIT_FREQ = 1193182
PIT_MODES = [
    "interrupt on terminal count",
    "hardware one-shot",
    "rate generator",
    "square wave",
    "software strobe",
    "hardware strobe",
    "rate generator",
    "square wave",
]


@dataclass
class Simple:
    """A decoded device whose facts are one dict and its text lines."""

    section: str
    instance_id: int
    facts: dict[str, Any]
    lines: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"section": self.section, "instance_id": self.instance_id, **self.facts}

    def format(self) -> list[str]:
        return self.lines


@register("hpet")
def decode_hpet(dev: Device, state: StateNode, ctx: Context) -> None:
    cfg = state.get("config", 0)
    timers = []
    lines = [
        f"{dev.name}: {'enabled' if cfg & 1 else 'disabled'}"
        f"{', legacy replacement route' if cfg & 2 else ''}  counter {state.get('hpet_counter', 0)}"
        f" ({state.get('hpet_counter', 0) * HPET_PERIOD_NS / 1e9:.3f} s at 100 MHz)"
        f"  isr {state.get('isr', 0):#x}"
    ]
    for t in state.get("timer", []) or []:
        tc = t.get("config", 0)
        d = {
            "index": t.get("tn", 0),
            "config": tc,
            "interrupt_enabled": bool(tc & 0x4),
            "periodic": bool(tc & 0x8),
            "level_triggered": bool(tc & 0x2),
            "mode_32bit": bool(tc & 0x100),
            "route": (tc >> 9) & 0x1F,
            "fsb": bool(tc & 0x4000),
            "comparator": t.get("cmp", 0),
            "period": t.get("period", 0),
        }
        timers.append(d)
        lines.append(
            f"  timer {d['index']}: {'enabled' if d['interrupt_enabled'] else 'disabled'}"
            f" {'periodic' if d['periodic'] else 'one-shot'}"
            f" {'level' if d['level_triggered'] else 'edge'}"
            f" route IRQ{d['route']}{' FSB' if d['fsb'] else ''} cmp {d['comparator']}"
            f" period {d['period']}"
        )
    facts = {
        "config": cfg,
        "enabled": bool(cfg & 1),
        "legacy_route": bool(cfg & 2),
        "isr": state.get("isr", 0),
        "counter": state.get("hpet_counter", 0),
        "num_timers": state.get("num_timers_save", len(timers)),
        "timers": timers,
    }
    ctx.add("hpet", Simple(dev.name, dev.instance_id, facts, lines))


@register("i8254", "pit-common", "kvm-pit")
def decode_pit(dev: Device, state: StateNode, ctx: Context) -> None:
    chans = []
    lines = [f"{dev.name}:"]
    for i, ch in enumerate(state.get("channels", []) or []):
        count = ch.get("count", 0) & 0x1FFFF
        mode = ch.get("mode", 0)
        d = {
            "channel": i,
            "count": count,
            "mode": mode,
            "mode_name": PIT_MODES[mode & 7],
            "bcd": bool(ch.get("bcd", 0)),
            "gate": ch.get("gate", 0),
            "rw_mode": ch.get("rw_mode", 0),
            "frequency_hz": round(PIT_FREQ / count, 3) if count else None,
            "count_load_time": ch.get("count_load_time", 0),
        }
        chans.append(d)
        freq = f"{d['frequency_hz']} Hz" if d["frequency_hz"] else "-"
        lines.append(
            f"  channel {i}: mode {mode} ({d['mode_name']}) count {count} ({freq}) "
            f"gate {d['gate']}{' BCD' if d['bcd'] else ''}"
        )
    facts = {"irq_disabled": state.get("channels[0].irq_disabled", 0), "channels": chans}
    ctx.add("pit", Simple(dev.name, dev.instance_id, facts, lines))


def _bcd(v: int, binary: bool) -> int:
    return v if binary else (v >> 4) * 10 + (v & 0xF)


def cmos_datetime(cmos: bytes) -> tuple[dict[str, Any], str | None]:
    """The date and time in the CMOS registers (register B says BCD or binary, 12/24 h).

    Returns the fields and an ISO 8601 text (None when they are not a valid date).
    """
    b = cmos[0x0B]
    binary = bool(b & 0x04)
    h24 = bool(b & 0x02)
    hour_raw = cmos[0x04]
    hour = _bcd(hour_raw & 0x7F, binary)
    if not h24:
        hour = hour % 12 + (12 if hour_raw & 0x80 else 0)
    fields = {
        "second": _bcd(cmos[0x00], binary),
        "minute": _bcd(cmos[0x02], binary),
        "hour": hour,
        "day_of_week": _bcd(cmos[0x06], binary),
        "day": _bcd(cmos[0x07], binary),
        "month": _bcd(cmos[0x08], binary),
        "year": _bcd(cmos[0x32], binary) * 100 + _bcd(cmos[0x09], binary),
        "bcd": not binary,
        "24h": h24,
    }
    try:
        dt = datetime.datetime(
            fields["year"],
            fields["month"],
            fields["day"],
            fields["hour"],
            fields["minute"],
            fields["second"],
        )
    except ValueError:
        return fields, None
    return fields, dt.isoformat()


@register("mc146818rtc")
def decode_rtc(dev: Device, state: StateNode, ctx: Context) -> None:
    cmos = state.get("cmos_data", b"")
    if not isinstance(cmos, (bytes, bytearray)) or len(cmos) < 0x40:
        return
    fields, text = cmos_datetime(bytes(cmos))
    b = cmos[0x0B]
    facts: dict[str, Any] = {
        "datetime": text,
        **fields,
        "reg_a": cmos[0x0A],
        "reg_b": b,
        "reg_c": cmos[0x0C],
        "reg_d": cmos[0x0D],
        "periodic_interrupt": bool(b & 0x40),
        "alarm_interrupt": bool(b & 0x20),
        "update_interrupt": bool(b & 0x10),
        "base_rtc": state.get("base_rtc"),
        "offset": state.get("offset"),
        "cmos_index": state.get("cmos_index"),
    }
    base = state.get("base_rtc")
    if isinstance(base, int) and 0 < base < 1 << 40:
        when = datetime.datetime.fromtimestamp(base, datetime.timezone.utc)
        facts["base_rtc_datetime"] = when.replace(tzinfo=None).isoformat()
    irqs = [n for bit, n in ((0x40, "periodic"), (0x20, "alarm"), (0x10, "update")) if b & bit]
    lines = [
        f"{dev.name}: {text or 'invalid date'} (CMOS time registers, "
        f"{'BCD' if fields['bcd'] else 'binary'}, {'24' if fields['24h'] else '12'} h)"
        f"  interrupts: {', '.join(irqs) or 'none'}",
        f"  reg A {cmos[0x0A]:#04x}  B {b:#04x}  C {cmos[0x0C]:#04x}  D {cmos[0x0D]:#04x}"
        + (f"  base {facts['base_rtc_datetime']} UTC" if "base_rtc_datetime" in facts else ""),
    ]
    ctx.add("rtc", Simple(dev.name, dev.instance_id, facts, lines))
