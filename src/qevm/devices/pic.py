"""The i8259 pair (``vmstate_pic_common``, hw/intc/i8259_common.c).

``info pic`` prints ``pic0`` for the master and ``pic1`` for the slave;
QEMU creates the master first, so it is instance 0 of the ``i8259`` sections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .registry import Context, register

if TYPE_CHECKING:
    from ..migration import Device
    from ..vmstate.values import StateNode

FIELDS = (
    "last_irr",
    "irr",
    "imr",
    "isr",
    "priority_add",
    "irq_base",
    "read_reg_select",
    "poll",
    "special_mask",
    "init_state",
    "auto_eoi",
    "rotate_on_auto_eoi",
    "special_fully_nested_mode",
    "init4",
    "single_mode",
    "elcr",
)


@dataclass
class Pic:
    section: str
    instance_id: int
    regs: dict[str, int]

    @property
    def role(self) -> str:
        return "master" if self.instance_id == 0 else "slave"

    def to_json(self) -> dict[str, Any]:
        r = self.regs
        base = 8 * self.instance_id
        return {
            "section": self.section,
            "instance_id": self.instance_id,
            "role": self.role,
            **r,
            "masked_irqs": [base + i for i in range(8) if r.get("imr", 0) >> i & 1],
            "pending_irqs": [base + i for i in range(8) if r.get("irr", 0) >> i & 1],
            "in_service_irqs": [base + i for i in range(8) if r.get("isr", 0) >> i & 1],
            "level_triggered_irqs": [base + i for i in range(8) if r.get("elcr", 0) >> i & 1],
        }

    def format(self) -> list[str]:
        r = self.regs
        return [
            f"pic{self.instance_id} ({self.role}): irr={r['irr']:02x} imr={r['imr']:02x} "
            f"isr={r['isr']:02x} hprio={r['priority_add']} irq_base={r['irq_base']:02x} "
            f"rr_sel={r['read_reg_select']} elcr={r['elcr']:02x} "
            f"fnm={r['special_fully_nested_mode']}  auto_eoi={r['auto_eoi']} "
            f"init_state={r['init_state']}"
        ]


@register("i8259", "kvm-i8259")
def decode_pic(dev: Device, state: StateNode, ctx: Context) -> None:
    regs = {f: int(state.get(f, 0) or 0) for f in FIELDS}
    ctx.add("pic", Pic(dev.name, dev.instance_id, regs))
