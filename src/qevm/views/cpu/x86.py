"""x86 CPUs: the ``cpu`` VMSD of target/i386 (``vmstate_x86_cpu``).

Register meanings follow QEMU's ``CPUX86State``: ``env.regs`` in QEMU's order
(EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI, R8..R15), segment caches as QEMU keeps
them (``flags`` is the raw descriptor high word QEMU stores, including base
bits 16..23 and 24..31; ``info registers`` prints it masked with 0x00ffff00),
and the FPU/SSE state in the shapes ``cpu_pre_save`` writes.

The architecture is ``x86_64`` whenever the stream's registers are 64-bit,
i.e. whenever the binary was qemu-system-x86_64, whatever mode the guest
runs in (a 32-bit guest on qemu-system-x86_64 is still ``x86_64``); ``i386``
is qemu-system-i386, whose registers are 32-bit.
"""

from __future__ import annotations

from typing import Any

from ...vmstate.values import StateNode
from .base import Arch, CpuSection, be_int, field_index, grid, nodes, register, unsigned

#: env.regs order (R_EAX = 0, R_ECX, R_EDX, R_EBX, R_ESP, R_EBP, R_ESI, R_EDI, R8...).
_QEMU_ORDER = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di")
#: The order ``info registers`` prints them.
_SHOW_ORDER = ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp")
SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs")
#: env.<field> -> register name, for the scalar MSRs and friends.
_MSRS = {
    "env.sysenter_cs": "sysenter_cs",
    "env.sysenter_esp": "sysenter_esp",
    "env.sysenter_eip": "sysenter_eip",
    "env.star": "star",
    "env.lstar": "lstar",
    "env.cstar": "cstar",
    "env.fmask": "fmask",
    "env.kernelgsbase": "kernel_gs_base",
    "env.pat": "pat",
    "env.tsc": "tsc",
    "env.tsc_aux": "tsc_aux",
    "env.tsc_adjust": "tsc_adjust",
    "env.tsc_deadline": "tsc_deadline",
    "env.msr_ia32_misc_enable": "misc_enable",
    "env.msr_ia32_feature_control": "feature_control",
    "env.spec_ctrl": "spec_ctrl",
    "env.xss": "xss",
    "env.pkru": "pkru",
    "env.xcr0": "xcr0",
    "env.smbase": "smbase",
    "env.mtrr_deftype": "mtrr_def_type",
}
HF_CPL_MASK = 3
_LOW64 = (1 << 64) - 1


def _detect(cpu: CpuSection) -> str | None:
    st = cpu.state
    regs = st.field("env.regs")
    if regs is None or st.field("env.eip") is None or st.field("env.segs") is None:
        return None
    return "x86_64" if regs.desc.count == 16 and regs.desc.size == 8 else "i386"


def _segment(node: StateNode) -> dict[str, int]:
    return {k: unsigned(int(node.get(k, 0))) for k in ("selector", "base", "limit", "flags")}


def _struct_elements(st: StateNode, type_name: str) -> list[StateNode]:
    """Elements of the struct fields whose VMSD is ``type_name`` (x86 reuses field names)."""
    out: list[StateNode] = []
    for n in nodes(st):
        for f in n.fields:
            els = [e for e in f.elements if isinstance(e, StateNode)]
            if els and els[0].vmsd_name == type_name:
                out.extend(els)
    return out


def _fpreg(node: StateNode) -> int | None:
    """An 80-bit x87 register (exponent << 64 | mantissa) from an ``fpreg`` element."""
    for n in node.walk():
        mant, exp = n.get("tmp_mant"), n.get("tmp_exp")
        if mant is not None and exp is not None:
            return unsigned(int(exp), 16) << 64 | unsigned(int(mant))
    return None


def _decode(cpu: CpuSection, arch: str) -> dict[str, Any]:
    st = cpu.state
    f = field_index(st)
    bits = 64 if arch == "x86_64" else 32
    prefix = "r" if bits == 64 else "e"
    regs = [unsigned(int(v), bits) for v in st.get("env.regs")]
    out: dict[str, Any] = {}
    by_name = {prefix + n: regs[i] for i, n in enumerate(_QEMU_ORDER)}
    for n in _SHOW_ORDER:
        out[prefix + n] = by_name[prefix + n]
    for i in range(8, len(regs)):
        out[f"r{i}"] = regs[i]
    out["rip" if bits == 64 else "eip"] = unsigned(int(f["env.eip"]), bits)
    # Under TCG the arithmetic flags live in CC_SRC/CC_OP while the CPU runs,
    # but x86_cpu_exec_exit folds them back into env->eflags when it stops,
    # so the migrated value is the whole register (= info registers' EFL).
    out["rflags" if bits == 64 else "eflags"] = unsigned(int(f["env.eflags"]), bits)
    hflags = int(f.get("env.hflags", 0))
    out["cpl"] = hflags & HF_CPL_MASK
    segs = st.get("env.segs")
    for name, node in zip(SEGMENTS, segs):
        out[name] = _segment(node)
    for name in ("ldt", "tr"):
        node = st.get(f"env.{name}")
        if isinstance(node, StateNode):
            out[name] = _segment(node)
    for name in ("gdt", "idt"):
        node = st.get(f"env.{name}")
        if isinstance(node, StateNode):
            seg = _segment(node)
            out[name] = {"base": seg["base"], "limit": seg["limit"]}
    for n in (0, 2, 3, 4):
        v = f.get(f"env.cr[{n}]")
        if v is not None:
            out[f"cr{n}"] = unsigned(int(v), bits)
    if "env.efer" in f:
        out["efer"] = unsigned(int(f["env.efer"]))
    dr = f.get("env.dr")
    if dr is not None:
        for n in (0, 1, 2, 3, 6, 7):
            out[f"dr{n}"] = unsigned(int(dr[n]), bits)
    for key, name in _MSRS.items():
        if key in f and f[key] is not None:
            out[name] = unsigned(int(f[key]))
    apic = cpu.peers.get("apic")
    if apic is not None and apic.get("apicbase") is not None:
        out["apic_base"] = unsigned(int(apic.get("apicbase")))
    # cpu_pre_save stores FSW with TOP folded in and the abridged tag word
    # (bit i set = register i valid): exactly the FSW/FTW info registers shows.
    for key, name in (
        ("env.fpuc", "fcw"),
        ("env.fpus_vmstate", "fsw"),
        ("env.fptag_vmstate", "ftw"),
        ("env.fpop", "fop"),
        ("env.fpip", "fip"),
        ("env.fpdp", "fdp"),
        ("env.mxcsr", "mxcsr"),
    ):
        if f.get(key) is not None:
            out[name] = unsigned(int(f[key]))
    # env.fpregs[i] is physical register R<i> (ST(i) is R[(TOP + i) & 7]),
    # which is also what info registers prints as FPR<i>.
    for i, node in enumerate(v for v in st.values("env.fpregs") if isinstance(v, StateNode)):
        val = _fpreg(node)
        if val is not None:
            out[f"fpr{i}"] = val
    # XMM0-15 are the xmm_reg elements; with AVX-512 the cpu/avx512
    # subsection carries XMM16-31 whole inside hi16_zmm_reg elements.
    vectors = _struct_elements(st, "xmm_reg") + _struct_elements(st, "hi16_zmm_reg")
    for i, node in enumerate(vectors):
        lo = be_int(node.get("_q_ZMMReg[0]", 0))
        hi = be_int(node.get("_q_ZMMReg[1]", 0))
        out[f"xmm{i}"] = unsigned(hi) << 64 | unsigned(lo)
    return out


def _format(r: dict[str, Any], arch: str) -> list[str]:
    wide = arch == "x86_64"
    d = 16 if wide else 8
    p = "r" if wide else "e"
    gprs = [(k.upper(), r[k]) for k in (p + n for n in _SHOW_ORDER)]
    gprs += [(f"R{n:<2}", r[f"r{n}"]) for n in range(8, 16) if f"r{n}" in r]
    lines = grid(gprs, 4, d)
    ip, fl = (r["rip"], r["rflags"]) if wide else (r["eip"], r["eflags"])
    lines.append(f"{p.upper()}IP={ip:0{d}x} {'RFL' if wide else 'EFL'}={fl:08x} CPL={r['cpl']}")
    for name in (*SEGMENTS, "ldt", "tr"):
        if name in r:
            s = r[name]
            lines.append(
                f"{name.upper():<3}={s['selector']:04x} {s['base']:0{d}x} "
                f"{s['limit']:08x} {s['flags']:08x}"
            )
    for name in ("gdt", "idt"):
        if name in r:
            lines.append(f"{name.upper()}=     {r[name]['base']:0{d}x} {r[name]['limit']:08x}")
    lines += grid([(f"CR{n}", r[f"cr{n}"]) for n in (0, 2, 3, 4) if f"cr{n}" in r], 4, d)
    lines += grid([(f"DR{n}", r[f"dr{n}"]) for n in (0, 1, 2, 3, 6, 7) if f"dr{n}" in r], 4, d)
    if "efer" in r:
        lines.append(f"EFER={r['efer']:016x}")
    if "fcw" in r:
        lines.append(
            f"FCW={r['fcw']:04x} FSW={r['fsw']:04x} FTW={r['ftw']:02x} MXCSR={r['mxcsr']:08x}"
        )
    fprs = [(f"FPR{i}", r[f"fpr{i}"]) for i in range(8) if f"fpr{i}" in r]
    lines += [
        " ".join(f"{k}={v & _LOW64:016x} {v >> 64:04x}" for k, v in fprs[i : i + 2])
        for i in range(0, len(fprs), 2)
    ]
    xmms = [(f"XMM{i:02d}", r[f"xmm{i}"]) for i in range(32) if f"xmm{i}" in r]
    lines += [
        " ".join(f"{k}={v >> 64:016x} {v & _LOW64:016x}" for k, v in xmms[i : i + 2])
        for i in range(0, len(xmms), 2)
    ]
    msrs = [(k.upper(), r[k]) for k in (*_MSRS.values(), "apic_base") if k in r]
    lines += grid(msrs, 3, 16)
    return lines


register(Arch("x86", ("x86_64", "i386"), _detect, _decode, _format))
