"""PowerPC CPUs: the ``cpu`` VMSD of target/ppc (``vmstate_ppc_cpu``).

``cpu_pre_save`` copies the registers QEMU keeps outside ``env.spr`` into it
before saving (LR, CTR, XER as ``cpu_read_xer`` composes it, CFAR, the TCG
decrementer), so the SPR array is the architected view.  CR is rebuilt from
the eight 4-bit fields ``env.crf`` (``ppc_get_cr``).  SPRs are named with the
Book3S/POWER numbers (target/ppc/cpu.h); an SPR without a name here is listed
as ``SPR<number>`` when it is not zero.

Vector registers: ``vr0``..``vr31`` (128-bit, from ``cpu/altivec``) and
``vscr``; ``vsr0_lo``..``vsr31_lo`` are the low doublewords of VSR0..31 (the
halves that are not FPRs, from ``cpu/vsx``).  QEMU writes each AVR as its two
host-order 64-bit halves (``put_avr``: ``u64[0]`` first); qevm reads them as a
little-endian host wrote them (every host QEMU runs TCG or KVM ppc64 guests on
today but s390x), i.e. the low doubleword first.
"""

from __future__ import annotations

from typing import Any

from .base import Arch, CpuSection, be_int, field_index, grid, register, unsigned

SPR_XER, SPR_LR, SPR_CTR = 1, 8, 9
#: cpu_pre_save copies env.spe_fscr here (SPR_BOOKE_SPEFSCR) on every CPU model.
SPR_SPEFSCR = 0x200
#: SPR number -> name (POWER/Book3S 64-bit numbering).
SPR_NAMES: dict[int, str] = {
    0x011: "DSCR",
    0x012: "DSISR",
    0x013: "DAR",
    0x016: "DEC",
    0x019: "SDR1",
    0x01A: "SRR0",
    0x01B: "SRR1",
    0x01C: "CFAR",
    0x01D: "AMR",
    0x01F: "ACOP",
    0x030: "PIDR",
    0x03D: "IAMR",
    0x080: "TFHAR",
    0x081: "TFIAR",
    0x082: "TEXASR",
    0x083: "TEXASRU",
    0x088: "UCTRL",
    0x090: "TIDR",
    0x098: "CTRL",
    0x099: "FSCR",
    0x09D: "UAMOR",
    0x09F: "PSPB",
    0x0B0: "DPDES",
    0x0B4: "DAWR0",
    0x0B5: "DAWR1",
    0x0BA: "RPR",
    0x0BB: "CIABR",
    0x0BC: "DAWRX0",
    0x0BD: "DAWRX1",
    0x0BE: "HFSCR",
    0x100: "VRSAVE",
    0x10C: "TBL",
    0x10D: "TBU",
    0x110: "SPRG0",
    0x111: "SPRG1",
    0x112: "SPRG2",
    0x113: "SPRG3",
    0x114: "SPRG4",
    0x115: "SPRG5",
    0x116: "SPRG6",
    0x117: "SPRG7",
    0x11F: "PVR",
    0x130: "HSPRG0",
    0x131: "HSPRG1",
    0x132: "HDSISR",
    0x133: "HDAR",
    0x134: "SPURR",
    0x135: "PURR",
    0x136: "HDEC",
    0x137: "HIOR",
    0x139: "HRMOR",
    0x13A: "HSRR0",
    0x13B: "HSRR1",
    0x13E: "LPCR",
    0x13F: "LPIDR",
    0x150: "HMER",
    0x151: "HMEER",
    0x152: "PCR",
    0x153: "HEIR",
    0x15D: "AMOR",
    0x1BE: "TIR",
    0x1D0: "PTCR",
    0x1D4: "HASHKEYR",
    0x1D5: "HASHPKEYR",
    0x1D7: "HDEXCR",
    0x200: "SPEFSCR",
    0x300: "USIER",
    0x301: "UMMCR2",
    0x302: "UMMCRA",
    0x303: "UPMC1",
    0x304: "UPMC2",
    0x305: "UPMC3",
    0x306: "UPMC4",
    0x307: "UPMC5",
    0x308: "UPMC6",
    0x30B: "UMMCR0",
    0x30C: "USIAR",
    0x30D: "USDAR",
    0x30E: "UMMCR1",
    0x310: "SIER",
    0x311: "MMCR2",
    0x312: "MMCRA",
    0x313: "PMC1",
    0x314: "PMC2",
    0x315: "PMC3",
    0x316: "PMC4",
    0x317: "PMC5",
    0x318: "PMC6",
    0x31B: "MMCR0",
    0x31C: "SIAR",
    0x31D: "SDAR",
    0x31E: "MMCR1",
    0x324: "EBBHR",
    0x325: "EBBRR",
    0x326: "BESCR",
    0x32F: "TAR",
    0x330: "ASDR",
    0x33C: "DEXCR",
    0x350: "IC",
    0x351: "VTB",
    0x352: "LDBAR",
    0x357: "PSSCR",
    0x374: "PMCR",
    0x380: "PPR",
    0x382: "PPR32",
    0x3F0: "HID0",
    0x3FF: "PIR",
}
#: SPRs shown even when zero (the ones ``info registers`` prints).
_ALWAYS = (
    "SRR0", "SRR1", "PVR", "VRSAVE", "SPRG0", "SPRG1", "SPRG2", "SPRG3", "SPRG4", "SPRG5",
    "SPRG6", "SPRG7", "HSRR0", "HSRR1", "CFAR", "LPCR", "PTCR", "SDR1", "DAR", "DSISR",
    "HID0", "DEC", "HIOR", "LPIDR", "PIDR", "AMR", "IAMR", "HDEC", "PIR",
)  # fmt: skip


def _detect(cpu: CpuSection) -> str | None:
    st = cpu.state
    gpr = st.field("env.gpr")
    if gpr is None or st.field("env.crf") is None or st.field("env.nip") is None:
        return None
    return "ppc64" if gpr.desc.size == 8 else "ppc"


def _decode(cpu: CpuSection, arch: str) -> dict[str, Any]:
    f = field_index(cpu.state)
    bits = 64 if arch == "ppc64" else 32
    spr = [unsigned(int(v), bits) for v in f["env.spr"]]
    gpr = [unsigned(int(v), bits) for v in f["env.gpr"]]
    # qemu-system-ppc keeps the SPE upper halves separately (env.gprh).
    gprh = f.get("env.gprh")
    out: dict[str, Any] = {"nip": unsigned(int(f["env.nip"]), bits)}
    out["msr"] = unsigned(int(f["env.msr"]), bits)
    out["lr"] = spr[SPR_LR]
    out["ctr"] = spr[SPR_CTR]
    out["xer"] = spr[SPR_XER]
    cr = 0
    for field in f["env.crf"]:
        cr = cr << 4 | (int(field) & 0xF)
    out["cr"] = cr
    for n, v in enumerate(gpr):
        out[f"gpr{n}"] = v
    if gprh is not None:
        for n, v in enumerate(gprh):
            out[f"gprh{n}"] = unsigned(int(v), 32)
    fpu = cpu.state.subsection("cpu/fpu")
    if fpu is not None:
        # cpu/fpu's env.vsr elements are the FPRs (VsrD(0), big-endian).
        fprs = [be_int(v) for v in fpu.values("env.vsr")]
        for n, v in enumerate(fprs):
            out[f"fpr{n}"] = v
        if fpu.get("env.fpscr") is not None:
            out["fpscr"] = unsigned(int(fpu.get("env.fpscr")))
    altivec = cpu.state.subsection("cpu/altivec")
    if altivec is not None:
        for n, v in enumerate(altivec.values("env.vsr")):
            raw = bytes(v)
            out[f"vr{n}"] = be_int(raw[8:16]) << 64 | be_int(raw[:8])
        if altivec.get("vscr") is not None:
            out["vscr"] = be_int(altivec.get("vscr"))
    vsx = cpu.state.subsection("cpu/vsx")
    if vsx is not None:
        for n, v in enumerate(vsx.values("env.vsr")):
            out[f"vsr{n}_lo"] = be_int(v)
    if f.get("env.spe_acc") is not None:
        out["spe_acc"] = unsigned(int(f["env.spe_acc"]))
    named = {name: n for n, name in SPR_NAMES.items()}
    for name in _ALWAYS:
        out[name] = spr[named[name]]
    for n, v in enumerate(spr):
        name = SPR_NAMES.get(n, f"SPR{n}")
        if n in (SPR_XER, SPR_LR, SPR_CTR) or name in out or not v:
            continue
        out[name] = v
    sr = f.get("env.sr")
    if sr is not None:
        for n, v in enumerate(sr):
            out[f"sr{n}"] = unsigned(int(v), bits)
    return out


def _format(r: dict[str, Any], arch: str) -> list[str]:
    d = 16 if arch == "ppc64" else 8
    lines = [
        f"NIP {r['nip']:0{d}x}   LR {r['lr']:0{d}x} CTR {r['ctr']:0{d}x} XER {r['xer']:0{d}x}",
        f"MSR {r['msr']:0{d}x}",
    ]
    for i in range(0, 32, 4):
        lines.append(f"GPR{i:02d} " + " ".join(f"{r[f'gpr{n}']:0{d}x}" for n in range(i, i + 4)))
    lines.append(f"CR {r['cr']:08x}")
    if "fpr0" in r:
        for i in range(0, 32, 4):
            lines.append(f"FPR{i:02d} " + " ".join(f"{r[f'fpr{n}']:016x}" for n in range(i, i + 4)))
    if "fpscr" in r:
        lines.append(f"FPSCR {r['fpscr']:016x}")
    for n in range(0, 32, 2):
        if f"vr{n}" in r:
            lines.append(" ".join(f"VR{i:02d} {r[f'vr{i}']:032x}" for i in (n, n + 1)))
    if "vscr" in r:
        lines.append(f"VSCR {r['vscr']:08x}")
    core = {"nip", "msr", "lr", "ctr", "xer", "cr", "fpscr", "vscr", "spe_acc"}
    sprs = [
        (k, v)
        for k, v in r.items()
        if k not in core and not k.startswith(("gpr", "fpr", "sr", "vr", "vsr"))
    ]
    lines += grid(sprs, 4, d, sep=" ")
    srs = [(f"SR{n:02d}", r[f"sr{n}"]) for n in range(16) if f"sr{n}" in r]
    lines += grid(srs, 4, d, sep=" ")
    return lines


register(Arch("ppc", ("ppc64", "ppc"), _detect, _decode, _format))
