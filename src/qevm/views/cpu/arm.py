"""Arm CPUs: the ``cpu`` VMSD of target/arm (``vmstate_arm_cpu``).

The general registers are fields (``env.xregs``, ``env.regs``, ``env.pc``),
PSTATE/CPSR is the opaque ``cpsr`` field (``put_cpsr``: big-endian 32 bits,
replaced by the 64-bit ``cpu/pstate64`` subsection when the upper half is
set) and the system registers travel as two parallel arrays,
``cpreg_vmstate_indexes`` (KVM-style 64-bit register ids) and
``cpreg_vmstate_values``.  Registers QEMU keeps as aliases of other state
(ELR_ELx, SPSR_ELx, SP_ELx) are not in that list; they come from
``env.elr_el``, ``env.banked_spsr`` and ``env.sp_el``.

With SVE, ``z0``..``z31``, ``p0``..``p15`` and ``ffr`` hold the whole
registers as little-endian integers (``cpu/vfp`` and ``cpu/sve``); they are
left out of the text output.

The architecture is ``aarch64`` when the CPU has AArch64 system registers,
``arm`` otherwise.  A CPU executing in AArch32 state has ``r0``..``r15`` and
``cpsr`` instead of ``x0``..``x30``, ``sp`` and ``pstate``.
"""

from __future__ import annotations

from typing import Any

from .arm_cpregs import REG_ARCH_MASK, REG_ARM64, sysreg_name
from .base import Arch, CpuSection, be_int, field_index, grid, register, unsigned

PSTATE_SP = 1
PSTATE_NRW = 1 << 4
#: banked_spsr index of SPSR_EL1/2/3 (aarch64_banked_spsr_index: SVC, HYP, MON).
_SPSR_BANK = {1: 1, 2: 6, 3: 7}
#: FPSCR bits that belong to the FPSR and to the FPCR (cpu.h FPSCR_FPSR_MASK/FPCR_MASK).
FPSCR_FPSR_MASK = 0xF800_009F
FPSCR_FPCR_MASK = 0x07FF_9F00


def _cpregs(f: dict[str, Any]) -> list[tuple[int, int]]:
    ids = f.get("cpreg_vmstate_indexes") or []
    vals = f.get("cpreg_vmstate_values") or []
    return [(unsigned(int(i)), unsigned(int(v))) for i, v in zip(ids, vals)]


def _detect(cpu: CpuSection) -> str | None:
    st = cpu.state
    if st.field("cpsr") is None or st.field("env.xregs") is None:
        return None
    f = field_index(st)
    has_a64 = any(i & REG_ARCH_MASK == REG_ARM64 for i, _ in _cpregs(f))
    return "aarch64" if has_a64 else "arm"


def _pstate(f: dict[str, Any]) -> int:
    # put_cpsr writes the low 32 bits; cpu/pstate64 carries all 64 when needed.
    if f.get("pstate64") is not None:
        return be_int(f["pstate64"])
    return be_int(f["cpsr"])


def _fp_control(f: dict[str, Any]) -> tuple[int, int] | None:
    """(FPCR, FPSR): from cpu/vfp/fpcr_fpsr when sent, else split from the FPSCR."""
    if f.get("fpcr") is not None and f.get("fpsr") is not None:
        return be_int(f["fpcr"]), be_int(f["fpsr"])
    if f.get("fpscr") is None:
        return None
    fpscr = be_int(f["fpscr"])
    return fpscr & FPSCR_FPCR_MASK, fpscr & FPSCR_FPSR_MASK


def _qregs(cpu: CpuSection) -> list[int]:
    """Q0..Q31 (the low 128 bits of each Z register) from cpu/vfp."""
    vfp = cpu.state.subsection("cpu/vfp")
    if vfp is None:
        return []
    out = []
    for n in range(32):
        d = vfp.values(f"env.vfp.zregs[{n}].d")
        if len(d) < 2:
            break
        out.append(unsigned(int(d[1])) << 64 | unsigned(int(d[0])))
    return out


def _sve(cpu: CpuSection) -> dict[str, int]:
    """Z0..Z31, P0..P15 and FFR from cpu/vfp and cpu/sve, as little-endian integers.

    QEMU migrates Z bits 0..1023 only (``cpu/sve/zreg_hi`` holds d[2..15]),
    so for vector lengths over 1024 bits the upper parts are not in the stream.
    """
    sve = cpu.state.subsection("cpu/sve")
    vfp = cpu.state.subsection("cpu/vfp")
    if sve is None or vfp is None:
        return {}
    out: dict[str, int] = {}
    for n, hi in enumerate(sve.values("env.vfp.zregs")):
        words = list(vfp.values(f"env.vfp.zregs[{n}].d")) + list(hi.get("d"))
        out[f"z{n}"] = sum(unsigned(int(w)) << (64 * i) for i, w in enumerate(words))
    for n, pred in enumerate(sve.values("env.vfp.pregs")):
        value = sum(unsigned(int(w)) << (64 * i) for i, w in enumerate(pred.get("p")))
        out["ffr" if n == 16 else f"p{n}"] = value
    return out


def _decode(cpu: CpuSection, arch: str) -> dict[str, Any]:
    f = field_index(cpu.state)
    pstate = _pstate(f)
    cpregs = _cpregs(f)
    out: dict[str, Any] = {}
    if pstate & PSTATE_NRW:
        # AArch32 state: the live registers are env.regs (cpsr_read layout).
        regs = [unsigned(int(v), 32) for v in f["env.regs"]]
        for n, v in enumerate(regs):
            out[f"r{n}"] = v
        out["pc"] = regs[15]
        out["cpsr"] = pstate
        out["mode"] = pstate & 0x1F
        out["spsr"] = unsigned(int(f.get("env.spsr", 0)), 32)
    else:
        x = [unsigned(int(v)) for v in f["env.xregs"]]
        for n in range(31):
            out[f"x{n}"] = x[n]
        el = (pstate >> 2) & 3
        # xregs[31] is the live SP; env.sp_el[] holds the banked copies as of
        # the last EL/SPSel change (aarch64_save_sp), so the one in use is stale.
        out["sp"] = x[31]
        out["pc"] = unsigned(int(f["env.pc"]))
        out["pstate"] = pstate
        out["el"] = el
        sp_el = [unsigned(int(v)) for v in f.get("env.sp_el") or []]
        if sp_el:
            sp_el[el if pstate & PSTATE_SP else 0] = x[31]
        for n, v in enumerate(sp_el):
            out[f"sp_el{n}"] = v
    elr = [unsigned(int(v)) for v in f.get("env.elr_el") or []]
    spsr = [unsigned(int(v)) for v in f.get("env.banked_spsr") or []]
    if arch == "aarch64":
        for n in range(1, len(elr)):
            out[f"ELR_EL{n}"] = elr[n]
        for n, bank in _SPSR_BANK.items():
            if bank < len(spsr):
                out[f"SPSR_EL{n}"] = spsr[bank]
    fp = _fp_control(f)
    if fp is not None:
        out["fpcr"], out["fpsr"] = fp
    qregs = _qregs(cpu)
    if arch == "aarch64":
        for n, q in enumerate(qregs):
            out[f"q{n}"] = q
        out.update(_sve(cpu))
    else:
        # AArch32 D<2n> and D<2n+1> are the halves of Q<n>.
        for n, q in enumerate(qregs[:16]):
            out[f"d{2 * n}"] = q & (1 << 64) - 1
            out[f"d{2 * n + 1}"] = q >> 64
    for kvm_id, value in cpregs:
        name = sysreg_name(kvm_id)
        if name in out:
            name = f"{name}@{kvm_id:#x}"
        out[name] = value
    return out


def _format(r: dict[str, Any], arch: str) -> list[str]:
    lines: list[str] = []
    if "x0" in r:
        cells = [("PC", r["pc"])] + [(f"X{n:02d}", r[f"x{n}"]) for n in range(31)]
        cells.append(("SP", r["sp"]))
        lines += grid(cells, 3, 16)
        lines.append(f"PSTATE={r['pstate']:016x} EL{r['el']}{'h' if r['pstate'] & 1 else 't'}")
        lines += grid([(k.upper(), r[k]) for k in r if k.startswith("sp_el")], 4, 16)
    else:
        lines += grid([(f"R{n:02d}", r[f"r{n}"]) for n in range(16)], 4, 8)
        lines.append(f"CPSR={r['cpsr']:08x} SPSR={r['spsr']:08x}")
    banked = [(k, r[k]) for k in r if k.startswith(("ELR_EL", "SPSR_EL"))]
    lines += grid(banked, 3, 16)
    if "fpcr" in r:
        lines.append(f"FPCR={r['fpcr']:08x} FPSR={r['fpsr']:08x}")
    qs = [(k.upper(), r[k]) for k in r if _numbered(k, "q")]
    for i in range(0, len(qs), 2):
        lines.append(
            " ".join(f"{k}={v >> 64:016x}:{v & (1 << 64) - 1:016x}" for k, v in qs[i : i + 2])
        )
    lines += grid([(k.upper(), r[k]) for k in r if _numbered(k, "d")], 4, 16)
    shown = {"pc", "sp", "pstate", "el", "cpsr", "spsr", "mode", "fpcr", "fpsr", "ffr"}
    rest = [
        (k, v)
        for k, v in r.items()
        if k not in shown
        and not k.startswith(("sp_el", "ELR_EL", "SPSR_EL"))
        and not any(_numbered(k, p) for p in "xrqdzp")
    ]
    if rest:
        lines.append("system registers")
        width = max(len(k) for k, _ in rest)
        lines += [f"  {k:<{width}} {v:016x}" for k, v in rest]
    return lines


def _numbered(name: str, prefix: str) -> bool:
    """Whether ``name`` is ``prefix`` followed by a register number (``x3``, ``q31``)."""
    return name.startswith(prefix) and name[len(prefix) :].isdigit()


register(Arch("arm", ("aarch64", "arm"), _detect, _decode, _format))
