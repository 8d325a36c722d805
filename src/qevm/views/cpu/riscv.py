"""RISC-V CPUs: the ``cpu`` VMSD of target/riscv (``vmstate_riscv_cpu``).

Integer and floating-point registers are keyed by their ABI names (``zero``,
``ra``, ``sp``, ..., ``ft0``, ...; :data:`ABI_NAMES` maps x<n> to them).  CSRs
are named as in the privileged spec.  Most are stored as is; where QEMU's
CSR read (target/riscv/csr.c) derives the value from stored state, the same
derivation is applied: ``mstatus``/``sstatus`` get their SD bit, ``sstatus``
is ``mstatus`` masked, ``misa`` is built from MXL and the extensions,
``hstatus`` reports VSXL = 64-bit and VSBE = 0, ``mip`` includes the
guest-external interrupt selected by ``hstatus.VGEIN``, and ``tdata1..3`` are
those of the selected trigger.  Left out are the CSRs QEMU computes from the
running clock (cycle, time, instret, the hpm counters), from state it does
not migrate (``fflags``, ``fcsr``, ``tinfo``, the CPU model's ID CSRs) and
the interrupt views it assembles from several others under AIA (``sie``,
``sip``, ``hie``, ``hip``, ``hvip``, ``vsie``, ``vsip``).
"""

from __future__ import annotations

from typing import Any

from ...vmstate.values import StateNode
from .base import Arch, CpuSection, field_index, register, unsigned

ABI_NAMES = (
    "zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2",
    "s0", "s1", "a0", "a1", "a2", "a3", "a4", "a5",
    "a6", "a7", "s2", "s3", "s4", "s5", "s6", "s7",
    "s8", "s9", "s10", "s11", "t3", "t4", "t5", "t6",
)  # fmt: skip
FPR_NAMES = (
    "ft0", "ft1", "ft2", "ft3", "ft4", "ft5", "ft6", "ft7",
    "fs0", "fs1", "fa0", "fa1", "fa2", "fa3", "fa4", "fa5",
    "fa6", "fa7", "fs2", "fs3", "fs4", "fs5", "fs6", "fs7",
    "fs8", "fs9", "fs10", "fs11", "ft8", "ft9", "ft10", "ft11",
)  # fmt: skip
PRIV_NAMES = {0: "U", 1: "S", 3: "M"}

MSTATUS_VS = 0x600
MSTATUS_FS = 0x6000
MSTATUS_XS = 0x18000
SSTATUS_MASK = 0x2 | 0x20 | 0x1 | 0x10 | 0x100 | MSTATUS_VS | MSTATUS_FS | MSTATUS_XS | 0xC0000
SSTATUS_SDT = 0x0100_0000
SSTATUS_SPELP = 0x0080_0000
SSTATUS64_UXL = 0x3_0000_0000
HSTATUS_VSXL = 0x3_0000_0000
HSTATUS_VSBE = 0x20
HSTATUS_VGEIN_SHIFT = 12
MIP_VSEIP = 1 << 10
MENVCFG_STCE = 1 << 63
#: henvcfg bits that read as zero unless also set in menvcfg (read_henvcfg).
HENVCFG_GATED = (1 << 62) | (1 << 63) | (1 << 61) | (1 << 59)
MXL_RV32 = 1
MXL_RV64 = 2
MISA_C = 1 << 2

#: Stored fields that are CSRs read back unchanged, field -> CSR name.
_PLAIN = (
    ("env.mhartid", "mhartid"),
    ("env.mie", "mie"),
    ("env.mideleg", "mideleg"),
    ("env.medeleg", "medeleg"),
    ("env.mtvec", "mtvec"),
    ("env.mscratch", "mscratch"),
    ("env.mcause", "mcause"),
    ("env.mtval", "mtval"),
    ("env.mtval2", "mtval2"),
    ("env.mtinst", "mtinst"),
    ("env.mcounteren", "mcounteren"),
    ("env.mcountinhibit", "mcountinhibit"),
    ("env.menvcfg", "menvcfg"),
    ("env.stvec", "stvec"),
    ("env.sscratch", "sscratch"),
    ("env.scause", "scause"),
    ("env.stval", "stval"),
    ("env.satp", "satp"),
    ("env.scounteren", "scounteren"),
    ("env.senvcfg", "senvcfg"),
    ("env.hedeleg", "hedeleg"),
    ("env.hideleg", "hideleg"),
    ("env.hcounteren", "hcounteren"),
    ("env.htval", "htval"),
    ("env.htinst", "htinst"),
    ("env.hgatp", "hgatp"),
    ("env.hgeie", "hgeie"),
    ("env.hgeip", "hgeip"),
    ("env.htimedelta", "htimedelta"),
    ("env.henvcfg", "henvcfg"),
    ("env.vsstatus", "vsstatus"),
    ("env.vstvec", "vstvec"),
    ("env.vsscratch", "vsscratch"),
    ("env.vsepc", "vsepc"),
    ("env.vscause", "vscause"),
    ("env.vstval", "vstval"),
    ("env.vsatp", "vsatp"),
    ("env.vstimecmp", "vstimecmp"),
    ("env.mcontext", "mcontext"),
    ("env.mvien", "mvien"),
    ("env.hvien", "hvien"),
    ("env.hvictl", "hvictl"),
    ("env.miselect", "miselect"),
    ("env.siselect", "siselect"),
    ("env.vsiselect", "vsiselect"),
)

#: How the registers are ordered: mode and pc, integer registers, CSRs by
#: privilege level (PMP, triggers and event selectors after them), then FP.
_ORDER = (
    "pc", "priv", "virt", *ABI_NAMES,
    "misa", "mhartid", "mstatus", "mie", "mip", "mideleg", "medeleg", "mtvec", "mscratch",
    "mepc", "mcause", "mtval", "mtval2", "mtinst", "mcounteren", "mcountinhibit", "menvcfg",
    "mvien", "miselect",
    "sstatus", "stvec", "sscratch", "sepc", "scause", "stval", "satp", "scounteren",
    "senvcfg", "stimecmp", "siselect",
    "hstatus", "hedeleg", "hideleg", "hcounteren", "htval", "htinst", "hgatp", "hgeie",
    "hgeip", "htimedelta", "henvcfg", "hvien", "hvictl",
    "vsstatus", "vstvec", "vsscratch", "vsepc", "vscause", "vstval", "vsatp", "vstimecmp",
    "vsiselect",
    "tselect", "tdata1", "tdata2", "tdata3", "mcontext",
)  # fmt: skip


def _detect(cpu: CpuSection) -> str | None:
    st = cpu.state
    gpr = st.field("env.gpr")
    if gpr is None or st.field("env.misa_mxl") is None:
        return None
    return "riscv64" if gpr.desc.size == 8 else "riscv32"


def _status_sd(status: int, bits: int) -> int:
    """``add_status_sd``: SD summarises dirty FS/VS/XS state in the top bit."""
    dirty = any(status & m == m for m in (MSTATUS_FS, MSTATUS_VS, MSTATUS_XS))
    return status | (1 << (bits - 1)) if dirty else status


def _decode(cpu: CpuSection, arch: str) -> dict[str, Any]:
    f = field_index(cpu.state)
    bits = 64 if arch == "riscv64" else 32

    def u(name: str) -> int | None:
        v = f.get(name)
        return None if v is None else unsigned(int(v), bits)

    out: dict[str, Any] = {}
    out["pc"] = u("env.pc")
    out["priv"] = int(f.get("env.priv", 0))
    # QEMU 8.1 turned env.virt (a flags word, bit 0 = V) into env.virt_enabled.
    virt = f.get("env.virt_enabled")
    if virt is None:
        virt = int(f.get("env.virt", 0)) & 1
    out["virt"] = int(virt)
    for name, v in zip(ABI_NAMES, f["env.gpr"]):
        out[name] = unsigned(int(v), bits)
    mxl = int(f.get("env.misa_mxl", MXL_RV64 if bits == 64 else MXL_RV32))
    ext = int(f.get("env.misa_ext", 0))
    out["misa"] = (mxl << (bits - 2)) | ext
    mstatus = u("env.mstatus") or 0
    out["mstatus"] = _status_sd(mstatus, bits)
    smask = SSTATUS_MASK | SSTATUS_SDT | SSTATUS_SPELP | (SSTATUS64_UXL if bits == 64 else 0)
    out["sstatus"] = _status_sd(mstatus & smask, bits)
    epc_mask = ~1 if ext & MISA_C else ~3
    for key, name in (("env.mepc", "mepc"), ("env.sepc", "sepc")):
        v = u(key)
        if v is not None:
            out[name] = v & epc_mask & ((1 << bits) - 1)
    mip = u("env.mip")
    hstatus = u("env.hstatus")
    if mip is not None:
        # rmw_mip64 adds VSEIP for the guest external interrupt hstatus.VGEIN
        # selects; VSTIP comes from vstime_irq, which is not migrated.
        gein = (hstatus or 0) >> HSTATUS_VGEIN_SHIFT & 0x3F
        if (u("env.hgeip") or 0) >> gein & 1:
            mip |= MIP_VSEIP
        out["mip"] = mip
    for key, name in _PLAIN:
        v = u(key)
        if v is not None:
            out[name] = v
    if hstatus is not None:
        h = hstatus & ~HSTATUS_VSBE
        if mxl != MXL_RV32:
            h = (h & ~HSTATUS_VSXL) | (2 << 32)
        out["hstatus"] = h
    if "henvcfg" in out and "menvcfg" in out:
        out["henvcfg"] &= ~HENVCFG_GATED | out["menvcfg"]
    stimecmp = u("env.stimecmp")
    if stimecmp is not None:
        out["stimecmp"] = out.get("vstimecmp", stimecmp) if out["virt"] else stimecmp
    cur = f.get("env.trigger_cur")
    if cur is not None:
        out["tselect"] = int(cur)
        for n in (1, 2, 3):
            data = f.get(f"env.tdata{n}")
            if data is not None and int(cur) < len(data):
                out[f"tdata{n}"] = unsigned(int(data[int(cur)]), bits)
    events = f.get("env.mhpmevent_val")
    if events is not None:
        for n in range(3, len(events)):
            out[f"mhpmevent{n}"] = unsigned(int(events[n]), bits)
    out.update(_pmp(cpu.state, bits))
    if f.get("env.fpr") is not None:
        for name, v in zip(FPR_NAMES, f["env.fpr"]):
            out[name] = unsigned(int(v))
    if f.get("env.frm") is not None:
        out["frm"] = int(f["env.frm"])
    order = {name: n for n, name in enumerate(_ORDER)}
    known = sorted((k for k in out if k in order), key=order.__getitem__)
    return {k: out[k] for k in (*known, *(k for k in out if k not in order)) if out[k] is not None}


def _pmp(st: StateNode, bits: int) -> dict[str, int]:
    """pmpcfg<n> (8 or 4 entries' cfg bytes each) and pmpaddr<n> from cpu/pmp."""
    pmp = st.subsection("cpu/pmp")
    if pmp is None:
        return {}
    entries = [e for e in pmp.values("env.pmp_state.pmp") if isinstance(e, StateNode)]
    out: dict[str, int] = {}
    per = bits // 8
    # pmpcfg_csr_read: on RV64 only the even pmpcfg registers exist.
    step = 2 if bits == 64 else 1
    for first in range(0, len(entries), per):
        cfg = 0
        for i, e in enumerate(entries[first : first + per]):
            cfg |= (int(e.get("cfg_reg", 0)) & 0xFF) << (8 * i)
        out[f"pmpcfg{first // per * step}"] = cfg
    for n, e in enumerate(entries):
        out[f"pmpaddr{n}"] = unsigned(int(e.get("addr_reg", 0)), bits)
    return out


def _format(r: dict[str, Any], arch: str) -> list[str]:
    d = 16 if arch == "riscv64" else 8
    lines = [
        f" priv     {PRIV_NAMES.get(r['priv'], r['priv'])}",
        f" V        {r['virt']}",
        f" pc       {r['pc']:0{d}x}",
    ]
    skip = {"priv", "virt", "pc", "frm", *ABI_NAMES, *FPR_NAMES}
    csrs = [(k, v) for k, v in r.items() if k not in skip]
    width = max((len(k) for k, _ in csrs), default=8)
    lines += [f" {k:<{width}} {v:0{d}x}" for k, v in csrs]
    gprs = [(f"x{n}/{name}", r[name]) for n, name in enumerate(ABI_NAMES)]
    lines += [" ".join(f"{k:<8} {v:0{d}x}" for k, v in gprs[i : i + 4]) for i in range(0, 32, 4)]
    if "frm" in r:
        lines.append(f" frm      {r['frm']:x}")
    fprs = [(f"f{n}/{name}", r[name]) for n, name in enumerate(FPR_NAMES) if name in r]
    lines += [
        " ".join(f"{k:<8} {v:016x}" for k, v in fprs[i : i + 4]) for i in range(0, len(fprs), 4)
    ]
    return lines


register(Arch("riscv", ("riscv64", "riscv32"), _detect, _decode, _format))
