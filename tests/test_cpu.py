"""``qevm cpu``: named registers equal ``info registers -a`` of the same paused VM.

Every stream with a ``NAME.regs.txt`` next to it is checked, CPU by CPU.  The
comparisons follow how QEMU prints (target/*/cpu-dump.c, cpu.c, cpu_init.c):
a value printed with 8 hex digits is QEMU's ``(uint32_t)`` cast of the
register, so only its low 32 bits are compared.  Where the printed value is
not what the stream holds, the reason is QEMU's code and is said next to the
comparison.
"""

from __future__ import annotations

import functools
import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from conftest import DATA, LINUX, all_stream_paths, meta, unpack

import qevm
from qevm.cli import main
from qevm.views.cpu import CpuState, cpus
from qevm.views.cpu.arm_cpregs import sysreg_name
from qevm.views.cpu.riscv import ABI_NAMES, FPR_NAMES
from qevm.views.cpu.s390x import PSW_MASK_CC

STREAM_FILES = all_stream_paths()


def regs_path(stream: Path) -> Path:
    return stream.parent / (stream.name.removesuffix(".xz").removesuffix(".mig") + ".regs.txt")


WITH_REGS = sorted(n for n, p in STREAM_FILES.items() if regs_path(p).exists())


def parse_info_registers(text: str) -> dict[int, list[str]]:
    """``info registers -a`` output as lines per CPU (blocks start with ``CPU#N``)."""
    out: dict[int, list[str]] = {}
    cur: list[str] | None = None
    for line in text.splitlines():
        m = re.fullmatch(r"CPU#(\d+)", line.strip())
        if m:
            cur = out.setdefault(int(m.group(1)), [])
        elif cur is not None and line.strip():
            cur.append(line)
    return out


def _qemu_version(info: dict) -> object:
    return info.get("qemu_version") or info.get("qemu_version_src")


@functools.cache
def decoded(name: str) -> tuple[list[CpuState], str | None]:
    """The CPUs of stream ``name`` (description-less streams borrow one) and its machine."""
    path = STREAM_FILES[name]
    with qevm.open(unpack(path)) as mig:
        if mig.description is not None:
            return cpus(mig), mig.machine
        machine = mig.machine
    donor = _description_donor(name, machine)
    if donor is None:
        pytest.skip(f"{name} has no description and no stream of the same build lends one")
    with qevm.open(unpack(path), desc=unpack(donor)) as mig:
        return cpus(mig), mig.machine


def _description_donor(name: str, machine: str | None) -> Path | None:
    """A stream of the same QEMU version and machine type that has a description."""
    path = STREAM_FILES[name]
    version = _qemu_version(meta(path))
    for other, p in STREAM_FILES.items():
        if other == name or p.parent != path.parent or _qemu_version(meta(p)) != version:
            continue
        with qevm.open(unpack(p), decode_devices=False) as mig:
            if mig.has_description and mig.machine == machine:
                return p
    return None


def same(ours: int, printed: str) -> bool:
    """Whether ``ours`` prints as ``printed`` (QEMU casts to the printed width)."""
    return ours & ((1 << 4 * len(printed)) - 1) == int(printed, 16)


class Checker:
    """Compares printed values with one CPU's registers and counts them."""

    def __init__(self, cpu: CpuState) -> None:
        self.cpu = cpu
        self.regs = cpu.registers
        self.count = 0

    def eq(self, key: str, printed: str, ours: int | None = None) -> None:
        if ours is None:
            assert key in self.regs, f"cpu {self.cpu.index}: no register {key!r}"
            ours = self.regs[key]
        assert same(ours, printed), f"cpu {self.cpu.index} {key}: {ours:#x} != {printed}"
        self.count += 1


# -- x86 -----------------------------------------------------------------------

_X86_SCALAR = re.compile(r"\b([A-Z][A-Z0-9]*) ?=([0-9a-f]+)\b")
_X86_SEG = re.compile(
    r"^(ES |CS |SS |DS |FS |GS |LDT|TR )=([0-9a-f]{4}) ([0-9a-f]+) ([0-9a-f]{8}) ([0-9a-f]{8})"
)
_X86_TABLE = re.compile(r"^(GDT|IDT)=\s+([0-9a-f]+) ([0-9a-f]{8})")
_X86_FPR = re.compile(r"FPR(\d)=([0-9a-f]{16}) ([0-9a-f]{4})")
_X86_VEC = re.compile(r"\b([XYZ])MM(\d\d)=((?:[0-9a-f]{16} ?)+)")


def _x86_key(printed: str, regs: dict) -> str | None:
    p = printed.lower()
    if p[1:] in ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp"):
        return ("r" if "rax" in regs else "e") + p[1:]
    if p in ("rip", "eip"):
        return "rip" if "rip" in regs else "eip"
    if p in ("rfl", "efl"):
        return "rflags" if "rflags" in regs else "eflags"
    if re.fullmatch(r"r\d+|cr[0234]|dr[0-7]|efer|fcw|fsw|ftw|mxcsr|cpl", p):
        return p
    return None  # II, A20, SMM, HLT, DPL: not registers


def check_x86(c: Checker, lines: list[str]) -> None:
    r = c.regs
    for line in lines:
        m = _X86_SEG.match(line)
        if m:
            seg = r[m.group(1).strip().lower()]
            c.eq("selector", m.group(2), seg["selector"])
            c.eq("base", m.group(3), seg["base"])
            c.eq("limit", m.group(4), seg["limit"])
            # x86_cpu_dump_seg_cache prints flags & 0x00ffff00: QEMU keeps the
            # raw descriptor word, whose low byte and top byte are base bits.
            c.eq("flags", m.group(5), seg["flags"] & 0x00FFFF00)
            continue
        m = _X86_TABLE.match(line)
        if m:
            table = r[m.group(1).lower()]
            c.eq("base", m.group(2), table["base"])
            c.eq("limit", m.group(3), table["limit"])
            continue
        for m in _X86_FPR.finditer(line):
            val = r[f"fpr{m.group(1)}"]
            c.eq(f"fpr{m.group(1)}", m.group(2), val & (1 << 64) - 1)
            c.eq(f"fpr{m.group(1)}", m.group(3), val >> 64)
        vec = list(_X86_VEC.finditer(line))
        for m in vec:
            # XMM/YMM/ZMM print their quadwords high to low; the XMM part is the
            # last two.
            q = m.group(3).split()
            c.eq(f"xmm{int(m.group(2))}", q[-2] + q[-1])
        if vec or line.startswith(("ES ", "CS ", "SS ", "DS ", "FS ", "GS ")):
            continue
        for m in _X86_SCALAR.finditer(line):
            key = _x86_key(m.group(1), r)
            if key is not None:
                c.eq(key, m.group(2))


# -- Arm -----------------------------------------------------------------------


def check_arm(c: Checker, lines: list[str]) -> None:
    r = c.regs
    text = "\n".join(lines)
    for name, value in re.findall(r"\b(PC|SP|X\d\d)=([0-9a-f]{16})", text):
        c.eq(name.lower() if name[0] != "X" else f"x{int(name[1:])}", value)
    m = re.search(r"PSTATE=([0-9a-f]+) [-NZCV]{4} (?:N?S )?EL(\d)([ht])", text)
    if m:
        c.eq("pstate", m.group(1))
        c.eq("el", m.group(2))
        c.eq("SPSel", "1" if m.group(3) == "h" else "0", r["pstate"] & 1)
    for name, value in re.findall(r"\bR(\d\d)=([0-9a-f]{8})", text):
        c.eq(f"r{int(name)}", value)
    m = re.search(r"\bPSR=([0-9a-f]{8})", text)
    if m:
        c.eq("cpsr", m.group(1))
    m = re.search(r"FPCR=([0-9a-f]+) FPSR=([0-9a-f]+)", text)
    if m:
        c.eq("fpcr", m.group(1))
        c.eq("fpsr", m.group(2))
    for n, hi, lo in re.findall(r"\bQ(\d\d)=([0-9a-f]{16}):([0-9a-f]{16})", text):
        c.eq(f"q{int(n)}", hi + lo)
    for n, value in re.findall(r"\bd(\d\d)=([0-9a-f]{16})", text):
        c.eq(f"d{int(n)}", value)


# -- RISC-V --------------------------------------------------------------------

#: CSRs every QEMU version's dump prints (riscv_cpu_dump_state's list) that
#: are migrated: qevm must report each one it finds printed.
RISCV_REQUIRED = {
    "mhartid", "mstatus", "hstatus", "vsstatus", "mip", "mie", "mideleg", "hideleg",
    "medeleg", "hedeleg", "mtvec", "stvec", "vstvec", "mepc", "sepc", "vsepc", "mcause",
    "scause", "vscause", "mtval", "stval", "htval", "mtval2", "mscratch", "sscratch", "satp",
}  # fmt: skip
_PRIV = {"U": 0, "S": 1, "M": 3}
MIP_VSTIP = 1 << 6
MISA_H = 1 << 7
#: MIP_SGEIP | VS_MODE_INTERRUPTS (VSSIP, VSTIP, VSEIP).
HS_MODE_INTERRUPTS = 0x1444


def check_riscv(c: Checker, lines: list[str]) -> None:
    r = c.regs
    for line in lines:
        pairs = re.findall(r"([xf])(\d+)/(\w+)\s+([0-9a-f]+)", line)
        for kind, n, abi, value in pairs:
            names = ABI_NAMES if kind == "x" else FPR_NAMES
            assert names[int(n)] == abi
            c.eq(abi, value)
        if pairs:
            continue
        m = re.fullmatch(r"\s*priv\s+([MSU])", line)
        if m:
            c.eq("priv", f"{_PRIV[m.group(1)]:x}")
            continue
        m = re.fullmatch(r"\s*V\s+=?\s*(\d)", line)
        if m:
            c.eq("virt", m.group(1))
            continue
        m = re.fullmatch(r"\s*([a-z][a-z0-9]*)\s+([0-9a-f]+)\s*", line)
        if not m:
            continue
        name, value = m.groups()
        if name in RISCV_REQUIRED or name == "pc":
            assert name in r, f"cpu {c.cpu.index}: {name} is printed but not reported"
        if name == "mideleg" and r["misa"] & MISA_H:
            # rmw_mideleg64 sets HS_MODE_INTERRUPTS in env->mideleg on every
            # access when the H extension is present, reads included: the dump
            # that printed mideleg set them, and the stream was saved after it.
            c.eq(name, f"{int(value, 16) | HS_MODE_INTERRUPTS:x}", r[name] | HS_MODE_INTERRUPTS)
        elif name == "mip":
            # rmw_mip64 ORs in VSTIP from env->vstime_irq, which is not migrated.
            c.eq(name, f"{int(value, 16) & ~MIP_VSTIP:x}", r[name] & ~MIP_VSTIP)
        elif name in r:
            c.eq(name, value)


# -- PowerPC -------------------------------------------------------------------

#: Printed values that are not in the stream: HF (hflags, recomputed), TB (the
#: time base, read from the clock) and RES (the reservation, a subsection only
#: while one is held).
_PPC_NOT_STATE = {"HF", "TB", "RES", "DECR"}
_PPC_CORE = {"NIP": "nip", "LR": "lr", "CTR": "ctr", "XER": "xer", "MSR": "msr", "CR": "cr"}


def check_ppc(c: Checker, lines: list[str]) -> None:
    r = c.regs
    for line in lines:
        m = re.match(r"(GPR|FPR)(\d\d)((?: [0-9a-f]{16})+)", line)
        if m:
            for i, value in enumerate(m.group(3).split()):
                c.eq(f"{m.group(1).lower()}{int(m.group(2)) + i}", value)
            continue
        m = re.search(r"\bDECR (\d+)", line)
        if m and r["DEC"]:
            # QEMU 7.2's cpu_pre_save does not save the TCG decrementer (later
            # versions store cpu_ppc_load_decr()); then the slot holds 0.
            c.eq("DEC", f"{int(m.group(1)):x}")
        for name, value in re.findall(r"\b([A-Z][A-Z0-9]*) +([0-9a-f]{8,16})\b", line):
            if name in _PPC_NOT_STATE or name in ("GPR", "FPR") or line.startswith("TB "):
                continue
            key = _PPC_CORE.get(name) or ("fpscr" if name == "FPSCR" else name)
            c.eq(key, value)


# -- s390x ---------------------------------------------------------------------


def check_s390x(c: Checker, lines: list[str]) -> None:
    r = c.regs
    text = "\n".join(lines)
    m = re.search(r"PSW=mask ([0-9a-f]{16}) addr ([0-9a-f]{16})", text)
    assert m
    # s390_cpu_get_psw_mask puts the CC from cc_op into the printed mask; TCG
    # does not migrate cc_op, so the stored mask's CC bits are not the live CC.
    c.eq("psw.mask", f"{int(m.group(1), 16) & ~PSW_MASK_CC:016x}", r["psw"]["mask"] & ~PSW_MASK_CC)
    c.eq("psw.addr", m.group(2), r["psw"]["addr"])
    for kind, n, value in re.findall(r"\b([RVFC])(\d\d)=([0-9a-f]+)", text):
        c.eq(f"{kind.lower()}{int(n)}", value)
    m = re.search(r"\bFPC=([0-9a-f]{8})", text)
    if m:
        c.eq("fpc", m.group(1))


CHECKERS = {
    "x86_64": check_x86,
    "i386": check_x86,
    "aarch64": check_arm,
    "arm": check_arm,
    "riscv64": check_riscv,
    "riscv32": check_riscv,
    "ppc64": check_ppc,
    "ppc": check_ppc,
    "s390x": check_s390x,
}
#: Fewest values a CPU's comparison must cover (guards against parsing nothing).
MINIMUM = {"x86": 60, "aarch64": 34, "arm": 17, "riscv": 66, "ppc": 70, "s390x": 50}


def compare(cpu: CpuState, lines: list[str]) -> int:
    """Check one CPU against its ``info registers`` lines; the number of values compared."""
    c = Checker(cpu)
    CHECKERS[cpu.arch](c, lines)
    return c.count


def _minimum(arch: str) -> int:
    for prefix, n in MINIMUM.items():
        if arch.startswith(prefix):
            return n
    raise AssertionError(arch)


@pytest.mark.parametrize("name", WITH_REGS)
def test_registers_equal_info_registers(name):
    printed = parse_info_registers(regs_path(STREAM_FILES[name]).read_text())
    found, _ = decoded(name)
    assert sorted(c.index for c in found) == sorted(printed)
    for cpu in found:
        assert compare(cpu, printed[cpu.index]) >= _minimum(cpu.arch), cpu.index


def test_savevm_snapshot_registers():
    """The registers of a savevm snapshot inside a qcow2 image (committed data)."""
    path = DATA / "streams" / "savevm-11.1.qcow2.xz"
    with qevm.open(unpack(path), snapshot="snap1") as mig:
        found = cpus(mig)
    printed = parse_info_registers((path.parent / "savevm-11.1.regs.txt").read_text())
    assert sorted(c.index for c in found) == sorted(printed)
    for cpu in found:
        assert compare(cpu, printed[cpu.index]) >= _minimum(cpu.arch)


def _kernel_text(name: str) -> tuple[int, int]:
    """[_stext, _etext) from the kallsyms lines the Linux guest printed on its console."""
    console = STREAM_FILES[name].parent / f"{name}.console"
    syms = {
        m.group(2): int(m.group(1), 16)
        for m in re.finditer(r"^([0-9a-f]{16}) [A-Za-z] (\w+)$", console.read_text(), re.M)
    }
    return syms["_stext"], syms["_etext"]


def _ram_ranges(name: str) -> list[tuple[int, int]]:
    """Guest-physical RAM ranges from the recipe's ``info mtree -f``."""
    mtree = meta(STREAM_FILES[name])["mtree"]
    return [
        (int(lo, 16), int(hi, 16) + 1)
        for lo, hi in re.findall(r"([0-9a-f]{16})-([0-9a-f]{16}) \(prio \d+, ram\)", mtree)
    ]


@pytest.mark.parametrize("name", sorted(LINUX))
def test_linux_kernel_registers_point_into_the_kernel(name):
    """Registers info registers does not print, checked against the guest's own symbols."""
    stext, etext = _kernel_text(name)
    for cpu in decoded(name)[0]:
        r = cpu.registers
        if cpu.arch == "x86_64":
            # 64-bit Linux points LSTAR at entry_SYSCALL_64 and runs with
            # EFER.LME|LMA|SCE set.
            assert stext <= r["lstar"] < etext
            assert r["efer"] & 0x501 == 0x501
        elif cpu.arch == "aarch64":
            # VBAR_EL1 holds the 2 KiB-aligned vector table in kernel text;
            # the MMU is on and TTBR1_EL1 (ASID aside) points into guest RAM.
            assert stext <= r["VBAR_EL1"] < etext and r["VBAR_EL1"] % 0x800 == 0
            assert r["SCTLR_EL1"] & 1
            table = r["TTBR1_EL1"] & 0xFFFF_FFFF_FFFE
            assert any(lo <= table < hi for lo, hi in _ram_ranges(name))
        else:
            pytest.fail(f"unexpected architecture {cpu.arch}")


def test_checker_fails_on_a_wrong_register():
    """The comparison notices a single changed register."""
    name = next(n for n in WITH_REGS if decoded(n)[0][0].arch == "x86_64")
    found, _ = decoded(name)
    cpu = found[0]
    lines = parse_info_registers(regs_path(STREAM_FILES[name]).read_text())[cpu.index]
    wrong = CpuState(cpu.index, cpu.arch, {**cpu.registers, "rbx": cpu.registers["rbx"] ^ 4})
    with pytest.raises(AssertionError, match="rbx"):
        compare(wrong, lines)


def test_arch_of_every_stream():
    """Each stream's CPUs are of the architecture its QEMU binary emulates."""
    binaries = {
        "qemu-system-x86_64": {"x86_64"},
        "qemu-system-aarch64": {"aarch64"},
        "qemu-system-riscv64": {"riscv64"},
        "qemu-system-ppc64": {"ppc64"},
        "qemu-system-s390x": {"s390x"},
    }
    for name in WITH_REGS:
        info = meta(STREAM_FILES[name])
        argv = info.get("argv") or info.get("source_cmdline") or []
        binary = Path(argv[0]).name if argv else None
        if binary not in binaries:
            continue
        assert {c.arch for c in decoded(name)[0]} <= binaries[binary], name


def test_aarch64_sysregs_are_named():
    names = [n for n in WITH_REGS if decoded(n)[0][0].arch == "aarch64"]
    if not names:
        pytest.skip("no aarch64 stream")
    regs = decoded(names[0])[0][0].registers
    for key in ("SCTLR_EL1", "TTBR0_EL1", "TTBR1_EL1", "TCR_EL1", "MAIR_EL1", "VBAR_EL1"):
        assert key in regs
    assert sysreg_name(0x6030_0000_0013_C080) == "SCTLR_EL1"
    assert sysreg_name(0x6030_0000_0013_DF1A) == "CNTV_CVAL_EL0"
    assert sysreg_name(0x6030_0000_0013_C7F9) == "S3_0_C15_C15_1"


def test_missing_description_is_a_clear_error():
    name = next((n for n in WITH_REGS if not _has_description(STREAM_FILES[n])), None)
    if name is None:
        pytest.skip("every stream has a description")
    with qevm.open(unpack(STREAM_FILES[name])) as mig:
        with pytest.raises(qevm.DescriptionError, match="--desc"):
            cpus(mig)


def _has_description(path: Path) -> bool:
    with qevm.open(unpack(path), decode_devices=False) as mig:
        return mig.has_description


def _run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(["cpu", *args])
    return rc, out.getvalue()


def test_cli_json_shape():
    name = WITH_REGS[0]
    path = str(unpack(STREAM_FILES[name]))
    rc, text = _run_cli(path, "--json")
    assert rc == 0
    doc = json.loads(text)
    assert list(doc) == ["cpus"]
    expected = [c.to_json() for c in decoded(name)[0]]
    assert doc["cpus"] == json.loads(json.dumps(expected))
    for cpu in doc["cpus"]:
        assert list(cpu) == ["index", "arch", "registers"]
        assert isinstance(cpu["index"], int) and isinstance(cpu["registers"], dict)


def test_cli_selects_one_cpu_and_prints_text():
    name = next(n for n in WITH_REGS if len(decoded(n)[0]) > 1)
    path = str(unpack(STREAM_FILES[name]))
    rc, text = _run_cli(path, "--json", "--cpu", "1")
    assert rc == 0
    assert [c["index"] for c in json.loads(text)["cpus"]] == [1]
    rc, text = _run_cli(path, "--cpu", "1")
    assert rc == 0
    assert "CPU#1" in text and "CPU#0" not in text
    rc, _ = _run_cli(path, "--cpu", "99")
    assert rc == 2
