"""Make small streams whose RAM holds what a running Linux keeps for kdump, without a kernel.

QEMU 7.2 starts paused (``-S``, 32 MiB, no firmware that runs);
``-device loader`` places, at known guest-physical addresses:

- page tables mapping a kernel's virtual range (a KASLR offset) onto RAM
  (x86-64: 4-level, 2 MiB pages; AArch64: 4 KiB granule, 48-bit, 2 MiB blocks);
- ``init_uts_ns`` (a ``struct new_utsname``), a ``Linux version`` banner;
- the VMCOREINFO text in a page of its own, and again inside its ELF note
  (the kernel's ``vmcoreinfo_data`` and ``vmcoreinfo_note``);
- look-alikes that must be rejected: the kernel's format strings
  (``OSRELEASE=%s``) and, lower in RAM, a previous boot's text of the same
  release with another KASLR offset (its ``swapper_pg_dir`` is not mapped).

The CPU is then pointed at the tables: on x86 through QEMU's gdbstub (EFER,
CR4, CR3, CR0: long mode with paging), on AArch64 by running four
instructions (``msr ttbr1_el1, x0; msr tcr_el1, x1; isb; b .``).  QEMU's
own ``dump-guest-memory`` ELF is summarised into ``NAME.json``; on x86 the
stream is also edited (``qevm edit``) to give the ``vmcoreinfo`` device the
note's address, loaded back into QEMU and dumped again, and QEMU's whole
PT_NOTE of that dump (CPU notes and the VMCOREINFO note QEMU copied) is kept.

    python tests/gen_vmcoreinfo.py OUTDIR [NAME ...]
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from gen_notes import Gdb, summarise_elf
from qemu_util import Qemu, qemu_version, xz_file

RELEASE = "6.1.0-qevm-test"
UTS_LEN = 65


@dataclass
class Layout:
    """Where the pieces go (guest-physical) and the kernel's virtual addresses."""

    ram: int  # guest-physical start of RAM
    kbase: int  # virtual address of RAM's first byte (the KASLR'd mapping)
    kaslr: int
    stale_kaslr: int

    def va(self, pa: int) -> int:
        return self.kbase + pa - self.ram


# the previous boot's KASLR offset puts its tables where nothing is mapped now
X86 = Layout(0, 0xFFFFFFFF80000000 + 0x1E00000, kaslr=0x1E00000, stale_kaslr=0x21E00000)
ARM = Layout(0x40000000, 0xFFFF800008000000 + 0x5A00000, kaslr=0x5A00000, stale_kaslr=0x45A00000)
#: offsets from the start of RAM (above the first MiB, where arm's virt puts the DTB)
PGD, UTS, TEXT, NOTE = 0x110000, 0x120000, 0x130000, 0x131000
BANNER, FORMATS, STALE = 0x140000, 0x150000, 0x109000


def vmcoreinfo_text(lay: Layout, kaslr: int, arch: str) -> bytes:
    kb = lay.kbase - lay.kaslr + kaslr
    va = lambda off: kb + off  # noqa: E731
    lines = [
        f"OSRELEASE={RELEASE}",
        "BUILD-ID=0123456789abcdef0123456789abcdef01234567",
        "PAGESIZE=4096",
        f"SYMBOL(init_uts_ns)={va(UTS):x}",
        "OFFSET(uts_namespace.name)=0",
        f"SYMBOL(swapper_pg_dir)={va(PGD):x}",
        f"SYMBOL(_stext)={va(0x100000):x}",
        "NUMBER(SECTION_SIZE_BITS)=27",
    ]
    if arch == "x86_64":
        # the kernel prints phys_base in decimal: PA = VA - __START_KERNEL_map + phys_base
        phys_base = lay.ram - (kb - 0xFFFFFFFF80000000)
        lines += [f"NUMBER(phys_base)={phys_base}", f"SYMBOL(init_top_pgt)={va(PGD):x}"]
    else:
        lines += ["NUMBER(VA_BITS)=48", f"NUMBER(PHYS_OFFSET)=0x{lay.ram:x}"]
    lines.append(f"KERNELOFFSET={kaslr:x}")
    return ("\n".join(lines) + "\n").encode()


def note(text: bytes) -> bytes:
    """``vmcoreinfo_note``: the note (``append_elf_note``) and the empty final note."""
    hdr = struct.pack("<III", 11, len(text), 0) + b"VMCOREINFO\0\0"
    return hdr + text + bytes(-len(text) % 4) + bytes(12)


def x86_tables(lay: Layout) -> bytes:
    """PML4, PDPT, PD (3 pages): 32 MiB of 2 MiB pages at ``lay.kbase``."""
    pml4, pdpt, pd = bytearray(4096), bytearray(4096), bytearray(4096)
    base = lay.ram + PGD
    struct.pack_into("<Q", pml4, ((lay.kbase >> 39) & 511) * 8, (base + 0x1000) | 3)
    struct.pack_into("<Q", pdpt, ((lay.kbase >> 30) & 511) * 8, (base + 0x2000) | 3)
    for i in range(16):
        struct.pack_into("<Q", pd, (((lay.kbase >> 21) + i) & 511) * 8, (i << 21) | 0x83)
    return bytes(pml4 + pdpt + pd)


def arm_tables(lay: Layout) -> bytes:
    """Level 0, 1, 2 tables (3 pages): 32 MiB of 2 MiB blocks at ``lay.kbase``."""
    l0, l1, l2 = bytearray(4096), bytearray(4096), bytearray(4096)
    base = lay.ram + PGD
    struct.pack_into("<Q", l0, ((lay.kbase >> 39) & 511) * 8, (base + 0x1000) | 3)
    struct.pack_into("<Q", l1, ((lay.kbase >> 30) & 511) * 8, (base + 0x2000) | 3)
    for i in range(16):
        # block descriptor: AF, inner shareable, attr index 0
        struct.pack_into(
            "<Q", l2, (((lay.kbase >> 21) + i) & 511) * 8, (lay.ram + (i << 21)) | 0x701
        )
    return bytes(l0 + l1 + l2)


def utsname(arch: str) -> bytes:
    fields = ["Linux", "qevm", RELEASE, "#1 SMP PREEMPT_DYNAMIC", arch, "(none)"]
    return b"".join(f.encode().ljust(UTS_LEN, b"\0") for f in fields)


def pieces(arch: str) -> tuple[Layout, list[tuple[str, bytes, int]]]:
    lay = X86 if arch == "x86_64" else ARM
    text = vmcoreinfo_text(lay, lay.kaslr, arch)
    stale = vmcoreinfo_text(lay, lay.stale_kaslr, arch)
    tables = x86_tables(lay) if arch == "x86_64" else arm_tables(lay)
    formats = b"\0OSRELEASE=%s\n\0PAGESIZE=%ld\n\0SYMBOL(%s)=%lx\n\0"
    banner = f"Linux version {RELEASE} (qevm@tests) (gcc) #1 SMP\n\0".encode()
    out = [
        ("tables.bin", tables, PGD),
        ("uts.bin", utsname(arch), UTS),
        ("text.bin", text + b"\0", TEXT),
        ("note.bin", note(text), NOTE),
        ("banner.bin", banner, BANNER),
        ("formats.bin", formats, FORMATS),
        ("stale.bin", stale + b"\0", STALE),
    ]
    return lay, [(n, d, lay.ram + off) for n, d, off in out]


#: aarch64: msr ttbr1_el1, x0; msr tcr_el1, x1; isb; b .
ARM_SET_TTBR1 = struct.pack("<4I", 0xD5182020, 0xD5182041, 0xD5033FDF, 0x14000000)
ARM_CODE = 0x40200000
#: TCR_EL1: T1SZ = 16 (48-bit), TG1 = 4 KiB, T0SZ = 16
ARM_TCR = (16 << 16) | (2 << 30) | 16

RECIPES = {
    "x86-vmcoreinfo": ("qemu-system-x86_64", ["-M", "pc", "-m", "32M", "-device", "vmcoreinfo"]),
    "arm64-vmcoreinfo": ("qemu-system-aarch64", ["-M", "virt", "-cpu", "cortex-a57", "-m", "32M"]),
}


def _qevm(*args: str) -> None:
    env = dict(os.environ)
    src = str(pathlib.Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    subprocess.run([sys.executable, "-m", "qevm", *args], check=True, env=env, capture_output=True)


def device_edit_args(stream: str, out: str) -> list[str]:
    """``qevm edit`` arguments giving the vmcoreinfo device the note's address."""
    return [
        "edit",
        stream,
        "-o",
        out,
        "--set",
        "vmcoreinfo:has_vmcoreinfo=1",
        "--set",
        "vmcoreinfo:vmcoreinfo.guest_format=1",
        "--set",
        "vmcoreinfo:vmcoreinfo.size=0x1000",
        "--set",
        f"vmcoreinfo:vmcoreinfo.paddr={X86.ram + NOTE:#x}",
    ]


def _pt_note(path: str) -> str:
    data = pathlib.Path(path).read_bytes()
    (phoff,) = struct.unpack_from("<Q", data, 32)
    ptype, _, off, _, _, filesz = struct.unpack_from("<IIQQQQ", data, phoff)
    assert ptype == 4
    return data[off : off + filesz].hex()


def make(name: str, outdir: pathlib.Path) -> pathlib.Path:
    binary, args = RECIPES[name]
    arch = "x86_64" if binary.endswith("x86_64") else "aarch64"
    lay, loads = pieces(arch)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="qevm-vmci-"))
    try:
        argv = [binary, "-S", "-nodefaults", *args]
        for fname, data, addr in loads:
            (tmp / fname).write_bytes(data)
            argv += ["-device", f"loader,file={tmp / fname},addr={addr:#x},force-raw=on"]
        if arch == "aarch64":
            (tmp / "code.bin").write_bytes(ARM_SET_TTBR1)
            argv += ["-device", f"loader,file={tmp / 'code.bin'},addr={ARM_CODE:#x}"]
        gsock = tmp / "gdb.sock"
        argv += [
            "-chardev",
            f"socket,path={gsock},server=on,wait=off,id=gdb0",
            "-gdb",
            "chardev:gdb0",
        ]
        mig = tmp / f"{name}.mig"
        with Qemu(argv) as vm:
            gdb = Gdb(str(gsock), False)
            try:
                gdb.select(1)
                if arch == "x86_64":
                    # long mode with paging: LME, then PAE, the tables, PG (QEMU sets LMA)
                    gdb.write("efer", 0x100)
                    gdb.write("cr4", 0x20)
                    gdb.write("cr3", lay.ram + PGD)
                    gdb.write("cr0", 0x80000011)
                else:
                    gdb.write("x0", lay.ram + PGD)
                    gdb.write("x1", ARM_TCR)
                    gdb.write("pc", ARM_CODE)
                    gdb.run_briefly()
                dump = tmp / "dump.elf"
                vm.qmp.cmd("dump-guest-memory", paging=False, protocol=f"file:{dump}")
                elf = summarise_elf(str(dump))
                vm.save(str(mig))
            finally:
                gdb.close()
            version = vm.qmp.cmd("query-version")
        recipe = {
            "name": name,
            "qemu_version": version,
            "qemu": qemu_version(binary),
            "argv": [binary, "-S", "-nodefaults", *args]
            + [f"-device loader,file={f},addr={a:#x}" for f, _, a in loads],
            "release": RELEASE,
            "kernel_offset": lay.kaslr,
            "text": vmcoreinfo_text(lay, lay.kaslr, arch).decode(),
            "text_gpa": lay.ram + TEXT,
            "note_gpa": lay.ram + NOTE,
            "stale_gpa": lay.ram + STALE,
            "dump": elf,
        }
        if arch == "x86_64":
            edited = tmp / "dev.mig"
            _qevm(*device_edit_args(str(mig), str(edited)))
            with Qemu([binary, "-nodefaults", *args], incoming="defer") as vm:
                vm.qmp.cmd("migrate-incoming", uri=f"exec:cat {edited}")
                while vm.qmp.cmd("query-status")["status"] == "inmigrate":
                    time.sleep(0.05)
                dump = tmp / "dev.elf"
                vm.qmp.cmd("dump-guest-memory", paging=False, protocol=f"file:{dump}")
                recipe["device_dump_pt_note"] = _pt_note(str(dump))
        outdir.mkdir(parents=True, exist_ok=True)
        out = outdir / f"{name}.mig.xz"
        xz_file(mig, out)
        (outdir / f"{name}.json").write_text(json.dumps(recipe, indent=1) + "\n")
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    outdir = pathlib.Path(argv[0])
    for name in argv[1:] or list(RECIPES):
        t = time.time()
        out = make(name, outdir)
        print(f"{name}: {out.stat().st_size} bytes in {time.time() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    sys.exit(main(sys.argv[1:]))
