"""Local APIC per CPU (``vmstate_apic_common``, hw/intc/apic_common.c).

Field meanings and the derived values follow what ``info lapic`` prints
(target/i386/cpu-dump.c): the LVT entries, the timer's divide configuration
and current count, SPIV, ICR, ESR, ISR/IRR with TMR, APR/TPR/DFR/LDR/PPR.
The current count is ``apic_get_current_count()`` evaluated at the virtual
clock of the moment the VM stopped (the ``timer`` section's
``cpu_clock_offset``, which QEMU freezes while the VM is stopped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .registry import Context, register

if TYPE_CHECKING:
    from ..migration import Device
    from ..vmstate.values import StateNode

# s->lvt[] indexes (APIC_LVT_*)
LVT_NAMES = ["lvtt", "lvtthmr", "lvtpc", "lvt0", "lvt1", "lvterr"]
DELIVERY = ["Fixed", "...", "SMI", "...", "NMI", "INIT", "...", "ExtINT"]
TIMER_MODES = ["one-shot", "periodic", "tsc-deadline", "reserved"]


def decode_lvt(value: int, is_timer: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "value": value,
        "vector": value & 0xFF,
        "delivery_mode": DELIVERY[(value >> 8) & 7],
        "pending": bool(value & 0x1000),
        "polarity": "active-lo" if value & 0x2000 else "active-hi",
        "remote_irr": bool(value & 0x4000),
        "trigger": "level" if value & 0x8000 else "edge",
        "masked": bool(value & 0x10000),
    }
    if is_timer:
        out["timer_mode"] = TIMER_MODES[(value >> 17) & 3]
    return out


def divide_by(dcr: int) -> int:
    v = ((dcr & 0x8) >> 1) | (dcr & 0x3)
    return 1 if v == 7 else 2 << v


def vectors(words: list[int]) -> list[int]:
    """The vectors set in a 256-bit ISR/IRR/TMR register (eight u32 words)."""
    return [32 * i + b for i, w in enumerate(words) for b in range(32) if w >> b & 1]


def current_count(
    initial: int, load_time: int, shift: int, lvtt: int, now: int | None
) -> int | None:
    """``apic_get_current_count()`` at virtual time ``now``."""
    if now is None or not 0 <= shift < 64:
        return None
    d = (now - load_time) >> shift
    if lvtt & 0x20000:  # periodic
        return initial - (d % (initial + 1))
    return 0 if d >= initial else initial - d


@dataclass
class Lapic:
    section: str
    instance_id: int
    cpu: int | None
    regs: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "cpu": self.cpu,
            "section": self.section,
            "instance_id": self.instance_id,
            **self.regs,
        }

    def format(self) -> list[str]:
        r = self.regs
        cpu = "?" if self.cpu is None else self.cpu
        lines = [
            f"CPU {cpu}  APIC ID {r['apic_id']}  base {r['apicbase']:#x} "
            f"({'enabled' if r['enabled'] else 'disabled'}{', x2APIC' if r['x2apic'] else ''}"
            f"{', BSP' if r['bsp'] else ''})"
        ]
        for name, label in (
            ("lvt0", "LVT0"),
            ("lvt1", "LVT1"),
            ("lvtpc", "LVTPC"),
            ("lvterr", "LVTERR"),
            ("lvtthmr", "LVTTHMR"),
            ("lvtt", "LVTT"),
        ):
            d = r[f"{name}_decoded"]
            mode = f" {d['timer_mode']}" if "timer_mode" in d else ""
            vec = f" vec {d['vector']}" if d["delivery_mode"] != "NMI" else ""
            lines.append(
                f"  {label:8}{d['value']:#010x} {d['polarity']} {d['trigger']}"
                f"{' masked' if d['masked'] else ''}{' pending' if d['pending'] else ''}"
                f"{mode} {d['delivery_mode']}{vec}"
            )
        cc = "?" if r["current_count"] is None else r["current_count"]
        lines.append(
            f"  Timer   DCR={r['dcr']:#x} (divide by {r['divide_by']}) initial_count "
            f"{r['initial_count']} current_count {cc}"
        )
        lines.append(
            f"  SPIV    {r['spiv']:#010x} APIC {'enabled' if r['spiv'] & 0x100 else 'disabled'},"
            f" spurious vec {r['spiv'] & 0xFF}"
        )
        lines.append(f"  ICR     {r['icr']:#010x}  ICR2 {r['icr2']:#010x}  ESR {r['esr']:#010x}")
        for reg in ("isr", "irr"):
            vs = r[reg]
            text = " ".join(f"{v}{'(level)' if v in r['tmr'] else ''}" for v in vs) or "(none)"
            lines.append(f"  {reg.upper():8}{text}")
        lines.append(
            f"  APR {r['apr']:#04x} TPR {r['tpr']:#04x} DFR {r['dfr']:#04x} LDR {r['ldr']:#04x}"
            f" PPR {r['ppr']:#04x}"
        )
        return lines


def _virtual_clock(ctx: Context) -> int | None:
    if "vm_clock" not in ctx.cache:
        st = ctx.state("timer")
        v = st.get("cpu_clock_offset") if st is not None else None
        ctx.cache["vm_clock"] = v if isinstance(v, int) else None
    return ctx.cache["vm_clock"]


def _cpu_index(ctx: Context, instance_id: int) -> int | None:
    """APIC sections pair with ``cpu`` sections in instance order (APIC ids may skip)."""
    if "apic_cpus" not in ctx.cache:
        apics = sorted(d.instance_id for d in ctx.mig.devices("apic"))
        cpus = sorted(d.instance_id for d in ctx.mig.devices("cpu"))
        ctx.cache["apic_cpus"] = dict(zip(apics, cpus)) if len(apics) == len(cpus) else {}
    return ctx.cache["apic_cpus"].get(instance_id)


def _ppr(tpr: int, isr: list[int]) -> int:
    isrv = (max(isr) if isr else 0) >> 4
    return tpr if (tpr >> 4) >= isrv else isrv << 4


@register("apic", "kvm-apic")
def decode_apic(dev: Device, state: StateNode, ctx: Context) -> None:
    g = state.get
    lvt = list(g("lvt", [0] * 6))
    isr_w, irr_w, tmr_w = (list(g(n, [0] * 8)) for n in ("isr", "irr", "tmr"))
    icr = list(g("icr", [0, 0]))
    base = g("apicbase", 0)
    regs: dict[str, Any] = {
        "apic_id": g("id", 0),
        "apicbase": base,
        "enabled": bool(base & 0x800),
        "x2apic": bool(base & 0x400),
        "bsp": bool(base & 0x100),
    }
    for i, name in enumerate(LVT_NAMES):
        regs[name] = lvt[i]
        regs[f"{name}_decoded"] = decode_lvt(lvt[i], i == 0)
    isr, irr, tmr = vectors(isr_w), vectors(irr_w), vectors(tmr_w)
    dcr = g("divide_conf", 0)
    regs.update(
        spiv=g("spurious_vec", 0),
        dcr=dcr & 0xF,
        divide_by=divide_by(dcr),
        initial_count=g("initial_count", 0),
        current_count=current_count(
            g("initial_count", 0),
            g("initial_count_load_time", 0),
            g("count_shift", 0),
            lvt[0],
            _virtual_clock(ctx),
        ),
        icr=icr[0],
        icr2=icr[1],
        esr=g("esr", 0),
        isr=isr,
        irr=irr,
        tmr=tmr,
        tpr=g("tpr", 0),
        apr=g("arb_id", 0),
        dfr=g("dest_mode", 0),
        ldr=g("log_dest", 0),
        ppr=_ppr(g("tpr", 0), isr),
    )
    ctx.add("lapic", Lapic(dev.name, dev.instance_id, _cpu_index(ctx, dev.instance_id), regs))
