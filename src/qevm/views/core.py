"""Guest-physical memory as an ELF64 core (like QEMU's ``dump-guest-memory``) or a raw image.

ELF layout: the ELF header, the program headers (one PT_NOTE, then one
PT_LOAD per guest-physical range with the address in ``p_paddr`` and
``p_vaddr``), the notes, then one area per RAM block that backs a range; each
PT_LOAD points into its block's area, so a block mapped twice (the ISA BIOS
alias) is stored once.  Zero pages are never written: the file is sparse.

From a file the layout is known before any byte is copied and only mapped
parts of blocks are written (vectored copies from the mapped input).  From a
pipe, every block is written to its area as its pages go by (QEMU may send a
page again), since the layout depends on device state that comes after RAM;
the headers are written at the end into a reserved first MiB.

Notes follow ``dump/dump.c`` and ``target/*/arch_dump.c``: per CPU
NT_PRSTATUS (name ``CORE``, pid = CPU index + 1), on x86 then per CPU QEMU's
CPU-state note (name ``QEMU``, type 0, ``QEMUCPUState`` version 1), on
aarch64 NT_PRFPREG after each NT_PRSTATUS, on riscv NT_PRSTATUS.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import QevmError, UsageError
from ..ramio import Piece, Placement, StreamingSink, copy_block_range
from .memmap import MemoryMap, Range, layout

if TYPE_CHECKING:
    from ..migration import Migration
    from .cpu import CpuState

EM_386, EM_X86_64, EM_AARCH64, EM_ARM = 3, 62, 183, 40
EM_PPC64, EM_S390, EM_RISCV, EM_LOONGARCH = 21, 22, 243, 258
NT_PRSTATUS, NT_PRFPREG = 1, 2
PT_LOAD, PT_NOTE = 1, 4
PN_XNUM = 0xFFFF
EHDR, PHDR, SHDR = 64, 56, 64
#: Header room reserved at the start of an ELF written from a pipe.
STREAM_HEADER_ROOM = 1 << 20
ALIGN = 1 << 16


def _align(x: int, a: int = ALIGN) -> int:
    return -(-x // a) * a


# -- notes ---------------------------------------------------------------------------


def _note(name: bytes, ntype: int, desc: bytes, e: str) -> bytes:
    name_z = name + b"\0"
    hdr = struct.pack(e + "III", len(name_z), len(desc), ntype)
    pad = lambda b: b + bytes(-len(b) % 4)  # noqa: E731
    return hdr + pad(name_z) + pad(desc)


def _x86_prstatus64(r: dict[str, Any], pid: int) -> bytes:
    seg = lambda s: r[s]["selector"]  # noqa: E731
    regs = [
        r["r15"], r["r14"], r["r13"], r["r12"], r["rbp"], r["rbx"], r["r11"], r["r10"],
        r["r9"], r["r8"], r["rax"], r["rcx"], r["rdx"], r["rsi"], r["rdi"], 0,
        r["rip"], seg("cs"), r["rflags"], r["rsp"], seg("ss"), r["fs"]["base"], r["gs"]["base"],
        seg("ds"), seg("es"), seg("fs"), seg("gs"),
    ]  # fmt: skip
    return bytes(32) + struct.pack("<I", pid) + bytes(76) + struct.pack("<27Q", *regs) + bytes(8)


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


def _arm64_notes(cpu: CpuState, pid: int) -> list[bytes]:
    r = cpu.registers
    regs = [r[f"x{i}"] for i in range(31)] + [r["sp"], r["pc"], r["pstate"]]
    prstatus = (
        bytes(32)
        + struct.pack("<I", pid)
        + bytes(76)
        + struct.pack("<34Q", *regs)
        + struct.pack("<I", 1)
        + bytes(4)
    )
    vregs = []
    for i in range(32):
        q = r[f"q{i}"]
        vregs += [q & (1 << 64) - 1, q >> 64]
    fp = struct.pack("<64QII", *vregs, r["fpsr"], r["fpcr"]) + bytes(8)
    return [_note(b"CORE", NT_PRSTATUS, prstatus, "<"), _note(b"CORE", NT_PRFPREG, fp, "<")]


def _riscv64_prstatus(cpu: CpuState, pid: int) -> bytes:
    r = cpu.registers
    names = ("ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1") + tuple(
        f"a{i}" for i in range(8)
    )
    names += tuple(f"s{i}" for i in range(2, 12)) + ("t3", "t4", "t5", "t6")
    regs = [r["pc"]] + [r[n] for n in names]
    return bytes(32) + struct.pack("<I", pid) + bytes(76) + struct.pack("<32Q", *regs) + bytes(8)


@dataclass
class Target:
    """ELF machine, byte order and CPU notes for a stream."""

    machine: int
    endian: str
    notes: bytes


def target_for(mig: Migration) -> tuple[Target, list[str]]:
    """The ELF machine, byte order and notes of ``mig``'s CPUs, plus warnings."""
    from .cpu import cpus

    try:
        found = cpus(mig)
    except QevmError as e:
        return Target(0, "<", b""), [f"no CPU notes: {e}"]
    if not found:
        return Target(0, "<", b""), ["no CPU notes: the stream has no CPU"]
    try:
        return _target(found)
    except KeyError as e:  # a register the notes need is not in the stream's cpu state
        machine, endian = _machine(found[0])
        return Target(machine, endian, b""), [f"no CPU notes: register {e} is not in the stream"]


def _machine(cpu: CpuState) -> tuple[int, str]:
    """ELF machine and byte order for the first CPU (as QEMU's cpu_get_dump_info picks them)."""
    r = cpu.registers
    if cpu.arch in ("x86_64", "i386"):
        return (EM_X86_64 if r.get("efer", 0) & (1 << 10) else EM_386), "<"
    return {
        "aarch64": (EM_AARCH64, "<"),
        "riscv64": (EM_RISCV, "<"),
        "arm": (EM_ARM, "<"),
        "ppc64": (EM_PPC64, "<" if r.get("msr", 0) & 1 else ">"),
        "s390x": (EM_S390, ">"),
        "loongarch64": (EM_LOONGARCH, "<"),
    }.get(cpu.arch, (0, "<"))


def _target(found: list[CpuState]) -> tuple[Target, list[str]]:
    warnings: list[str] = []
    arch = found[0].arch
    notes: list[bytes] = []
    if arch in ("x86_64", "i386"):
        lma = bool(found[0].registers.get("efer", 0) & (1 << 10))
        machine = EM_X86_64 if lma else EM_386
        for c in found:
            pr = (_x86_prstatus64 if lma else _x86_prstatus32)(c.registers, c.index + 1)
            notes.append(_note(b"CORE", NT_PRSTATUS, pr, "<"))
        for c in found:
            notes.append(_note(b"QEMU", 0, _qemu_cpu_state(c.registers), "<"))
        return Target(machine, "<", b"".join(notes)), warnings
    if arch == "aarch64":
        for c in found:
            notes += _arm64_notes(c, c.index + 1)
        if any("zcr_el1" in k.lower() or k.startswith("z0") for k in found[0].registers):
            warnings.append("SVE registers are not written (no NT_ARM_SVE note)")
        return Target(EM_AARCH64, "<", b"".join(notes)), warnings
    if arch == "riscv64":
        for c in found:
            notes.append(_note(b"CORE", NT_PRSTATUS, _riscv64_prstatus(c, c.index + 1), "<"))
        return Target(EM_RISCV, "<", b"".join(notes)), warnings
    machine, endian = _machine(found[0])
    warnings.append(f"no CPU notes for {arch} (memory only)")
    return Target(machine, endian, b""), warnings


# -- the ELF file --------------------------------------------------------------------


def _block_extents(ranges: list[Range]) -> dict[str, list[tuple[int, int]]]:
    """Per block, the merged ``[start, end)`` offsets the ranges use."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for r in ranges:
        spans.setdefault(r.block, []).append((r.offset, r.offset + r.size))
    out = {}
    for b, lst in spans.items():
        lst.sort()
        merged = [lst[0]]
        for s, e in lst[1:]:
            if s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        out[b] = merged
    return out


def header_size(nranges: int, notes: int) -> int:
    """Bytes the ELF header, program headers (and a PN_XNUM section header) and notes take."""
    n = nranges + 1
    return EHDR + PHDR * n + (SHDR if n >= PN_XNUM else 0) + notes


def elf_headers(
    target: Target, ranges: list[Range], areas: dict[str, int], note_offset: int
) -> bytes:
    """ELF header + program headers (+ section header 0 when there are >= 0xffff)."""
    e = target.endian
    n = len(ranges) + 1
    shoff = EHDR + PHDR * n if n >= PN_XNUM else 0
    ident = b"\x7fELF" + bytes((2, 1 if e == "<" else 2, 1)) + bytes(9)
    out = ident + struct.pack(
        e + "HHIQQQIHHHHHH",
        4,  # ET_CORE
        target.machine,
        1,
        0,
        EHDR,
        shoff,
        0,
        EHDR,
        PHDR,
        min(n, PN_XNUM),
        SHDR,
        1 if shoff else 0,
        0,
    )
    out += struct.pack(
        e + "IIQQQQQQ", PT_NOTE, 0, note_offset, 0, 0, len(target.notes), len(target.notes), 0
    )
    for r in ranges:
        off = areas[r.block] + r.offset
        out += struct.pack(e + "IIQQQQQQ", PT_LOAD, 0, off, r.gpa, r.gpa, r.size, r.size, 0)
    if shoff:
        out += struct.pack(e + "IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, n, 0, 0)
    return out


@dataclass
class CoreResult:
    """What :func:`write_core` wrote."""

    memmap: MemoryMap
    format: str
    #: bytes of guest memory the ranges cover
    covered: int
    warnings: list[str]


def _copy_ranges(mig: Migration, fd: int, jobs: Iterator[tuple[str, int, int, int]]) -> None:
    index = mig.page_index
    for block, start, length, dest in jobs:
        copy_block_range(index, block, start, length, fd, dest)


def write_core(
    source: Migration | str | os.PathLike[str] | BinaryIO,
    path: str | os.PathLike[str],
    fmt: str = "elf",
    *,
    overrides: Any = None,
    open_args: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> CoreResult:
    """Write the guest-physical memory of a stream to ``path`` as ``elf`` or ``raw``.

    ``source`` is an open :class:`~qevm.migration.Migration` (with
    ``index_ram=True``) or anything :func:`qevm.open` takes; a pipe is
    written as it is read.  ``overrides`` are ``--map`` items.
    """
    if fmt not in ("elf", "raw"):
        raise UsageError(f"unknown core format {fmt!r} (elf or raw)")
    from .. import open as qopen
    from ..migration import Migration
    from ..source import Source, open_source

    if isinstance(source, Migration):
        return _from_index(source, path, fmt, overrides)
    args = dict(open_args or {})
    src = (
        source
        if isinstance(source, Source)
        else open_source(
            source, format=args.pop("format", "auto"), snapshot=args.pop("snapshot", None)
        )
    )
    if src.seekable:
        with qopen(src, index_ram=True, progress=progress, **args) as mig:
            return _from_index(mig, path, fmt, overrides)
    return _from_pipe(src, path, fmt, overrides, args, progress)


def _from_index(mig: Migration, path: Any, fmt: str, overrides: Any) -> CoreResult:
    mm = layout(mig, overrides)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if fmt == "raw":
            warnings: list[str] = []
            end = max((r.end for r in mm.ranges), default=0)
            os.ftruncate(fd, end)
            _copy_ranges(mig, fd, ((r.block, r.offset, r.size, r.gpa) for r in mm.ranges))
        else:
            target, warnings = target_for(mig)
            extents = _block_extents(mm.ranges)
            pos = _align(header_size(len(mm.ranges), len(target.notes)))
            areas = {}
            for b in extents:
                areas[b] = pos
                pos = _align(pos + mig_block_size(mig, b))
            os.ftruncate(fd, pos)
            note_off = header_size(len(mm.ranges), 0)
            os.pwrite(fd, elf_headers(target, mm.ranges, areas, note_off), 0)
            os.pwrite(fd, target.notes, note_off)
            _copy_ranges(
                mig,
                fd,
                ((b, s, e - s, areas[b] + s) for b, spans in extents.items() for s, e in spans),
            )
    finally:
        os.close(fd)
    return CoreResult(mm, fmt, sum(r.size for r in mm.ranges), warnings)


def mig_block_size(mig: Migration, name: str) -> int:
    for b in mig.ram_blocks:
        if b.name == name:
            return b.used_length
    raise KeyError(name)


class _Staged:
    """A stream read from a pipe with every RAM block kept in its own area of ``fd``."""

    def __init__(self, fd: int, start: int) -> None:
        self.fd = fd
        self.areas: dict[str, int] = {}
        self.cursor = start

    def place(self, block: Any) -> Placement:
        if block.name not in self.areas:
            self.areas[block.name] = self.cursor
            self.cursor = _align(self.cursor + block.used_length)
            os.ftruncate(self.fd, self.cursor)
        return Placement([Piece(0, block.used_length, self.fd, self.areas[block.name])])

    def read(self, block: str, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, self.areas[block] + offset)

    def open(self, src: Any, args: dict[str, Any], progress: Any) -> Migration:
        from .. import open as qopen

        return qopen(
            src,
            ram_consumer=lambda ctx, ps: StreamingSink(ps, self.place),
            progress=progress,
            **args,
        )


def layout_streamed(
    src: Any, overrides: Any = None, open_args: dict[str, Any] | None = None
) -> MemoryMap:
    """:func:`~qevm.views.memmap.layout` of a stream that cannot be indexed (a pipe).

    The RAM blocks are kept in an unlinked temporary file while it is read.
    """
    import tempfile

    with tempfile.TemporaryFile(prefix="qevm-blocks-") as tmp:
        staged = _Staged(tmp.fileno(), 0)
        with staged.open(src, dict(open_args or {}), None) as mig:
            return layout(mig, overrides, read=staged.read)


def _from_pipe(
    src: Any,
    path: Any,
    fmt: str,
    overrides: Any,
    args: dict[str, Any],
    progress: Callable[[int], None] | None,
) -> CoreResult:
    # RAM comes before the device state the layout depends on: keep each block
    # in its own area (of the ELF itself, or of a staging file for raw) and
    # place it when the stream has been read.
    stage_path = os.fspath(path) + ".qevm-stage" if fmt == "raw" else os.fspath(path)
    fd = os.open(stage_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    staged = _Staged(fd, STREAM_HEADER_ROOM if fmt == "elf" else 0)
    try:
        with staged.open(src, args, progress) as mig:
            mm = layout(mig, overrides, read=staged.read)
            if fmt == "raw":
                warnings: list[str] = []
                out = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.ftruncate(out, max((r.end for r in mm.ranges), default=0))
                    for r in mm.ranges:
                        _copy_data(fd, staged.areas[r.block] + r.offset, r.size, out, r.gpa)
                finally:
                    os.close(out)
            else:
                target, warnings = target_for(mig)
                hdr = header_size(len(mm.ranges), 0)
                if hdr > STREAM_HEADER_ROOM:
                    raise UsageError(f"{len(mm.ranges)} ranges do not fit the ELF header room")
                note_off = hdr if hdr + len(target.notes) <= STREAM_HEADER_ROOM else staged.cursor
                os.pwrite(fd, elf_headers(target, mm.ranges, staged.areas, note_off), 0)
                os.pwrite(fd, target.notes, note_off)
    finally:
        os.close(fd)
        if fmt == "raw":
            os.unlink(stage_path)
    return CoreResult(mm, fmt, sum(r.size for r in mm.ranges), warnings)


def _copy_data(src: int, soff: int, length: int, dst: int, doff: int) -> None:
    """Copy the data extents of ``src`` (holes stay holes in ``dst``)."""
    end = soff + length
    pos = soff
    while pos < end:
        try:
            data = os.lseek(src, pos, os.SEEK_DATA)
        except OSError:  # no data after pos
            return
        if data >= end:
            return
        try:
            hole = min(os.lseek(src, data, os.SEEK_HOLE), end)
        except OSError:
            hole = end
        p = data
        while p < hole:
            n = min(1 << 23, hole - p)
            buf = os.pread(src, n, p)
            if buf.count(0) != len(buf):
                os.pwrite(dst, buf, doff + p - soff)
            p += n
        pos = hole
