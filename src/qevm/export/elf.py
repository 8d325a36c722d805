"""The ELF core's headers, declared as elf.h declares them, and where everything goes.

An ELF core of guest-physical memory (as QEMU's ``dump-guest-memory``
writes it): the ELF header, the program headers (one PT_NOTE, then one
PT_LOAD per guest-physical range with the address in ``p_paddr`` and
``p_vaddr``), section header 0 when there are 0xffff program headers or
more (PN_XNUM: the real count is its ``sh_info``), the notes, then one area
per RAM block that backs a range; each PT_LOAD points into its block's area,
so a block mapped twice (the ISA BIOS alias) is stored once.  Zero pages are
never written: the file is sparse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..structs import CStruct

if TYPE_CHECKING:
    from ..views.memmap import Range


class Elf64_Ehdr(  # noqa: N801 - elf.h's name
    CStruct,
    fields="""
        unsigned char e_ident[16];
        uint16_t e_type;
        uint16_t e_machine;
        uint32_t e_version;
        uint64_t e_entry;
        uint64_t e_phoff;
        uint64_t e_shoff;
        uint32_t e_flags;
        uint16_t e_ehsize;
        uint16_t e_phentsize;
        uint16_t e_phnum;
        uint16_t e_shentsize;
        uint16_t e_shnum;
        uint16_t e_shstrndx;
    """,
):
    """The ELF header (written in the target's byte order)."""


class Elf64_Phdr(  # noqa: N801 - elf.h's name
    CStruct,
    fields="""
        uint32_t p_type;
        uint32_t p_flags;
        uint64_t p_offset;
        uint64_t p_vaddr;
        uint64_t p_paddr;
        uint64_t p_filesz;
        uint64_t p_memsz;
        uint64_t p_align;
    """,
):
    """A program header: PT_NOTE, or a PT_LOAD of one guest-physical range."""


class Elf64_Shdr(  # noqa: N801 - elf.h's name
    CStruct,
    fields="""
        uint32_t sh_name;
        uint32_t sh_type;
        uint64_t sh_flags;
        uint64_t sh_addr;
        uint64_t sh_offset;
        uint64_t sh_size;
        uint32_t sh_link;
        uint32_t sh_info;
        uint64_t sh_addralign;
        uint64_t sh_entsize;
    """,
):
    """A section header (a core has only section 0, and only with PN_XNUM)."""


class Elf64_Nhdr(  # noqa: N801 - elf.h's name (Elf32_Nhdr is the same)
    CStruct,
    fields="""
        uint32_t n_namesz;
        uint32_t n_descsz;
        uint32_t n_type;
    """,
):
    """A note's header; the name and the descriptor follow, each padded to 4 bytes."""


@dataclass
class Target:
    """What an image is written for: the ELF machine, the byte order (``<`` or ``>``)
    and the notes (the CPUs' from :mod:`.notes`, then the kernel's VMCOREINFO)."""

    machine: int
    endian: str
    notes: bytes


ET_CORE = 4
EV_CURRENT = 1
ELFCLASS64 = 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
PT_LOAD, PT_NOTE = 1, 4
PN_XNUM = 0xFFFF
EHDR, PHDR, SHDR = Elf64_Ehdr.size, Elf64_Phdr.size, Elf64_Shdr.size
#: Block areas start at multiples of this.
ALIGN = 1 << 16


def align(x: int, a: int = ALIGN) -> int:
    """``x`` rounded up to a multiple of ``a``."""
    return -(-x // a) * a


def note(name: bytes, ntype: int, desc: bytes, e: str) -> bytes:
    """One ELF note: header in byte order ``e``, name and descriptor padded to 4 bytes."""
    name_z = name + b"\0"
    hdr = Elf64_Nhdr(n_namesz=len(name_z), n_descsz=len(desc), n_type=ntype).pack(e)
    return hdr + name_z + bytes(-len(name_z) % 4) + desc + bytes(-len(desc) % 4)


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
    data = ELFDATA2LSB if e == "<" else ELFDATA2MSB
    ehdr = Elf64_Ehdr(
        e_ident=b"\x7fELF" + bytes((ELFCLASS64, data, EV_CURRENT)) + bytes(9),
        e_type=ET_CORE,
        e_machine=target.machine,
        e_version=EV_CURRENT,
        e_phoff=EHDR,
        e_shoff=shoff,
        e_ehsize=EHDR,
        e_phentsize=PHDR,
        e_phnum=min(n, PN_XNUM),
        e_shentsize=SHDR,
        e_shnum=1 if shoff else 0,
    )
    size = len(target.notes)
    out = [
        ehdr.pack(e),
        Elf64_Phdr(p_type=PT_NOTE, p_offset=note_offset, p_filesz=size, p_memsz=size).pack(e),
    ]
    for r in ranges:
        off = areas[r.block] + r.offset
        phdr = Elf64_Phdr(
            p_type=PT_LOAD,
            p_offset=off,
            p_vaddr=r.gpa,
            p_paddr=r.gpa,
            p_filesz=r.size,
            p_memsz=r.size,
        )
        out.append(phdr.pack(e))
    if shoff:
        out.append(Elf64_Shdr(sh_info=n).pack(e))
    return b"".join(out)


def block_extents(ranges: list[Range]) -> dict[str, list[tuple[int, int]]]:
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


@dataclass
class ElfPlan:
    """Where everything of an ELF core goes (:func:`elf_plan`)."""

    #: ELF header and program headers, at offset 0
    headers: bytes
    notes: bytes
    note_offset: int
    #: block -> file offset of its area (the block's offset 0)
    areas: dict[str, int]
    #: block -> the merged ``[start, end)`` offsets of it the ranges use
    extents: dict[str, list[tuple[int, int]]]
    size: int


def elf_plan(ranges: list[Range], target: Target, block_sizes: dict[str, int]) -> ElfPlan:
    """The layout of an ELF core of ``ranges`` whose blocks are copied into areas laid
    out one after the other after the headers and notes."""
    extents = block_extents(ranges)
    pos = align(header_size(len(ranges), len(target.notes)))
    areas = {}
    for b in extents:
        areas[b] = pos
        pos = align(pos + block_sizes[b])
    note_off = header_size(len(ranges), 0)
    headers = elf_headers(target, ranges, areas, note_off)
    return ElfPlan(headers, target.notes, note_off, areas, extents, pos)
