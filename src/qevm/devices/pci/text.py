"""A PCI function as text, in the style of ``lspci -vv``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import express, header
from .header import flag_text
from .ids import database

if TYPE_CHECKING:
    from .function import PciFunction

T = "\t"


def _size(n: int | None) -> str:
    if not n:
        return ""
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f" [size={n >> shift}{unit}]"
    return f" [size={n}]"


def _title(f: PciFunction) -> str:
    ids = database()
    cls = f.class_code
    cname = ids.subclass_name(cls >> 8, cls & 0xFF)
    vname = ids.vendor(f.vendor_id)
    dname = ids.device(f.vendor_id, f.device_id)
    if vname:
        who = f"{vname} {dname or f'Device {f.device_id:04x}'}"
    else:
        who = "Device"
    what = f"{cname} [{cls:04x}]" if cname else f"Class {cls:04x}"
    text = f"{f.address} {what}: {who} [{f.vendor_id:04x}:{f.device_id:04x}]"
    if f.revision:
        text += f" (rev {f.revision:02x})"
    if f.prog_if:
        text += f" (prog-if {f.prog_if:02x}"
        pname = ids.class_name(cls >> 8, cls & 0xFF, f.prog_if)
        if pname and cname and pname != cname:
            text += f" [{pname}]"
        text += ")"
    return text


def format_function(f: PciFunction) -> list[str]:
    ids = database()
    lines = [_title(f)]
    sub = f.subsystem
    if sub:
        sname = ids.subsystem(f.vendor_id, f.device_id, *sub)
        svname = ids.vendor(sub[0])
        who = sname or (f"{svname} Device {sub[1]:04x}" if svname else "Device")
        lines.append(f"{T}Subsystem: {who} [{sub[0]:04x}:{sub[1]:04x}]")
    lines.append(f"{T}Section: {f.section} (instance {f.instance_id})")
    lines.append(f"{T}Control: {flag_text(f.command, header.COMMAND_BITS)}")
    st = f.status
    devsel = header.DEVSEL[(st >> 9) & 3]
    bits = header.STATUS_BITS
    lines.append(
        f"{T}Status: {flag_text(st, bits[1:5])} DEVSEL={devsel} "
        f"{flag_text(st, bits[6:])} {flag_text(st, bits[:1])}"
    )
    if f.command & 0x4:
        lines.append(f"{T}Latency: {f.config[header.LATENCY_TIMER]}")
    if f.interrupt_pin:
        lines.append(f"{T}Interrupt: pin {f.interrupt_pin} routed to IRQ {f.interrupt_line}")
    if f.irq_state and any(f.irq_state):
        lines.append(
            f"{T}INTx asserted: {''.join('ABCD'[i] for i, v in enumerate(f.irq_state) if v)}"
        )
    for b in f.bars():
        where = f"{b.address:x}" if b.address else "<unassigned>"
        flags = "" if b.mapped or not b.address else " [disabled]"
        if b.kind == "io":
            lines.append(f"{T}Region {b.index}: I/O ports at {where}{flags}{_size(b.size)}")
        else:
            kind = "64-bit" if b.kind == "mem64" else "32-bit"
            pre = "prefetchable" if b.prefetchable else "non-prefetchable"
            lines.append(
                f"{T}Region {b.index}: Memory at {where} ({kind}, {pre}){flags}{_size(b.size)}"
            )
    rom = f.rom()
    if rom is not None:
        where = f"{rom.address:x}" if rom.address else "<unassigned>"
        state = "" if rom.enabled else " [disabled]"
        lines.append(f"{T}Expansion ROM at {where}{state}{_size(rom.size)}")
    if f.is_bridge:
        lines += _bridge(f)
    for c in f.capabilities():
        lines += _capability(c)
    if f.is_express:
        for c in f.extended_capabilities():
            lines += _ext_capability(c)
    for n in f.notes:
        lines.append(f"{T}Note: {n}")
    return lines


def _bridge(f: PciFunction) -> list[str]:
    b = header.bridge_buses(f.config)
    w = header.bridge_windows(f.config)
    out = [
        f"{T}Bus: primary={b['primary']:02x}, secondary={b['secondary']:02x}, "
        f"subordinate={b['subordinate']:02x}, sec-latency={f.config[header.SEC_LATENCY_TIMER]}"
    ]
    names = (("io", "I/O behind bridge"), ("memory", "Memory behind bridge"))
    for key, label in (*names, ("prefetchable", "Prefetchable memory behind bridge")):
        base, limit = w[key]["base"], w[key]["limit"]
        if base <= limit:
            out.append(f"{T}{label}: {base:08x}-{limit:08x}")
        else:
            out.append(f"{T}{label}: [disabled]")
    ctl = header.u16(f.config, header.BRIDGE_CONTROL)
    out.append(f"{T}BridgeCtl: {flag_text(ctl, header.BRIDGE_CONTROL_BITS)}")
    return out


def _pm(c: dict[str, Any]) -> list[str]:
    return [
        f"{T}Capabilities: [{c['offset']:02x}] Power Management version {c['version']}",
        f"{T}{T}Flags: D1{'+' if c['d1'] else '-'} D2{'+' if c['d2'] else '-'} "
        f"PME({c['pme_support']:#x})",
        f"{T}{T}Status: {c['power_state']} NoSoftRst{'+' if c['no_soft_reset'] else '-'} "
        f"PME-Enable{'+' if c['pme_enable'] else '-'} PME{'+' if c['pme_status'] else '-'}",
    ]


def _msi(c: dict[str, Any]) -> list[str]:
    pm = c["per_vector_masking"]
    out = [
        f"{T}Capabilities: [{c['offset']:02x}] MSI: Enable{'+' if c['enabled'] else '-'} "
        f"Count={c['vectors_enabled']}/{c['vectors_capable']} Maskable{'+' if pm else '-'} "
        f"64bit{'+' if c['address_64bit'] else '-'}",
        f"{T}{T}Address: {c['address']:016x}  Data: {c['data']:04x}",
    ]
    if pm:
        out.append(f"{T}{T}Masking: {c['mask']:08x}  Pending: {c['pending']:08x}")
    return out


def _msix(c: dict[str, Any]) -> list[str]:
    out = [
        f"{T}Capabilities: [{c['offset']:02x}] MSI-X: Enable{'+' if c['enabled'] else '-'} "
        f"Count={c['table_size']} Masked{'+' if c['function_mask'] else '-'}",
        f"{T}{T}Vector table: BAR={c['table_bar']} offset={c['table_offset']:08x}",
        f"{T}{T}PBA: BAR={c['pba_bar']} offset={c['pba_offset']:08x}",
    ]
    for e in c.get("entries") or []:
        out.append(
            f"{T}{T}Vector {e['index']:3}: address {e['address']:016x} data {e['data']:08x} "
            f"masked{'+' if e['masked'] else '-'} pending{'+' if e['pending'] else '-'}"
        )
    return out


def _vendor(c: dict[str, Any]) -> list[str]:
    v = c.get("virtio")
    if v is None:
        head = f"{T}Capabilities: [{c['offset']:02x}] Vendor Specific Information"
        return [f"{head}: Len={c['length']:02x}"]
    name = {
        "common": "CommonCfg",
        "notify": "Notify",
        "isr": "ISR",
        "device": "DeviceCfg",
        "pci": "PCICfg",
        "shared memory": "SharedMemory",
    }.get(v["cfg_type_name"], v["cfg_type_name"])
    line = f"{T}{T}BAR={v['bar']} offset={v['offset']:08x} size={v['length']:08x}"
    if "notify_off_multiplier" in v:
        line += f" multiplier={v['notify_off_multiplier']:08x}"
    return [
        f"{T}Capabilities: [{c['offset']:02x}] Vendor Specific Information: VirtIO: {name}",
        line,
    ]


def _exp(c: dict[str, Any]) -> list[str]:
    slot = "(Slot+)" if c["slot_implemented"] else ""
    out = [
        f"{T}Capabilities: [{c['offset']:02x}] Express (v{c['version']}) "
        f"{c['port_type_name']} {slot}, MSI {c['interrupt_message']:02x}".replace("  ", " "),
        f"{T}{T}DevCap: MaxPayload {c['max_payload_supported']} bytes, "
        f"FLReset{'+' if c['flr_capable'] else '-'}",
        f"{T}{T}DevCtl: {flag_text(c['devctl'], express.DEVCTL_BITS)}",
        f"{T}{T}{T}MaxPayload {c['max_payload']} bytes, MaxReadReq {c['max_read_request']} bytes",
        f"{T}{T}DevSta: {flag_text(c['devsta'], express.DEVSTA_BITS)}",
    ]
    link = c.get("link")
    if link:
        out.append(
            f"{T}{T}LnkCap: Port #{link['port']}, Speed {link['max_speed']}, "
            f"Width x{link['max_width']}"
        )
        out.append(
            f"{T}{T}LnkSta: Speed {link['speed']}, Width x{link['width']}, "
            f"TrErr- Train{'+' if link['training'] else '-'} "
            f"DLActive{'+' if link['dll_link_active'] else '-'}"
        )
    s = c.get("slot")
    if s:
        out.append(
            f"{T}{T}SltCap: HotPlug{'+' if s['hotplug_capable'] else '-'} "
            f"Surprise{'+' if s['hotplug_surprise'] else '-'} Slot #{s['number']}"
        )
        out.append(f"{T}{T}SltCtl: Enable: {flag_text(s['sltctl'], express.SLTCTL_BITS)}")
        out.append(f"{T}{T}SltSta: {flag_text(s['sltsta'], express.SLTSTA_BITS)}")
    r = c.get("root")
    if r:
        out.append(f"{T}{T}RootCtl: {r['rtctl']:#06x} RootSta: {r['rtsta']:#010x}")
    return out


def _capability(c: dict[str, Any]) -> list[str]:
    fn = {0x01: _pm, 0x05: _msi, 0x09: _vendor, 0x10: _exp, 0x11: _msix}.get(c["id"])
    if fn is not None:
        return fn(c)
    line = f"{T}Capabilities: [{c['offset']:02x}] {c['name']}"
    if c["id"] == 0x0D:
        line += f": Subsystem [{c['subsystem_vendor_id']:04x}:{c['subsystem_id']:04x}]"
    elif c["id"] == 0x12:
        line += f" Revision {c['revision']} BAR{c['bar_location']} offset {c['bar_offset']:#x}"
    return [line]


def _ext_capability(c: dict[str, Any]) -> list[str]:
    out = [f"{T}Capabilities: [{c['offset']:03x} v{c['version']}] {c['name']}"]
    if c["id"] == express.EXT_AER:
        out += [
            f"{T}{T}UESta: {flag_text(c['uncorrectable_status'], express.AER_UNC_BITS)}",
            f"{T}{T}UEMsk: {flag_text(c['uncorrectable_mask'], express.AER_UNC_BITS)}",
            f"{T}{T}UESvrt: {flag_text(c['uncorrectable_severity'], express.AER_UNC_BITS)}",
            f"{T}{T}CESta: {flag_text(c['correctable_status'], express.AER_COR_BITS)}",
            f"{T}{T}CEMsk: {flag_text(c['correctable_mask'], express.AER_COR_BITS)}",
        ]
    elif c["id"] == express.EXT_DSN:
        sn = c["serial_number"].to_bytes(8, "little")[::-1]
        out[0] += " " + "-".join(f"{b:02x}" for b in sn)
    elif c["id"] == express.EXT_ARI:
        out.append(f"{T}{T}ARICap: NextFn: {c['next_function']}")
    elif c["id"] == express.EXT_SRIOV:
        out.append(
            f"{T}{T}Initial VFs: {c['initial_vfs']}, Total VFs: {c['total_vfs']}, "
            f"Number of VFs: {c['num_vfs']}, VF offset: {c['vf_offset']}, "
            f"stride: {c['vf_stride']}, Device ID: {c['vf_device_id']:04x}"
        )
    return out
