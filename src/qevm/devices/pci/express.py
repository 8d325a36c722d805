"""PCI Express: the Express capability and the extended capability list (0x100-0xfff)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from . import caps
from .header import u16, u32, u64

# Express capability registers (offsets from the capability)
EXP_FLAGS = 0x02
EXP_DEVCAP = 0x04
EXP_DEVCTL = 0x08
EXP_DEVSTA = 0x0A
EXP_LNKCAP = 0x0C
EXP_LNKCTL = 0x10
EXP_LNKSTA = 0x12
EXP_SLTCAP = 0x14
EXP_SLTCTL = 0x18
EXP_SLTSTA = 0x1A
EXP_RTCTL = 0x1C
EXP_RTCAP = 0x1E
EXP_RTSTA = 0x20
EXP_DEVCAP2 = 0x24
EXP_DEVCTL2 = 0x28
EXP_LNKCAP2 = 0x2C
EXP_LNKCTL2 = 0x30
EXP_LNKSTA2 = 0x32

EXP_FLAGS_SLOT = 0x0100

TYPE_ENDPOINT = 0
TYPE_LEG_END = 1
TYPE_ROOT_PORT = 4
TYPE_UPSTREAM = 5
TYPE_DOWNSTREAM = 6
TYPE_PCI_BRIDGE = 7
TYPE_PCIE_BRIDGE = 8
TYPE_RC_END = 9
TYPE_RC_EC = 10

PORT_TYPES = {
    TYPE_ENDPOINT: "Endpoint",
    TYPE_LEG_END: "Legacy Endpoint",
    TYPE_ROOT_PORT: "Root Port",
    TYPE_UPSTREAM: "Upstream Port",
    TYPE_DOWNSTREAM: "Downstream Port",
    TYPE_PCI_BRIDGE: "PCI-Express to PCI/PCI-X Bridge",
    TYPE_PCIE_BRIDGE: "PCI/PCI-X to PCI-Express Bridge",
    TYPE_RC_END: "Root Complex Integrated Endpoint",
    TYPE_RC_EC: "Root Complex Event Collector",
}

LINK_SPEEDS = {1: "2.5GT/s", 2: "5GT/s", 3: "8GT/s", 4: "16GT/s", 5: "32GT/s", 6: "64GT/s"}

DEVCTL_BITS = [
    (0x0001, "CorrErr"),
    (0x0002, "NonFatalErr"),
    (0x0004, "FatalErr"),
    (0x0008, "UnsupReq"),
    (0x0010, "RlxdOrd"),
    (0x0100, "ExtTag"),
    (0x0200, "PhantFunc"),
    (0x0400, "AuxPwr"),
    (0x0800, "NoSnoop"),
    (0x8000, "FLReset"),
]
DEVSTA_BITS = [
    (0x01, "CorrErr"),
    (0x02, "NonFatalErr"),
    (0x04, "FatalErr"),
    (0x08, "UnsupReq"),
    (0x10, "AuxPwr"),
    (0x20, "TransPend"),
]
SLTCTL_BITS = [
    (0x001, "AttnBtn"),
    (0x002, "PwrFlt"),
    (0x004, "MRL"),
    (0x008, "PresDet"),
    (0x010, "CmdCplt"),
    (0x020, "HPIrq"),
    (0x400, "PwrCtrl"),
    (0x800, "EMI"),
    (0x1000, "LinkChg"),
]
SLTSTA_BITS = [
    (0x001, "AttnBtnChg"),
    (0x002, "PowerFltChg"),
    (0x004, "MRLChg"),
    (0x008, "PresDetChg"),
    (0x010, "CmdCplt"),
    (0x020, "MRLOpen"),
    (0x040, "PresDet"),
    (0x080, "Interlock"),
    (0x100, "LinkStateChg"),
]


def _speed(v: int) -> str:
    return LINK_SPEEDS.get(v, f"unknown ({v})")


def port_type(cfg: bytes, pos: int) -> int:
    return (u16(cfg, pos + EXP_FLAGS) >> 4) & 0xF


@caps.register(caps.CAP_EXP)
def decode_express(cfg: bytes, pos: int) -> dict[str, Any]:
    flags = u16(cfg, pos + EXP_FLAGS)
    ptype = (flags >> 4) & 0xF
    version = flags & 0xF
    devcap = u32(cfg, pos + EXP_DEVCAP)
    devctl = u16(cfg, pos + EXP_DEVCTL)
    out: dict[str, Any] = {
        "version": version,
        "port_type": ptype,
        "port_type_name": PORT_TYPES.get(ptype, f"type {ptype}"),
        "slot_implemented": bool(flags & EXP_FLAGS_SLOT),
        "interrupt_message": (flags >> 9) & 0x1F,
        "devcap": devcap,
        "max_payload_supported": 128 << (devcap & 7),
        "flr_capable": bool(devcap & 0x10000000),
        "devctl": devctl,
        "max_payload": 128 << ((devctl >> 5) & 7),
        "max_read_request": 128 << ((devctl >> 12) & 7),
        "devsta": u16(cfg, pos + EXP_DEVSTA),
    }
    has_link = ptype not in (TYPE_RC_END, TYPE_RC_EC)
    if has_link:
        lnkcap = u32(cfg, pos + EXP_LNKCAP)
        lnksta = u16(cfg, pos + EXP_LNKSTA)
        out["link"] = {
            "port": lnkcap >> 24,
            "max_speed": _speed(lnkcap & 0xF),
            "max_width": (lnkcap >> 4) & 0x3F,
            "dll_active_reporting": bool(lnkcap & 0x100000),
            "lnkcap": lnkcap,
            "lnkctl": u16(cfg, pos + EXP_LNKCTL),
            "lnksta": lnksta,
            "speed": _speed(lnksta & 0xF),
            "width": (lnksta >> 4) & 0x3F,
            "dll_link_active": bool(lnksta & 0x2000),
            "training": bool(lnksta & 0x800),
        }
    if flags & EXP_FLAGS_SLOT:
        sltcap = u32(cfg, pos + EXP_SLTCAP)
        out["slot"] = {
            "number": sltcap >> 19,
            "hotplug_capable": bool(sltcap & 0x40),
            "hotplug_surprise": bool(sltcap & 0x20),
            "power_controller": bool(sltcap & 0x2),
            "sltcap": sltcap,
            "sltctl": u16(cfg, pos + EXP_SLTCTL),
            "sltsta": u16(cfg, pos + EXP_SLTSTA),
            "presence_detect": bool(u16(cfg, pos + EXP_SLTSTA) & 0x40),
        }
    if ptype in (TYPE_ROOT_PORT, TYPE_RC_EC):
        out["root"] = {
            "rtctl": u16(cfg, pos + EXP_RTCTL),
            "rtcap": u16(cfg, pos + EXP_RTCAP),
            "rtsta": u32(cfg, pos + EXP_RTSTA),
        }
    if version >= 2:
        out["devcap2"] = u32(cfg, pos + EXP_DEVCAP2)
        out["devctl2"] = u16(cfg, pos + EXP_DEVCTL2)
        if has_link:
            out["link"]["lnkcap2"] = u32(cfg, pos + EXP_LNKCAP2)
            out["link"]["lnkctl2"] = u16(cfg, pos + EXP_LNKCTL2)
    return out


# -- extended capabilities -------------------------------------------------

EXT_AER = 0x0001
EXT_DSN = 0x0003
EXT_VNDR = 0x000B
EXT_ACS = 0x000D
EXT_ARI = 0x000E
EXT_ATS = 0x000F
EXT_SRIOV = 0x0010
EXT_PRI = 0x0013
EXT_PASID = 0x001B

EXT_NAMES = {
    0x0001: "Advanced Error Reporting",
    0x0002: "Virtual Channel",
    0x0003: "Device Serial Number",
    0x0004: "Power Budgeting",
    0x0005: "Root Complex Link",
    0x0006: "Root Complex Internal Link Control",
    0x0007: "Root Complex Event Collector",
    0x0008: "Multi-Function Virtual Channel",
    0x0009: "Virtual Channel",
    0x000A: "Root Complex Register Block",
    0x000B: "Vendor Specific",
    0x000C: "Configuration Access Correlation",
    0x000D: "Access Control Services",
    0x000E: "Alternative Routing-ID Interpretation",
    0x000F: "Address Translation Service",
    0x0010: "Single Root I/O Virtualization",
    0x0011: "Multi-Root I/O Virtualization",
    0x0012: "Multicast",
    0x0013: "Page Request Interface",
    0x0015: "Resizable BAR",
    0x0016: "Dynamic Power Allocation",
    0x0017: "TPH Requester",
    0x0018: "Latency Tolerance Reporting",
    0x0019: "Secondary PCI Express",
    0x001B: "Process Address Space ID",
    0x001D: "Downstream Port Containment",
    0x001E: "L1 PM Substates",
    0x001F: "Precision Time Measurement",
    0x0023: "Designated Vendor-Specific",
    0x0025: "Data Link Feature",
    0x0026: "Physical Layer 16.0 GT/s",
    0x002E: "Data Object Exchange",
}

#: AER register offsets (from the capability)
AER_UNCOR_STATUS = 0x04
AER_UNCOR_MASK = 0x08
AER_UNCOR_SEVER = 0x0C
AER_COR_STATUS = 0x10
AER_COR_MASK = 0x14
AER_CAP = 0x18
AER_HEADER_LOG = 0x1C
AER_ROOT_COMMAND = 0x2C
AER_ROOT_STATUS = 0x30
AER_ROOT_ERR_SRC = 0x34

AER_UNC_BITS = [
    (0x00000010, "DLP"),
    (0x00000020, "SDES"),
    (0x00001000, "TLP"),
    (0x00002000, "FCP"),
    (0x00004000, "CmpltTO"),
    (0x00008000, "CmpltAbrt"),
    (0x00010000, "UnxCmplt"),
    (0x00020000, "RxOF"),
    (0x00040000, "MalfTLP"),
    (0x00080000, "ECRC"),
    (0x00100000, "UnsupReq"),
    (0x00200000, "ACSViol"),
    (0x00400000, "UncorrIntErr"),
    (0x00800000, "BlockedTLP"),
    (0x01000000, "AtomicOpBlocked"),
    (0x02000000, "TLPBlockedErr"),
]
AER_COR_BITS = [
    (0x0001, "RxErr"),
    (0x0040, "BadTLP"),
    (0x0080, "BadDLLP"),
    (0x0100, "Rollover"),
    (0x1000, "Timeout"),
    (0x2000, "AdvNonFatalErr"),
    (0x4000, "CorrIntErr"),
    (0x8000, "HeaderOF"),
]


def walk_ext(cfg: bytes) -> Iterator[tuple[int, int, int]]:
    """``(offset, id, version)`` of every extended capability (4 KiB config only)."""
    if len(cfg) < 0x1000:
        return
    pos = 0x100
    seen: set[int] = set()
    while pos and 0x100 <= pos <= 0xFFC and pos not in seen and len(seen) < 256:
        seen.add(pos)
        header = u32(cfg, pos)
        if header == 0 or header == 0xFFFFFFFF:
            return
        yield pos, header & 0xFFFF, (header >> 16) & 0xF
        pos = (header >> 20) & 0xFFC


def decode_ext_all(cfg: bytes) -> list[dict[str, Any]]:
    out = []
    for pos, cid, ver in walk_ext(cfg):
        d: dict[str, Any] = {
            "offset": pos,
            "id": cid,
            "version": ver,
            "name": EXT_NAMES.get(cid, f"#{cid:04x}"),
        }
        fn = _EXT_DECODERS.get(cid)
        if fn is not None:
            d.update(fn(cfg, pos))
        out.append(d)
    return out


def _aer(cfg: bytes, pos: int) -> dict[str, Any]:
    out = {
        "uncorrectable_status": u32(cfg, pos + AER_UNCOR_STATUS),
        "uncorrectable_mask": u32(cfg, pos + AER_UNCOR_MASK),
        "uncorrectable_severity": u32(cfg, pos + AER_UNCOR_SEVER),
        "correctable_status": u32(cfg, pos + AER_COR_STATUS),
        "correctable_mask": u32(cfg, pos + AER_COR_MASK),
        "capabilities_control": u32(cfg, pos + AER_CAP),
        "header_log": [u32(cfg, pos + AER_HEADER_LOG + 4 * i) for i in range(4)],
    }
    return out


def _dsn(cfg: bytes, pos: int) -> dict[str, Any]:
    return {"serial_number": u64(cfg, pos + 4)}


def _acs(cfg: bytes, pos: int) -> dict[str, Any]:
    return {"acs_cap": u16(cfg, pos + 4), "acs_ctrl": u16(cfg, pos + 6)}


def _ari(cfg: bytes, pos: int) -> dict[str, Any]:
    cap = u16(cfg, pos + 4)
    return {"next_function": cap >> 8, "ari_cap": cap, "ari_ctrl": u16(cfg, pos + 6)}


def _ats(cfg: bytes, pos: int) -> dict[str, Any]:
    ctrl = u16(cfg, pos + 6)
    return {"ats_cap": u16(cfg, pos + 4), "enabled": bool(ctrl & 0x8000), "stu": ctrl & 0x1F}


def _sriov(cfg: bytes, pos: int) -> dict[str, Any]:
    return {
        "sriov_cap": u32(cfg, pos + 4),
        "sriov_ctrl": u16(cfg, pos + 8),
        "initial_vfs": u16(cfg, pos + 0x0C),
        "total_vfs": u16(cfg, pos + 0x0E),
        "num_vfs": u16(cfg, pos + 0x10),
        "vf_offset": u16(cfg, pos + 0x14),
        "vf_stride": u16(cfg, pos + 0x16),
        "vf_device_id": u16(cfg, pos + 0x1A),
    }


_EXT_DECODERS = {
    EXT_AER: _aer,
    EXT_DSN: _dsn,
    EXT_ACS: _acs,
    EXT_ARI: _ari,
    EXT_ATS: _ats,
    EXT_SRIOV: _sriov,
}


def find_ext(cfg: bytes, cap_id: int) -> int | None:
    for pos, cid, _ in walk_ext(cfg):
        if cid == cap_id:
            return pos
    return None
