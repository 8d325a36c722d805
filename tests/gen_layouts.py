"""Make small migration streams of guest-physical layouts with the installed QEMU.

Each recipe starts QEMU paused (``-S``: the guest never runs, so RAM is zero
except for what ``-device loader`` put there), loads patterns at chosen
guest-physical addresses (above 4 GiB, inside NUMA nodes and DIMMs...), and
records the ground truth of that VM: HMP ``info mtree -f`` and ``info
ramblock``, and QEMU's own ``dump-guest-memory`` ELF summarised as the
address and size of every PT_LOAD and the sha256 of every non-zero 4 KiB page
in it.  Then it migrates to ``exec:cat > NAME.mig``.

    python tests/gen_layouts.py OUTDIR [NAME ...]     # writes NAME.mig.xz + NAME.json

The committed streams in ``tests/data/layouts`` were made with this script
(QEMU 7.2); ``tests/test_memory.py`` also runs a few recipes live when QEMU is
installed.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import pathlib
import shutil
import struct
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from qemu_util import Qemu, xz_file  # noqa: E402

#: name -> (binary, arguments, [(pattern, guest-physical address)])
RECIPES: dict[str, tuple[str, list[str], list[tuple[str, int]]]] = {
    # pc: RAM >= 3.5 GiB is split at 3 GiB (gigabyte_align), the rest above 4 GiB
    "pc-4200m": (
        "qemu-system-x86_64",
        ["-M", "pc", "-m", "4200M"],
        [("pattern16k.bin", 0x1000000), ("rand10k.bin", 0x104000000)],
    ),
    # q35: RAM >= 2.75 GiB is split at 2 GiB
    "q35-4200m": (
        "qemu-system-x86_64",
        ["-M", "q35", "-m", "4200M"],
        [("pattern16k.bin", 0x7FF00000), ("rand10k.bin", 0x100000000)],
    ),
    # max-ram-below-4g moves the split lower
    "q35-below4g-1g": (
        "qemu-system-x86_64",
        ["-M", "q35,max-ram-below-4g=1G", "-m", "1280M"],
        [("pattern16k.bin", 0x3FF00000), ("rand10k.bin", 0x10F000000)],
    ),
    "pc-below4g-768m": (
        "qemu-system-x86_64",
        ["-M", "pc,max-ram-below-4g=768M", "-m", "1G"],
        [("pattern16k.bin", 0x2FF00000), ("rand10k.bin", 0x100100000)],
    ),
    # NUMA: one memdev per node, concatenated in node order
    "pc-numa2": (
        "qemu-system-x86_64",
        [
            "-M",
            "pc",
            "-m",
            "384M",
            "-smp",
            "2",
            "-object",
            "memory-backend-ram,id=n0,size=128M",
            "-object",
            "memory-backend-ram,id=n1,size=256M",
            "-numa",
            "node,nodeid=0,cpus=0,memdev=n0",
            "-numa",
            "node,nodeid=1,cpus=1,memdev=n1",
        ],
        [("pattern16k.bin", 0x7F00000), ("rand10k.bin", 0x8000000)],
    ),
    "q35-numa2-above4g": (
        "qemu-system-x86_64",
        [
            "-M",
            "q35,max-ram-below-4g=256M",
            "-m",
            "512M",
            "-smp",
            "2",
            "-object",
            "memory-backend-ram,id=n0,size=128M",
            "-object",
            "memory-backend-ram,id=n1,size=384M",
            "-numa",
            "node,nodeid=0,cpus=0,memdev=n0",
            "-numa",
            "node,nodeid=1,cpus=1,memdev=n1",
        ],
        [("pattern16k.bin", 0x8000000), ("rand10k.bin", 0x10FF00000)],
    ),
    # DIMMs: device memory starts at the 1 GiB boundary above RAM
    "pc-dimm2": (
        "qemu-system-x86_64",
        [
            "-M",
            "pc",
            "-m",
            "128M,slots=4,maxmem=1G",
            "-object",
            "memory-backend-ram,id=d1,size=128M",
            "-object",
            "memory-backend-ram,id=d2,size=64M",
            "-device",
            "pc-dimm,id=dimm1,memdev=d1",
            "-device",
            "pc-dimm,id=dimm2,memdev=d2",
        ],
        [("pattern16k.bin", 0x100000000), ("rand10k.bin", 0x108000000)],
    ),
    "q35-4200m-dimm": (
        "qemu-system-x86_64",
        [
            "-M",
            "q35",
            "-m",
            "4200M,slots=2,maxmem=5G",
            "-object",
            "memory-backend-ram,id=d1,size=64M",
            "-device",
            "pc-dimm,id=dimm1,memdev=d1",
        ],
        [("pattern16k.bin", 0x180000000), ("rand10k.bin", 0x183F00000)],
    ),
    "microvm": (
        "qemu-system-x86_64",
        ["-M", "microvm", "-m", "128M"],
        [("pattern16k.bin", 0x1000000)],
    ),
    "isapc": (
        "qemu-system-x86_64",
        ["-M", "isapc", "-m", "64M"],
        [("pattern16k.bin", 0x1000000)],
    ),
    "aarch64-virt-numa": (
        "qemu-system-aarch64",
        [
            "-M",
            "virt",
            "-cpu",
            "cortex-a57",
            "-smp",
            "2",
            "-m",
            "256M",
            "-object",
            "memory-backend-ram,id=n0,size=128M",
            "-object",
            "memory-backend-ram,id=n1,size=128M",
            "-numa",
            "node,nodeid=0,cpus=0,memdev=n0",
            "-numa",
            "node,nodeid=1,cpus=1,memdev=n1",
        ],
        [("pattern16k.bin", 0x48000000), ("rand10k.bin", 0x4FFF0000)],
    ),
    "riscv64-virt-numa": (
        "qemu-system-riscv64",
        [
            "-M",
            "virt",
            "-bios",
            "none",
            "-smp",
            "2",
            "-m",
            "256M",
            "-object",
            "memory-backend-ram,id=n0,size=128M",
            "-object",
            "memory-backend-ram,id=n1,size=128M",
            "-numa",
            "node,nodeid=0,cpus=0,memdev=n0",
            "-numa",
            "node,nodeid=1,cpus=1,memdev=n1",
        ],
        [("pattern16k.bin", 0x87F00000), ("rand10k.bin", 0x88000000)],
    ),
    # LoongArch virt: 256 MiB at 0, the rest at the high window (0x80000000 since QEMU
    # 9.0); ACPI SRAT says where.  Made with QEMU 10.0 (QEVM_QEMU_LOONGARCH64): 7.2's
    # 16 KiB target pages make its migration divide by zero on hosts with 4 KiB pages.
    "loongarch64-virt": (
        "qemu-system-loongarch64",
        ["-M", "virt", "-m", "512M"],
        [("pattern16k.bin", 0x200000), ("rand10k.bin", 0x8FFF0000)],
    ),
    # without ACPI: the cpu section's version tells QEMU >= 9.1 (high RAM at 0x80000000,
    # device memory right above it)
    "loongarch64-virt-noacpi": (
        "qemu-system-loongarch64",
        [
            "-M",
            "virt,acpi=off",
            "-m",
            "512M,slots=1,maxmem=1G",
            "-object",
            "memory-backend-ram,id=d1,size=256M",
            "-device",
            "pc-dimm,id=dimm1,memdev=d1",
        ],
        [("pattern16k.bin", 0x8FFF0000), ("rand10k.bin", 0x90000000)],
    ),
    # QEMU 7.2 (16 KiB target pages, high RAM at 0x90000000) can save only when every
    # RAM block has host pages of 16 KiB or more: RAM on hugetlbfs (QEVM_HUGETLBFS, with
    # enough 2 MiB pages reserved), ACPI off (its ROM blocks have 4 KiB pages)
    "loongarch64-virt-7.2": (
        "qemu-system-loongarch64",
        [
            "-M",
            "virt,acpi=off,memory-backend=m0",
            "-m",
            "1100M",
            "-object",
            "memory-backend-file,id=m0,size=1100M,mem-path={hugetlbfs},share=off",
        ],
        [("pattern16k.bin", 0x200000), ("rand10k.bin", 0x90000000)],
    ),
    "ppc64-pseries-dimm": (
        "qemu-system-ppc64",
        [
            "-M",
            "pseries",
            "-m",
            "256M,slots=2,maxmem=2G",
            "-object",
            "memory-backend-ram,id=d1,size=256M",
            "-device",
            "pc-dimm,id=dimm1,memdev=d1",
        ],
        [("pattern16k.bin", 0x1000000), ("rand10k.bin", 0x40000000)],
    ),
}


def pattern_files() -> dict[str, bytes]:
    """The files the recipes load: slices of the corpus patterns (small, so the streams are).

    ``bios64k.bin`` replaces SeaBIOS on x86 (the guest never runs): 64 KiB of
    zeros with marker text at both ends, so the BIOS mapping is checkable and
    the streams compress to almost nothing.
    """
    from conftest import DATA, pattern1m

    rand = (DATA / "patterns" / "rand1m-b.bin").read_bytes()
    bios = bytearray(0x10000)
    bios[:16] = b"QEVM-BIOS-START\n"
    bios[-16:] = b"QEVM-BIOS-END..\n"
    return {
        "pattern16k.bin": pattern1m()[:16384],
        "rand10k.bin": rand[:10000],
        "bios64k.bin": bytes(bios),
    }


def summarise_elf(path: str) -> dict:
    """PT_LOADs of QEMU's ELF and the sha256 of each non-zero 4 KiB page in them."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        e = "<" if m[5] == 1 else ">"
        e_machine = struct.unpack_from(e + "H", m, 18)[0]
        (phoff,) = struct.unpack_from(e + "Q", m, 32)
        phentsize, phnum = struct.unpack_from(e + "HH", m, 54)
        loads = []
        pages = {}
        zero = bytes(4096)
        for i in range(phnum):
            p_type, _fl, off, _va, pa, filesz, _ms, _al = struct.unpack_from(
                e + "IIQQQQQQ", m, phoff + i * phentsize
            )
            if p_type != 1:
                continue
            loads.append({"paddr": pa, "size": filesz})
            for o in range(0, filesz, 4096):
                page = m[off + o : off + o + 4096]
                if page != zero[: len(page)]:
                    pages[f"{pa + o:#x}"] = hashlib.sha256(page).hexdigest()
    return {"e_machine": e_machine, "loads": loads, "nonzero_pages": pages}


def binary_of(name: str) -> str:
    """The QEMU a recipe runs: ``$QEVM_QEMU_<ARCH>`` (e.g. QEVM_QEMU_LOONGARCH64) or PATH's."""
    binary = RECIPES[name][0]
    return os.environ.get("QEVM_QEMU_" + binary.rsplit("-", 1)[-1].upper(), binary)


def make(name: str, outdir: pathlib.Path, patterns_dir: pathlib.Path) -> pathlib.Path:
    """Run recipe ``name``; write ``NAME.mig.xz`` and ``NAME.json`` to ``outdir``."""
    binary, args, loads = RECIPES[name]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="qevm-gen-"))
    try:
        if binary in ("qemu-system-x86_64", "qemu-system-ppc64") and "-bios" not in args:
            args = [*args, "-bios", "patterns/bios64k.bin"]
        hugetlbfs = os.environ.get("QEVM_HUGETLBFS", "")
        args = [a.replace("{hugetlbfs}", hugetlbfs) for a in args]
        argv = [binary_of(name), "-S", "-nodefaults"]
        argv += [str(patterns_dir / a[9:]) if a.startswith("patterns/") else a for a in args]
        for pat, addr in loads:
            argv += ["-device", f"loader,file={patterns_dir / pat},addr={addr:#x}"]
        with Qemu(argv) as vm:
            q = vm.qmp
            version = q.cmd("query-version")
            mtree = q.hmp("info mtree -f")
            ramblocks = q.hmp("info ramblock")
            dump = tmp / "dump.elf"
            try:
                q.cmd("dump-guest-memory", paging=False, protocol=f"file:{dump}")
                elf: dict | None = summarise_elf(str(dump))
                dump.unlink()
            except RuntimeError:  # e.g. loongarch64 in QEMU 7.2 cannot dump
                elf = None
            mig = tmp / f"{name}.mig"
            vm.save(str(mig))
        outdir.mkdir(parents=True, exist_ok=True)
        out = outdir / f"{name}.mig.xz"
        xz_file(mig, out)
        recipe = {
            "name": name,
            "qemu_version": version,
            "argv": [binary, "-S", "-display", "none", "-nodefaults", *args]
            + [
                a
                for pat, addr in loads
                for a in ("-device", f"loader,file=patterns/{pat},addr={addr:#x}")
            ],
            "mtree": mtree,
            "ramblocks": ramblocks,
            "dump": elf,
        }
        (outdir / f"{name}.json").write_text(json.dumps(recipe, indent=1) + "\n")
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    outdir = pathlib.Path(argv[0])
    patterns = pathlib.Path(tempfile.mkdtemp(prefix="qevm-pat-"))
    try:
        for pat, data in pattern_files().items():
            (patterns / pat).write_bytes(data)
        for name in argv[1:] or list(RECIPES):
            if shutil.which(binary_of(name)) is None:
                print(f"{name}: {binary_of(name)} not installed, skipped")
                continue
            if "{hugetlbfs}" in " ".join(RECIPES[name][1]) and not os.environ.get("QEVM_HUGETLBFS"):
                print(f"{name}: needs QEVM_HUGETLBFS (a hugetlbfs mount), skipped")
                continue
            t = time.time()
            out = make(name, outdir, patterns)
            print(f"{name}: {out.stat().st_size} bytes in {time.time() - t:.1f} s")
    finally:
        shutil.rmtree(patterns, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
