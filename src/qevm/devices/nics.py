"""Network cards' MAC addresses: e1000 and e1000e (receive address registers RAL0/RAH0
and the EEPROM), rtl8139 (IDR registers and the configured address).  virtio-net's
address is in its virtio state (:mod:`.virtio.devconfig`) and is listed here too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .registry import Context, register
from .virtio.devconfig import mac_text

if TYPE_CHECKING:
    from ..migration import Device
    from ..vmstate.values import StateNode

E1000_RA = 0x5400 // 4  # receive address registers in e1000e's core.mac[]


@dataclass
class Nic:
    section: str
    instance_id: int
    model: str
    mac: str | None
    facts: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "instance_id": self.instance_id,
            "model": self.model,
            "mac": self.mac,
            **self.facts,
        }

    def format(self) -> list[str]:
        extra = "  ".join(f"{k} {v}" for k, v in self.facts.items() if not isinstance(v, dict))
        return [f"{self.model:11} {self.mac or '?':17}  {self.section}  {extra}".rstrip()]


def _ra_mac(ral: int, rah: int) -> tuple[str, bool]:
    mac = ral.to_bytes(4, "little") + (rah & 0xFFFF).to_bytes(2, "little")
    return mac_text(mac), bool(rah & 0x80000000)


def _eeprom_mac(words: list[int]) -> str | None:
    if len(words) < 3:
        return None
    return mac_text(b"".join(int(w).to_bytes(2, "little") for w in words[:3]))


@register("e1000")
def decode_e1000(dev: Device, state: StateNode, ctx: Context) -> None:
    ra = None
    for f in state.fields:
        # VMSTATE_UINT32_SUB_ARRAY(mac_reg, E1000State, RA, 32): the one 32-entry mac_reg
        if f.desc.name.startswith("mac_reg[") and f.desc.count == 32:
            ra = f.elements
            break
    facts: dict[str, Any] = {}
    mac = None
    if ra is not None:
        mac, valid = _ra_mac(ra[0], ra[1])
        facts["address_valid"] = valid
    eeprom = _eeprom_mac(list(state.get("eeprom_data", []) or []))
    facts["eeprom_mac"] = eeprom
    ctx.add("nic", Nic(dev.name, dev.instance_id, "e1000", mac or eeprom, facts))


@register("e1000e", "igb")
def decode_e1000e(dev: Device, state: StateNode, ctx: Context) -> None:
    regs = state.get("core.mac", []) or []
    facts: dict[str, Any] = {}
    mac = None
    if len(regs) > E1000_RA + 1:
        mac, facts["address_valid"] = _ra_mac(regs[E1000_RA], regs[E1000_RA + 1])
    perm = state.get("core.permanent_mac")
    if perm is not None:
        facts["permanent_mac"] = mac_text(bytes(perm))
    ctx.add("nic", Nic(dev.name, dev.instance_id, state.vmsd_name or "e1000e", mac, facts))


@register("rtl8139")
def decode_rtl8139(dev: Device, state: StateNode, ctx: Context) -> None:
    phys = state.get("phys")
    conf = state.get("conf.macaddr")
    facts: dict[str, Any] = {}
    if isinstance(conf, (bytes, bytearray)):
        facts["configured_mac"] = mac_text(bytes(conf))
    mac = mac_text(bytes(phys)) if isinstance(phys, (bytes, bytearray)) else None
    ctx.add("nic", Nic(dev.name, dev.instance_id, "rtl8139", mac, facts))


def virtio_net_nics(virtio: list[Any]) -> list[Nic]:
    """virtio-net devices as NICs (their MAC from the device state, else the config)."""
    out = []
    for v in virtio:
        if v.device_id != 1:
            continue
        st = v.device.get("state", {})
        cfg = v.device.get("config", {})
        mac = st.get("mac") or cfg.get("mac")
        facts = {"link_up": st.get("link_up", cfg.get("link_up"))}
        out.append(Nic(v.section, v.instance_id, "virtio-net", mac, facts))
    return out
