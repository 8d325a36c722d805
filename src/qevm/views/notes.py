"""Per-CPU ELF notes as QEMU's ``dump-guest-memory`` writes them, from a stream's registers.

Layouts follow ``dump/dump.c`` and ``target/*/arch_dump.c``: for every CPU
(in index order, pid = index + 1) the architecture's notes, then on x86 one
QEMU CPU-state note per CPU.

======== ============================================================ ======== ==========
arch     notes per CPU (name, type)                                   e_machine byte order
======== ============================================================ ======== ==========
x86_64   CORE NT_PRSTATUS (64- or 32-bit layout); QEMU 0 after all    62 / 3   little
aarch64  CORE NT_PRSTATUS, CORE NT_PRFPREG, LINUX NT_ARM_SVE (SVE)    183      SCTLR_EL1.EE
riscv64  CORE NT_PRSTATUS                                             243      mstatus.UBE
ppc64    CORE NT_PRSTATUS, NT_PRFPREG, NT_PPC_VMX, NT_PPC_VSX,        21       interrupt
         NT_PPC_SPE                                                            endianness
s390x    CORE NT_PRSTATUS, NT_FPREGSET; LINUX NT_S390_PREFIX, _CTRS,  22       big
         _TIMER, _TODCMP, _TODPREG, _VXRS_LOW, _VXRS_HIGH, _GS_CB
loongarch CORE NT_PRSTATUS, CORE NT_PRFPREG                           258      little
======== ============================================================ ======== ==========

Where QEMU takes a value from state the stream does not carry, the choice
made is said where the value is built.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import QevmError

if TYPE_CHECKING:
    from ..migration import Migration
    from .cpu import CpuState

EM_386, EM_X86_64, EM_AARCH64, EM_ARM = 3, 62, 183, 40
EM_PPC, EM_PPC64, EM_S390, EM_RISCV, EM_LOONGARCH = 20, 21, 22, 243, 258
NT_PRSTATUS, NT_PRFPREG = 1, 2
NT_PPC_VMX, NT_PPC_SPE, NT_PPC_VSX = 0x100, 0x101, 0x102
NT_S390_TIMER, NT_S390_TODCMP, NT_S390_TODPREG = 0x301, 0x302, 0x303
NT_S390_CTRS, NT_S390_PREFIX = 0x304, 0x305
NT_S390_VXRS_LOW, NT_S390_VXRS_HIGH, NT_S390_GS_CB = 0x309, 0x30A, 0x30B
NT_ARM_SVE = 0x405

#: The SVE vector lengths (as a bit map of VQ - 1) QEMU's TCG ``max`` CPU supports:
#: all of 1..16.  Which lengths a CPU supports is a CPU property, not migrated.
SVE_VQ_MAP_ALL = (1 << 16) - 1
#: Streaming SVE lengths of TCG ``max`` (SVE_VQ_POW2_MAP: 128..2048 bits, powers of 2).
SME_VQ_MAP_POW2 = 0b1000_0000_1000_1011


@dataclass
class Target:
    """ELF machine, byte order and CPU notes for a stream."""

    machine: int
    endian: str
    notes: bytes


def note(name: bytes, ntype: int, desc: bytes, e: str) -> bytes:
    """One ELF note: header in byte order ``e``, name and descriptor padded to 4 bytes."""
    name_z = name + b"\0"
    hdr = struct.pack(e + "III", len(name_z), len(desc), ntype)
    return hdr + name_z + bytes(-len(name_z) % 4) + desc + bytes(-len(desc) % 4)


def _prstatus(pid: int, regs: bytes, e: str, tail: int) -> bytes:
    """Linux's 64-bit ``struct elf_prstatus``: pr_pid at 32, pr_reg at 112, ``tail`` bytes after."""
    return bytes(32) + struct.pack(e + "I", pid) + bytes(76) + regs + bytes(tail)


# -- x86 ---------------------------------------------------------------------------


def _x86_prstatus64(r: dict[str, Any], pid: int) -> bytes:
    seg = lambda s: r[s]["selector"]  # noqa: E731
    regs = [
        r["r15"], r["r14"], r["r13"], r["r12"], r["rbp"], r["rbx"], r["r11"], r["r10"],
        r["r9"], r["r8"], r["rax"], r["rcx"], r["rdx"], r["rsi"], r["rdi"], 0,
        r["rip"], seg("cs"), r["rflags"], r["rsp"], seg("ss"), r["fs"]["base"], r["gs"]["base"],
        seg("ds"), seg("es"), seg("fs"), seg("gs"),
    ]  # fmt: skip
    return _prstatus(pid, struct.pack("<27Q", *regs), "<", 8)


def _x86_prstatus32(r: dict[str, Any], pid: int) -> bytes:
    m = 0xFFFFFFFF
    seg = lambda s: r[s]["selector"] & 0xFFFF  # noqa: E731
    body = struct.pack(
        "<7I8H2I2H2I2H",
        r["rbx"] & m, r["rcx"] & m, r["rdx"] & m, r["rsi"] & m, r["rdi"] & m, r["rbp"] & m,
        r["rax"] & m,
        seg("ds"), 0, seg("es"), 0, seg("fs"), 0, seg("gs"), 0,
        0, r["rip"] & m, seg("cs"), 0, r["rflags"] & m, r["rsp"] & m, seg("ss"), 0,
    )  # fmt: skip
    return bytes(24) + struct.pack("<I", pid) + bytes(44) + body + bytes(4)


def _qemu_cpu_state(r: dict[str, Any]) -> bytes:
    """``QEMUCPUState`` (target/i386/arch_dump.c), version 1, 0x1b8 bytes."""
    gprs = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp")
    gprs += tuple(f"r{i}" for i in range(8, 16)) + ("rip", "rflags")
    out = struct.pack("<II", 1, 0x1B8) + struct.pack("<18Q", *(r[k] for k in gprs))
    for s in ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt"):
        seg = r[s]
        out += struct.pack(
            "<IIIIQ", seg.get("selector", 0), seg["limit"], seg.get("flags", 0), 0, seg["base"]
        )
    out += struct.pack("<5Q", r["cr0"], 0, r["cr2"], r["cr3"], r["cr4"])
    return out + struct.pack("<Q", r.get("kernel_gs_base", 0))


def _x86_notes(found: list[CpuState], e: str, machine: int) -> tuple[bytes, list[str]]:
    lma = machine == EM_X86_64
    out = []
    for c in found:
        pr = (_x86_prstatus64 if lma else _x86_prstatus32)(c.registers, c.index + 1)
        out.append(note(b"CORE", NT_PRSTATUS, pr, "<"))
    for c in found:
        out.append(note(b"QEMU", 0, _qemu_cpu_state(c.registers), "<"))
    return b"".join(out), []


# -- aarch64 -----------------------------------------------------------------------


def _arm_el(r: dict[str, Any]) -> int:
    """The current exception level (``arm_current_el``) of an AArch64-capable CPU."""
    if "el" in r:
        return int(r["el"])
    # AArch32 state: User mode is EL0, Hyp EL2, Monitor EL3, the rest EL1
    return {0x10: 0, 0x1A: 2, 0x16: 3}.get(r["cpsr"] & 0x1F, 1)


def sve_vq(r: dict[str, Any]) -> tuple[int, int]:
    """(current, maximum) SVE vector length in quadwords, as ``sve_vqm1_for_el`` finds them.

    Which lengths the CPU supports (``sve_vq.map``, ``sme_vq.map``) are CPU
    properties that are not migrated; they are taken to be those of TCG's
    ``max`` CPU (every length up to 2048 bits; powers of two in streaming
    mode).  The lengths the guest selected (ZCR_ELx / SMCR_ELx) are migrated,
    so the current length is right whenever the guest chose one the CPU has.
    """
    el = _arm_el(r)
    have_el2, have_el3 = "HCR_EL2" in r, "SCR_EL3" in r
    scr = r.get("SCR_EL3", 1)
    secure = have_el3 and not scr & 1
    el2_enabled = have_el2 and (not secure or bool(scr >> 18 & 1))
    hcr = r.get("HCR_EL2", 0) if el2_enabled else 0
    e2h, tge = bool(hcr >> 34 & 1), bool(hcr >> 27 & 1)
    in_host = e2h and (el == 2 or (el == 0 and tge))
    streaming = bool(r.get("SVCR", 0) & 1)
    prefix, vq_map = ("SMCR", SME_VQ_MAP_POW2) if streaming else ("ZCR", SVE_VQ_MAP_ALL)
    length = 15
    if el <= 1 and not in_host:
        length = min(length, r.get(f"{prefix}_EL1", 0) & 0xF)
    if el <= 2 and el2_enabled:
        length = min(length, r.get(f"{prefix}_EL2", 0) & 0xF)
    if have_el3:
        length = min(length, r.get(f"{prefix}_EL3", 0) & 0xF)
    usable = vq_map & ((1 << (length + 1)) - 1)
    vq = usable.bit_length() if usable else (vq_map & -vq_map).bit_length()
    return vq, SVE_VQ_MAP_ALL.bit_length()


def _sve_size(vq: int) -> int:
    """``sve_size_vq``: header, 32 Z, 16 P and FFR, FPSR and FPCR, each part 16-aligned."""
    fpsr = -(-(16 + vq * 16 * 32 + vq * 2 * 17) // 16) * 16
    return -(-(fpsr + 8) // 16) * 16


def _arm_sve(r: dict[str, Any], e: str) -> bytes:
    """The NT_ARM_SVE descriptor (``struct user_sve_header`` + SVE_PT_REGS_SVE payload)."""
    vq, max_vq = sve_vq(r)
    size = _sve_size(vq)
    buf = bytearray(size)
    struct.pack_into(e + "IIHHHH", buf, 0, size, _sve_size(max_vq), vq * 16, max_vq * 16, 1, 0)
    vbytes, pbytes = vq * 16, vq * 2
    # QEMU copies Z and P as little-endian 64-bit words (sve_bswap64 is a no-op
    # on little-endian hosts) whatever the dump's byte order
    for n in range(32):
        off = 16 + vbytes * n
        buf[off : off + vbytes] = (r[f"z{n}"] & ((1 << (8 * vbytes)) - 1)).to_bytes(
            vbytes, "little"
        )
    for n in range(17):
        off = 16 + vbytes * 32 + pbytes * n
        value = r["ffr" if n == 16 else f"p{n}"] & ((1 << (8 * pbytes)) - 1)
        buf[off : off + pbytes] = value.to_bytes(pbytes, "little")
    fpsr = -(-(16 + vbytes * 32 + pbytes * 17) // 16) * 16
    struct.pack_into(e + "II", buf, fpsr, r["fpsr"], r["fpcr"])
    return bytes(buf)


def _aarch64_notes(found: list[CpuState], e: str, machine: int) -> tuple[bytes, list[str]]:
    out = []
    warnings = []
    for c in found:
        r = c.registers
        regs = [r[f"x{i}"] for i in range(31)] + [r["sp"], r["pc"], r["pstate"]]
        pr = _prstatus(c.index + 1, struct.pack(e + "34Q", *regs) + struct.pack(e + "I", 1), e, 4)
        out.append(note(b"CORE", NT_PRSTATUS, pr, e))
        vregs = []
        for i in range(32):
            lo, hi = r[f"q{i}"] & (1 << 64) - 1, r[f"q{i}"] >> 64
            # each 128-bit V register in the dump's byte order
            vregs += [lo, hi] if e == "<" else [hi, lo]
        fp = struct.pack(e + "64QII", *vregs, r["fpsr"], r["fpcr"]) + bytes(8)
        out.append(note(b"CORE", NT_PRFPREG, fp, e))
        if "z0" in r:
            out.append(note(b"LINUX", NT_ARM_SVE, _arm_sve(r, e), e))
            vq, _ = sve_vq(r)
            if vq > 8:
                warnings.append(
                    f"CPU {c.index}: SVE Z register bits above 1024 are not migrated; "
                    "written as zeros"
                )
    return b"".join(out), warnings


# -- riscv64 -----------------------------------------------------------------------


def _riscv64_notes(found: list[CpuState], e: str, machine: int) -> tuple[bytes, list[str]]:
    names = ("ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1")
    names += tuple(f"a{i}" for i in range(8)) + tuple(f"s{i}" for i in range(2, 12))
    names += ("t3", "t4", "t5", "t6")
    out = []
    for c in found:
        r = c.registers
        regs = struct.pack(e + "32Q", r["pc"], *(r[n] for n in names))
        out.append(note(b"CORE", NT_PRSTATUS, _prstatus(c.index + 1, regs, e, 8), e))
    return b"".join(out), []


# -- ppc64 -------------------------------------------------------------------------

#: PVR >> 16 of the server CPUs whose LPCR has ILE (POWER5+ and later)
_PPC_LPCR_ILE = {0x3A, 0x3B, 0x3F, 0x4A, 0x4B, 0x4C, 0x4D, 0x4E, 0x80, 0x82}
#: ... of those with an HV bit in their MSR mask (POWER8 and later) and of ISA 3.0 ones
_PPC_HV = {0x4B, 0x4C, 0x4D, 0x4E, 0x80, 0x82}
_PPC_ISA300 = {0x4E, 0x80, 0x82}
LPCR_ILE = 1 << 25
HID0_HILE, HID0_POWER9_HILE = 1 << 44, 1 << 59
MSR_ILE = 1 << 16


def ppc_little_endian(r: dict[str, Any], machine_type: str | None) -> bool:
    """``ppc_interrupts_little_endian`` of the first CPU: the byte order QEMU dumps in.

    On pseries the virtual hypervisor takes the HV bit out of the MSR mask, so
    LPCR[ILE] decides (MSR[ILE] on CPUs without it); elsewhere a CPU with
    hypervisor mode uses HID0's HILE bit.
    """
    family = r.get("PVR", 0) >> 16
    pseries = (machine_type or "").startswith("pseries")
    if family in _PPC_HV and not pseries:
        bit = HID0_POWER9_HILE if family in _PPC_ISA300 else HID0_HILE
        return bool(r.get("HID0", 0) & bit)
    if family in _PPC_LPCR_ILE:
        return bool(r.get("LPCR", 0) & LPCR_ILE)
    return bool(r.get("msr", 0) & MSR_ILE)


def _ppc64_notes(found: list[CpuState], e: str, machine: int) -> tuple[bytes, list[str]]:
    out = []
    for c in found:
        r = c.registers
        pid = c.index + 1
        regs = [r[f"gpr{i}"] for i in range(32)]
        # nip, msr, orig_gpr3, ctr, link, xer, ccr, softe, trap, dar, dsisr, result
        regs += [r["nip"], r["msr"], 0, r["ctr"], r["lr"], r["xer"], r["cr"], 0, 0, 0, 0, 0]
        out.append(
            note(b"CORE", NT_PRSTATUS, _prstatus(pid, struct.pack(e + "44Q", *regs), e, 40), e)
        )
        fprs = [r.get(f"fpr{i}", 0) for i in range(32)]
        out.append(note(b"CORE", NT_PRFPREG, struct.pack(e + "33Q", *fprs, r.get("fpscr", 0)), e))
        order = "little" if e == "<" else "big"
        vmx = b"".join(r.get(f"vr{i}", 0).to_bytes(16, order) for i in range(32))
        # VSCR in the last word of its quadword; VRSAVE is left zero by QEMU
        vmx += bytes(12) + struct.pack(e + "I", r.get("vscr", 0)) + bytes(16)
        out.append(note(b"CORE", NT_PPC_VMX, vmx, e))
        vsx = struct.pack(e + "32Q", *(r.get(f"vsr{i}_lo", 0) for i in range(32)))
        out.append(note(b"CORE", NT_PPC_VSX, vsx, e))
        # QEMU leaves the SPE upper halves (evr) zero
        spe = bytes(128) + struct.pack(e + "QI", r.get("spe_acc", 0), r.get("SPEFSCR", 0))
        out.append(note(b"CORE", NT_PPC_SPE, spe, e))
    return b"".join(out), []


# -- s390x -------------------------------------------------------------------------


def _s390x_notes(found: list[CpuState], e: str, machine: int) -> tuple[bytes, list[str]]:
    out = []
    for c in found:
        r = c.registers
        psw = r["psw"]
        regs = struct.pack(">18Q", psw["mask"], psw["addr"], *(r[f"r{i}"] for i in range(16)))
        regs += struct.pack(">16I", *(r.get(f"a{i}", 0) for i in range(16)))
        out.append(note(b"CORE", NT_PRSTATUS, _prstatus(c.index + 1, regs, ">", 16), ">"))
        # a CPU without the vector facility has only the FPRs (the high halves)
        vregs = [r.get(f"v{i}", r.get(f"f{i}", 0) << 64) for i in range(32)]
        fpr = struct.pack(">II16Q", r.get("fpc", 0), 0, *(v >> 64 for v in vregs[:16]))
        out.append(note(b"CORE", NT_PRFPREG, fpr, ">"))
        linux = [
            (NT_S390_PREFIX, struct.pack(">I", r.get("prefix", 0) & 0xFFFFFFFF)),
            (NT_S390_CTRS, struct.pack(">16Q", *(r[f"c{i}"] for i in range(16)))),
            (NT_S390_TIMER, struct.pack(">Q", r.get("cpu_timer", 0))),
            (NT_S390_TODCMP, struct.pack(">Q", r.get("clock_comparator", 0))),
            (NT_S390_TODPREG, struct.pack(">I", r.get("todpr", 0) & 0xFFFFFFFF)),
            (NT_S390_VXRS_LOW, struct.pack(">16Q", *(v & (1 << 64) - 1 for v in vregs[:16]))),
            (NT_S390_VXRS_HIGH, b"".join(v.to_bytes(16, "big") for v in vregs[16:])),
            # without the guarded-storage facility the control block is not
            # migrated and a CPU cannot have set it: zeros
            (NT_S390_GS_CB, struct.pack(">4Q", *(r.get(f"gs{i}", 0) for i in range(4)))),
        ]
        out += [note(b"LINUX", t, d, ">") for t, d in linux]
    return b"".join(out), []


# -- loongarch64 -------------------------------------------------------------------


def _loongarch64_notes(found: list[CpuState], e: str, machine: int) -> tuple[bytes, list[str]]:
    out = []
    for c in found:
        r = c.registers
        # struct user_pt_regs: r0..r31, orig_a0 (0), csr_era, csr_badv, 10 reserved
        regs = struct.pack(e + "35Q", *(r[f"r{i}"] for i in range(32)), 0, r["era"], r["badv"])
        regs += bytes(80) + struct.pack(e + "I", 1)  # pr_fpvalid
        out.append(note(b"CORE", NT_PRSTATUS, _prstatus(c.index + 1, regs, e, 4), e))
        fcc = sum(r.get(f"fcc{i}", 0) << (8 * i) for i in range(8))
        fp = struct.pack(e + "33QI", *(r[f"f{i}"] for i in range(32)), fcc, r.get("fcsr0", 0))
        out.append(note(b"CORE", NT_PRFPREG, fp, e))
    return b"".join(out), []


# -- choosing ----------------------------------------------------------------------

NoteBuilder = Callable[[list["CpuState"], str, int], tuple[bytes, list[str]]]
#: arch -> the function that builds the notes of all CPUs
BUILDERS: dict[str, NoteBuilder] = {
    "x86_64": _x86_notes,
    "i386": _x86_notes,
    "aarch64": _aarch64_notes,
    "riscv64": _riscv64_notes,
    "ppc64": _ppc64_notes,
    "s390x": _s390x_notes,
    "loongarch64": _loongarch64_notes,
}


def machine_of(cpu: CpuState, machine_type: str | None = None) -> tuple[int, str]:
    """ELF machine and byte order for the first CPU (as QEMU's cpu_get_dump_info picks them)."""
    r = cpu.registers
    if cpu.arch in ("x86_64", "i386"):
        return (EM_X86_64 if r.get("efer", 0) & (1 << 10) else EM_386), "<"
    if cpu.arch == "aarch64":
        return EM_AARCH64, ">" if r.get("SCTLR_EL1", 0) & (1 << 25) else "<"
    if cpu.arch in ("riscv64", "riscv32"):
        return EM_RISCV, ">" if r.get("mstatus", 0) & (1 << 6) else "<"
    if cpu.arch == "ppc64":
        return EM_PPC64, "<" if ppc_little_endian(r, machine_type) else ">"
    return {
        "arm": (EM_ARM, "<"),
        "ppc": (EM_PPC, ">"),
        "s390x": (EM_S390, ">"),
        "loongarch64": (EM_LOONGARCH, "<"),
    }.get(cpu.arch, (0, "<"))


def target_for(mig: Migration) -> tuple[Target, list[str]]:
    """The ELF machine, byte order and notes of ``mig``'s CPUs, plus warnings."""
    from .cpu import cpus

    try:
        found = cpus(mig)
    except QevmError as e:
        return Target(0, "<", b""), [f"no CPU notes: {e}"]
    if not found:
        return Target(0, "<", b""), ["no CPU notes: the stream has no CPU"]
    machine, endian = machine_of(found[0], mig.machine)
    build = BUILDERS.get(found[0].arch)
    if build is None:
        return Target(machine, endian, b""), [f"no CPU notes for {found[0].arch} (memory only)"]
    try:
        notes, warnings = build(found, endian, machine)
    except KeyError as e:  # a register the notes need is not in the stream's cpu state
        return Target(machine, endian, b""), [f"no CPU notes: register {e} is not in the stream"]
    return Target(machine, endian, notes), warnings
