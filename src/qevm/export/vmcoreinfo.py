"""The Linux kernel's VMCOREINFO, recovered from a stream, checked, and written as QEMU does.

crash and drgn need the text a running Linux keeps for kdump (``OSRELEASE=``,
``PAGESIZE=``, ``SYMBOL(name)=addr``, ``KERNELOFFSET=``, ...) to find a KASLR
kernel in a memory image.  QEMU's ``dump-guest-memory`` copies it as an ELF
note when the VM has a ``vmcoreinfo`` device the guest told the address of
its note (``hw/misc/vmcoreinfo.c``; ``dump/dump.c`` reads ``size`` bytes at
``paddr`` and writes the first note it finds there after the CPU notes).

Where to look, in order:

1. the ``vmcoreinfo`` device's state (guest format ELF, the note's address
   and size), as QEMU does;
2. guest RAM: the kernel keeps the text in a zeroed page of its own
   (``vmcoreinfo_data``) and once more inside its ELF note
   (``vmcoreinfo_note``, after a 24-byte note header).  The kernel's format
   strings (``OSRELEASE=%s``) and a previous kernel's leftovers look alike,
   so every candidate is checked.

Checks (all must hold): the text is well formed and starts with
``OSRELEASE=``; ``SYMBOL(swapper_pg_dir)`` translates through the page tables
of a CPU (CR3, or TTBR1_EL1 with TCR_EL1) to a page that maps itself at that
address (the kernel's own page table); the kernel's ``init_uts_ns`` release,
read through those tables, is ``OSRELEASE``; a ``Linux version OSRELEASE``
banner is in RAM.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .guestmem import CR4_LA57, EFER_LMA, GuestMemory, arm64_translate, x86_translate
from .scan import Scanner

if TYPE_CHECKING:
    from ..migration import Migration
    from ..views.memmap import MemoryMap

NOTE_NAME = b"VMCOREINFO"
#: QEMU's limit on the guest note it copies (dump.c MAX_GUEST_NOTE_SIZE)
MAX_GUEST_NOTE_SIZE = 1 << 20
#: fw_cfg's FW_CFG_VMCOREINFO_FORMAT_ELF
FORMAT_ELF = 1
#: the longest text accepted (the kernel's VMCOREINFO_BYTES is one page)
MAX_TEXT = 1 << 16
_KEY = re.compile(r"^[A-Z_][A-Za-z0-9_-]*(\([A-Za-z0-9_.-]+\))?$")
_UTS_LEN = 65


@dataclass
class VmcoreInfo:
    """A kernel's VMCOREINFO and where it was found."""

    text: bytes
    fields: dict[str, str]
    #: the ELF note (header, ``VMCOREINFO``, text) as QEMU writes it
    note: bytes
    #: how it was found: ``vmcoreinfo device`` or ``guest RAM``
    origin: str
    #: guest-physical address of the text (of the note for the device)
    gpa: int | None
    #: what was checked, in words
    checks: list[str] = field(default_factory=list)
    #: the kernel's ``struct new_utsname`` (6 x 65 bytes) read through its page tables
    utsname: bytes | None = None

    @property
    def release(self) -> str:
        return self.fields["OSRELEASE"]

    @property
    def page_size(self) -> int:
        return int(self.fields["PAGESIZE"])

    @property
    def kernel_offset(self) -> int | None:
        v = self.fields.get("KERNELOFFSET")
        return int(v, 16) if v is not None else None

    def symbol(self, name: str) -> int | None:
        v = self.fields.get(f"SYMBOL({name})")
        return int(v, 16) if v is not None else None

    def number(self, name: str) -> int | None:
        v = self.fields.get(f"NUMBER({name})")
        try:
            return int(v, 0) if v is not None else None
        except ValueError:
            return None

    def phys_base(self, machine: int) -> int:
        """The kernel's physical base, as QEMU's dump takes it (``vmcoreinfo_update_phys_base``).

        x86-64 prints ``phys_base`` in decimal, and it is negative when KASLR
        moved the kernel further in virtual than in physical memory (QEMU
        reads it as hex); the value is returned as the 64-bit word the kernel holds.
        """
        value = self.number("PHYS_OFFSET" if machine == 183 else "phys_base")  # EM_AARCH64
        return (value or 0) & 0xFFFF_FFFF_FFFF_FFFF

    def to_json(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "kernel_offset": self.kernel_offset,
            "page_size": self.page_size,
            "origin": self.origin,
            "gpa": self.gpa,
            "checks": self.checks,
        }


def parse_text(data: bytes) -> dict[str, str] | None:
    """The ``KEY=VALUE`` lines of a VMCOREINFO text, or ``None`` if it is not one."""
    if not data.startswith(b"OSRELEASE=") or len(data) > MAX_TEXT:
        return None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    fields: dict[str, str] = {}
    for line in text.split("\n"):
        if not line:
            continue
        key, eq, value = line.partition("=")
        if not eq or not _KEY.match(key) or not value.isprintable():
            return None
        fields.setdefault(key, value)
    release = fields.get("OSRELEASE", "")
    if not release or "%" in release or len(release) >= _UTS_LEN:
        return None
    page = fields.get("PAGESIZE", "")
    if not page.isdigit() or int(page) < 1024 or int(page) & (int(page) - 1):
        return None
    try:
        for k, v in fields.items():
            if k.startswith("SYMBOL(") or k == "KERNELOFFSET":
                int(v, 16)
    except ValueError:
        return None
    return fields


def make_note(text: bytes, endian: str) -> bytes:
    """The VMCOREINFO note as the kernel builds it (``append_elf_note``)."""
    from ..views.notes import note

    return note(NOTE_NAME, 0, text, endian)


def _split_note(raw: bytes, endian: str) -> tuple[bytes, bytes] | None:
    """(first note's bytes, its descriptor) if ``raw`` starts with a VMCOREINFO note."""
    if len(raw) < 12:
        return None
    namesz, descsz, _ = struct.unpack_from(endian + "III", raw)
    name_end = 12 + namesz
    total = 12 + -(-namesz // 4) * 4 + -(-descsz // 4) * 4
    if total > len(raw) or raw[12:name_end].rstrip(b"\0") != NOTE_NAME:
        return None
    desc_off = 12 + -(-namesz // 4) * 4
    return raw[:total], raw[desc_off : desc_off + descsz]


# -- checking ----------------------------------------------------------------------


def _roots(cpu: Any) -> list[int]:
    """Page-table roots to try for kernel addresses on this CPU."""
    r = cpu.registers
    if cpu.arch in ("x86_64", "i386"):
        cr3 = r.get("cr3", 0)
        # with page-table isolation a CPU in user mode runs on the user half of
        # an 8 KiB pair; the kernel's half is the first page
        return [cr3, cr3 & ~(1 << 12)] if cr3 & (1 << 12) else [cr3]
    return [r.get("TTBR1_EL1", 0)]


def _walkable(cpu: Any) -> bool:
    """Whether qevm walks this CPU's kernel page tables: x86-64 in long mode, AArch64."""
    r = cpu.registers
    if cpu.arch in ("x86_64", "i386"):
        return bool(r.get("efer", 0) & EFER_LMA)
    return cpu.arch == "aarch64" and "TTBR1_EL1" in r and "TCR_EL1" in r


def _walk(mem: GuestMemory, cpu: Any, root: int, vaddr: int) -> int | None:
    r = cpu.registers
    if cpu.arch in ("x86_64", "i386"):
        return x86_translate(mem, root, vaddr, bool(r.get("cr4", 0) & CR4_LA57))
    return arm64_translate(mem, root, r["TCR_EL1"], vaddr)


def check(info: VmcoreInfo, mem: GuestMemory, cpus: list[Any], banner: bool | None) -> str | None:
    """Check ``info`` against the guest (see the module's docstring); the failure, or None."""
    pgd = info.symbol("swapper_pg_dir")
    if pgd is None:
        return "it has no SYMBOL(swapper_pg_dir)"
    walkable = [c for c in cpus if _walkable(c)]
    if not walkable:
        arches = ", ".join(sorted({c.arch for c in cpus}))
        return f"qevm cannot walk the page tables of these CPUs ({arches}) to check it"
    phys = None
    for cpu in walkable:
        for root in _roots(cpu):
            p = _walk(mem, cpu, root, pgd)
            if p is None:
                continue
            # the kernel's top-level table maps its own address to itself
            if _walk(mem, cpu, p, pgd) == p:
                phys = (cpu, p)
                break
        if phys:
            break
    if phys is None:
        return (
            f"SYMBOL(swapper_pg_dir)={pgd:#x} does not translate, through the page tables of "
            "any CPU, to a table that maps itself"
        )
    cpu, p = phys
    info.checks.append(
        f"swapper_pg_dir {pgd:#x} -> guest-physical {p:#x} through CPU {cpu.index}'s page tables"
    )
    uts = info.symbol("init_uts_ns")
    if uts is not None:
        off = int(info.fields.get("OFFSET(uts_namespace.name)", "0"))
        pa = _walk(mem, cpu, p, uts + off)
        data = mem.read(pa, 6 * _UTS_LEN) if pa is not None else None
        if data is None:
            return f"init_uts_ns ({uts:#x}) is not mapped in the kernel's page tables"
        found = data[2 * _UTS_LEN : 3 * _UTS_LEN].split(b"\0")[0].decode("ascii", "replace")
        if found != info.release:
            return f"the kernel's uname release is {found!r}, not OSRELEASE={info.release}"
        info.checks.append(f"init_uts_ns release {found!r} = OSRELEASE")
        info.utsname = data
    if banner is False:
        return f"no 'Linux version {info.release} ' banner in RAM"
    if banner:
        info.checks.append("kernel banner 'Linux version ...' agrees")
    return None


# -- finding -----------------------------------------------------------------------


def _block_gpa(mm: MemoryMap, block: str, offset: int) -> int | None:
    for r in mm.ranges:
        if r.block == block and r.offset <= offset < r.offset + r.size:
            return r.gpa + offset - r.offset
    return None


def from_device(mig: Migration, mem: GuestMemory, endian: str) -> tuple[VmcoreInfo | None, str]:
    """The note the ``vmcoreinfo`` device points at, as QEMU's dump reads it."""
    for dev in mig.devices("vmcoreinfo"):
        st = dev.state
        if st is None or not st.get("has_vmcoreinfo"):
            continue
        fmt, size = st.get("vmcoreinfo.guest_format"), st.get("vmcoreinfo.size")
        paddr = st.get("vmcoreinfo.paddr")
        if fmt != FORMAT_ELF or not 12 <= (size or 0) <= MAX_GUEST_NOTE_SIZE:
            return None, f"vmcoreinfo device: guest format {fmt}, size {size}: not an ELF note"
        raw = mem.read(paddr, size)
        if raw is None:
            return None, f"vmcoreinfo device: note at {paddr:#x} is not in guest RAM"
        split = _split_note(raw, endian)
        if split is None:
            return None, f"vmcoreinfo device: no VMCOREINFO note at {paddr:#x}"
        note_bytes, desc = split
        text = desc.split(b"\0")[0]
        fields = parse_text(text)
        if fields is None:
            return None, f"vmcoreinfo device: the note at {paddr:#x} is not a VMCOREINFO text"
        return VmcoreInfo(text, fields, note_bytes, "vmcoreinfo device", paddr), ""
    return None, ""


def candidates(
    scan: Scanner, read: Any, mm: MemoryMap, endian: str
) -> list[tuple[VmcoreInfo, str, int]]:
    """Every well-formed VMCOREINFO text in RAM, as ``(info, block, offset)``."""
    out = []
    seen: set[tuple[str, int]] = set()
    for block, off in scan(b"OSRELEASE="):
        if (block, off) in seen:
            continue
        seen.add((block, off))
        before = read(block, off - 24, 24) if off >= 24 else b""
        # the text starts a string: at the start of a page, or after a NUL
        if off % 4096 and before and before[-1] != 0:
            continue
        raw = read(block, off, MAX_TEXT)
        end = raw.find(b"\0")
        if end < 0:
            continue
        text = raw[:end]
        fields = parse_text(text)
        if fields is None:
            continue
        gpa = _block_gpa(mm, block, off)
        if gpa is None:
            continue
        note = make_note(text, endian)
        if len(before) == 24:
            namesz, descsz, ntype = struct.unpack_from(endian + "III", before)
            if namesz == len(NOTE_NAME) + 1 and ntype == 0 and before[12:23] == NOTE_NAME + b"\0":
                # inside the kernel's own note: copy that, as QEMU does through the device
                if len(text) <= descsz <= MAX_TEXT:
                    note = before + read(block, off, -(-descsz // 4) * 4)
        out.append((VmcoreInfo(text, fields, note, "guest RAM", gpa), block, off))
    return out


def recover(
    mig: Migration, mm: MemoryMap, read: Any, scan: Scanner, endian: str
) -> tuple[VmcoreInfo | None, list[str]]:
    """The checked VMCOREINFO of ``mig``'s kernel, or ``None`` and why (as warnings).

    ``read(block, offset, length)`` reads block bytes; ``scan`` finds bytes in
    RAM (:mod:`.scan`).  No warning when nothing looks like a Linux kernel.
    """
    from ..errors import QevmError
    from ..views.cpu import cpus as cpu_states

    mem = GuestMemory(mm, read)
    try:
        cpus = cpu_states(mig)
    except QevmError:
        cpus = []
    warnings: list[str] = []
    found, why = from_device(mig, mem, endian)
    if why:
        warnings.append(why)

    # the device's note first (what QEMU would write); RAM when it is absent or fails
    def pool() -> Any:
        if found is not None:
            yield found
        for info, _, _ in candidates(scan, read, mm, endian):
            yield info

    banners: dict[str, bool] = {}
    failures = []
    for info in pool():
        if not cpus:
            warnings.append("VMCOREINFO found but not written: no CPU registers to check it")
            return None, warnings
        if info.release not in banners:
            needle = b"Linux version " + info.release.encode() + b" "
            banners[info.release] = next(iter(scan(needle)), None) is not None
        why = check(info, mem, cpus, banners[info.release])
        if why is None:
            where = f"guest-physical {info.gpa:#x}" if info.gpa is not None else ""
            info.checks.insert(0, f"found via {info.origin} at {where}")
            return info, warnings
        failures.append(f"{info.origin} at {info.gpa:#x}: {why}")
    if not failures:
        return None, warnings
    warnings.append(
        "VMCOREINFO not written: no candidate passed the checks ("
        + "; ".join(dict.fromkeys(failures))
        + ")"
    )
    return None, warnings


def quick_look(source: Any) -> list[dict[str, Any]]:
    """Kernels whose VMCOREINFO is in a stream file's bytes, without reading the stream.

    For ``qevm info``: the file (a stream, a mapped-ram file, a raw libvirt
    image) is searched as it is, for well-formed texts that a ``Linux
    version RELEASE`` banner in the same file agrees with.  The page tables
    are not walked (that needs the page index: ``qevm memory`` does it), so
    leftovers of an earlier kernel can show up too; each distinct kernel is
    listed once.  Returns ``[]`` for inputs that cannot be searched in place.
    """
    find = getattr(source, "find", None)
    size = getattr(source, "size", None)
    if find is None or not size:
        return []
    out: dict[tuple[str, str | None], dict[str, Any]] = {}
    banners: dict[str, bool] = {}
    pos = 0
    while True:
        hit = find(b"OSRELEASE=", pos, size)
        if hit < 0:
            break
        pos = hit + 1
        raw = bytes(source.read_at(hit, min(MAX_TEXT, size - hit)))
        end = raw.find(b"\0")
        fields = parse_text(raw[:end]) if end > 0 else None
        if fields is None:
            continue
        release = fields["OSRELEASE"]
        if release not in banners:
            needle = b"Linux version " + release.encode() + b" "
            banners[release] = find(needle, 0, size) >= 0
        if not banners[release]:
            continue
        key = (release, fields.get("KERNELOFFSET"))
        off = fields.get("KERNELOFFSET")
        out.setdefault(
            key,
            {
                "release": release,
                "kernel_offset": int(off, 16) if off is not None else None,
                "page_size": int(fields["PAGESIZE"]),
                "stream_offset": hit,
            },
        )
    release_pages = getattr(source, "release", None)
    if release_pages is not None:
        release_pages(0, size)
    return list(out.values())
