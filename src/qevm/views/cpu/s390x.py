"""s390x CPUs: the ``cpu`` VMSD of target/s390x (``vmstate_s390_cpu``).

The PSW is stored as QEMU keeps it.  Under TCG the condition code lives in
``cc_op`` while the CPU runs and is not migrated, so the CC bits of the
stored PSW mask may be stale (``info registers`` prints the mask with the CC
computed by ``s390_cpu_get_psw_mask``); :data:`PSW_MASK_CC` names those bits.
Floating-point registers are the high halves of vector registers 0..15.
The guarded-storage control block (``gs0``..``gs3``) is in the stream only
when the CPU model has the guarded-storage facility (``cpu/gscb``).
"""

from __future__ import annotations

from typing import Any

from .base import Arch, CpuSection, field_index, grid, register, unsigned

PSW_MASK_CC = 0x0000_3000_0000_0000
#: env.<field> -> register name for the scalar control state.
_SCALARS = (
    ("env.psa", "prefix"),
    ("env.fpc", "fpc"),
    ("env.cputm", "cpu_timer"),
    ("env.ckc", "clock_comparator"),
    ("env.todpr", "todpr"),
    ("env.gbea", "gbea"),
    ("env.pp", "pp"),
    ("env.pfault_token", "pfault_token"),
    ("env.pfault_compare", "pfault_compare"),
    ("env.pfault_select", "pfault_select"),
)


def _detect(cpu: CpuSection) -> str | None:
    st = cpu.state
    if st.field("env.psw.mask") is None or st.field("env.cregs") is None:
        return None
    return "s390x"


def _decode(cpu: CpuSection, arch: str) -> dict[str, Any]:
    f = field_index(cpu.state)
    out: dict[str, Any] = {
        "psw": {
            "mask": unsigned(int(f["env.psw.mask"])),
            "addr": unsigned(int(f["env.psw.addr"])),
        }
    }
    for n, v in enumerate(f["env.regs"]):
        out[f"r{n}"] = unsigned(int(v))
    for n, v in enumerate(f["env.cregs"]):
        out[f"c{n}"] = unsigned(int(v))
    for n, v in enumerate(f.get("env.aregs") or []):
        out[f"a{n}"] = unsigned(int(v), 32)
    for key, name in _SCALARS:
        if f.get(key) is not None:
            out[name] = unsigned(int(f[key]))
    high = [f.get(f"env.vregs[{n}][0]") for n in range(32)]
    low = [f.get(f"env.vregs[{n}][1]") for n in range(32)]
    for n in range(16):
        if high[n] is not None:
            out[f"f{n}"] = unsigned(int(high[n]))
    gscb = f.get("env.gscb")
    if gscb is not None:
        for n, v in enumerate(gscb):
            out[f"gs{n}"] = unsigned(int(v))
    # cpu/vregs (vector facility) carries the rest of each vector register.
    if all(v is not None for v in high + low):
        for n in range(32):
            out[f"v{n}"] = unsigned(int(high[n])) << 64 | unsigned(int(low[n]))
    return out


def _format(r: dict[str, Any], arch: str) -> list[str]:
    psw = r["psw"]
    lines = [f"PSW=mask {psw['mask']:016x} addr {psw['addr']:016x}"]
    lines += grid([(f"R{n:02d}", r[f"r{n}"]) for n in range(16)], 4, 16)
    if "v0" in r:
        lines += grid([(f"V{n:02d}", f"{r[f'v{n}']:032x}") for n in range(32)], 2, 32)
    else:
        lines += grid([(f"F{n:02d}", r[f"f{n}"]) for n in range(16) if f"f{n}" in r], 4, 16)
    if "fpc" in r:
        lines.append(f"FPC={r['fpc']:08x}")
    lines += grid([(f"C{n:02d}", r[f"c{n}"]) for n in range(16)], 4, 16)
    lines += grid([(f"A{n:02d}", r[f"a{n}"]) for n in range(16) if f"a{n}" in r], 4, 8)
    rest = [(k.upper(), r[k]) for _, k in _SCALARS if k in r and k != "fpc"]
    rest += [(f"GS{n}", r[f"gs{n}"]) for n in range(4) if f"gs{n}" in r]
    lines += grid(rest, 3, 16)
    return lines


register(Arch("s390x", ("s390x",), _detect, _decode, _format))
