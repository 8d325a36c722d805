"""LoongArch CPUs: the ``cpu`` VMSD of target/loongarch (``vmstate_loongarch_cpu``).

General registers are ``r0``..``r31`` (their ABI names in the text), the
floating-point registers ``f0``..``f31`` are the low 64 bits of the vector
registers; with LSX (``cpu/lsx``) and LASX (``cpu/lasx``) the whole 128- and
256-bit registers are ``vr0``.. and ``xr0``...  ``fcc0``..``fcc7`` are the
condition flags, ``fcsr0`` the control and status register; CSRs are named
as in the manual (``crmd``, ``prmd``, ``era``, ``badv``, ``save0``..,
``dmw0``..).  QEMU up to 8.0 keeps the FPRs in the section itself, later ones
in the ``cpu/fpu`` subsection (as 256-bit registers sliced into doublewords).
"""

from __future__ import annotations

from typing import Any

from ...vmstate.values import StateNode
from .base import Arch, CpuSection, field_index, grid, nodes, register, unsigned

ABI_NAMES = (
    "zero", "ra", "tp", "sp", "a0", "a1", "a2", "a3",
    "a4", "a5", "a6", "a7", "t0", "t1", "t2", "t3",
    "t4", "t5", "t6", "t7", "t8", "u0", "fp", "s0",
    "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8",
)  # fmt: skip


def _detect(cpu: CpuSection) -> str | None:
    st = cpu.state
    if st.field("env.gpr") is None or st.field("env.CSR_CRMD") is None:
        return None
    return "loongarch64"


def _vector_words(state: StateNode) -> dict[int, dict[int, int]]:
    """Register number -> doubleword index -> value, from every slice of ``env.fpr``."""
    out: dict[int, dict[int, int]] = {}
    for node in nodes(state):
        for fv in node.fields:
            if fv.desc.name != "env.fpr" or not isinstance(fv.value, list):
                continue
            for n, elem in enumerate(fv.value):
                if isinstance(elem, StateNode):  # fpu_reg / lsxh_reg / lasxh_reg: UD[k]
                    for part in elem.fields:
                        name = part.desc.name
                        if name.startswith("UD[") and part.value is not None:
                            out.setdefault(n, {})[int(name[3:-1])] = unsigned(int(part.value))
                elif elem is not None:  # QEMU <= 8.0: the 64-bit FPR itself
                    out.setdefault(n, {})[0] = unsigned(int(elem))
    return out


def _decode(cpu: CpuSection, arch: str) -> dict[str, Any]:
    f = field_index(cpu.state)
    out: dict[str, Any] = {"pc": unsigned(int(f["env.pc"]))}
    for n, v in enumerate(f["env.gpr"]):
        out[f"r{n}"] = unsigned(int(v))
    words = _vector_words(cpu.state)
    for n in range(32):
        w = words.get(n, {})
        out[f"f{n}"] = w.get(0, 0)
        if 1 in w:
            out[f"vr{n}"] = w[1] << 64 | w.get(0, 0)
        if 2 in w and 3 in w:
            out[f"xr{n}"] = w[3] << 192 | w[2] << 128 | w.get(1, 0) << 64 | w.get(0, 0)
    if f.get("env.fcsr0") is not None:
        out["fcsr0"] = unsigned(int(f["env.fcsr0"]), 32)
    for n, v in enumerate(f.get("env.cf") or []):
        out[f"fcc{n}"] = int(bool(v))
    for key, value in f.items():
        if not key.startswith("env.CSR_") or value is None:
            continue
        name = key[len("env.CSR_") :].lower()
        if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
            for n, v in enumerate(value):
                out[f"{name}{n}"] = unsigned(int(v))
        else:
            out[name] = unsigned(int(value))
    return out


def _format(r: dict[str, Any], arch: str) -> list[str]:
    lines = [f" PC={r['pc']:016x}  FCSR0={r.get('fcsr0', 0):08x}"]
    lines += grid([(f"r{n}/{ABI_NAMES[n]}", r[f"r{n}"]) for n in range(32)], 4, 16)
    skip = {"pc", "fcsr0"} | {f"r{n}" for n in range(32)}
    skip |= {f"{p}{n}" for p in ("f", "vr", "xr", "fcc") for n in range(32)}
    csrs = [(k.upper(), v) for k, v in r.items() if k not in skip]
    lines += grid(csrs, 4, 16)
    lines += grid([(f"f{n}", r[f"f{n}"]) for n in range(32)], 4, 16)
    if "fcc0" in r:
        lines.append(" ".join(f"FCC{n}={r[f'fcc{n}']}" for n in range(8)))
    for p, digits in (("vr", 32), ("xr", 64)):
        if f"{p}0" in r:
            lines += grid([(f"{p}{n}", f"{r[f'{p}{n}']:0{digits}x}") for n in range(32)], 1, 0)
    return lines


register(Arch("loongarch", ("loongarch64",), _detect, _decode, _format))
