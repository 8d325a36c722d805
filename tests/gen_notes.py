"""Make small streams whose CPUs hold distinct register values, with QEMU's own ELF notes.

Each recipe starts QEMU paused (``-S``, two CPUs, no firmware that runs),
connects QEMU's gdbstub and writes every register that QEMU's
``dump-guest-memory`` puts in a note (general, floating-point, vector,
predicate and control registers, per CPU) with a value derived from the
register's name and the CPU, so every field of every note is distinct and
non-zero.  Then, from that same paused VM, it takes QEMU's
``dump-guest-memory`` ELF (paging=false) and migrates to ``exec:cat``.

    python tests/gen_notes.py OUTDIR [NAME ...]     # writes NAME.mig.xz + NAME.json

``NAME.json`` holds the recipe and QEMU's ELF summarised: ``e_machine``, the
byte order, the whole PT_NOTE segment (hex) and every PT_LOAD's address,
size and sha256.  The streams in ``tests/data/notes`` were made with this
script (QEMU 7.2); ``tests/test_notes.py`` also runs it live when QEMU is
installed.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import pathlib
import re
import shutil
import socket
import struct
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field

from qemu_util import Qemu, qemu_version, xz_file

#: aarch64 code run before the registers are written: enable SVE at EL1
#: (CPACR_EL1.ZEN/FPEN from x0) and set ZCR_EL1 from x1, so the CPU's SVE
#: vector length is not the reset one; then loop.
AARCH64_SET_ZCR = struct.pack(
    "<5I",
    0xD5181040,  # msr cpacr_el1, x0
    0xD5033FDF,  # isb
    0xD5181201,  # msr zcr_el1, x1
    0xD5033FDF,  # isb
    0x14000000,  # b .
)


@dataclass
class Recipe:
    """How to start one VM and which registers to write."""

    binary: str
    args: list[str]
    #: gdb features whose registers are written (all of their registers)
    features: tuple[str, ...]
    #: register name -> (current value, pattern) -> value to write, or None to leave it
    adjust: dict[str, Callable[[int, int], int | None]] = field(default_factory=dict)
    #: files to load: (name, bytes, guest-physical address)
    loads: list[tuple[str, bytes, int]] = field(default_factory=list)
    #: run before the registers are written: gdb client, CPU 0 first
    prepare: Callable[[Gdb], None] | None = None


def _aarch64_prepare(g: Gdb) -> None:
    """Run AARCH64_SET_ZCR on CPU 0 (the other CPU stays powered off with its reset ZCR)."""
    g.select(1)
    g.write("x0", 0x330000)  # CPACR_EL1.FPEN = ZEN = 0b11
    g.write("x1", 3)  # ZCR_EL1.LEN = 3: 512-bit vectors
    g.write("pc", 0x40200000)
    g.run_briefly()


RECIPES: dict[str, Recipe] = {
    "ppc64-pseries-notes": Recipe(
        "qemu-system-ppc64",
        ["-M", "pseries", "-m", "256M", "-smp", "2", "-bios", "{zeros}"],
        ("power.core", "power.fpu", "power.altivec", "power.vsx"),
        {"msr": lambda cur, pat: None},
    ),
    # LPCR[ILE] of the first CPU makes QEMU write a little-endian core
    "ppc64le-pseries-notes": Recipe(
        "qemu-system-ppc64",
        ["-M", "pseries", "-m", "256M", "-smp", "2", "-bios", "{zeros}"],
        ("power.core", "power.fpu", "power.altivec", "power.vsx", "power.spr"),
        {"msr": lambda cur, pat: None, "lpcr": lambda cur, pat: cur | 1 << 25},
    ),
    "s390x-notes": Recipe(
        "qemu-system-s390x",
        ["-m", "64M", "-smp", "2"],
        ("s390.core", "s390.acr", "s390.fpr", "s390.vx", "s390.cr"),
        {
            # keep the mode bits; set a condition code and a program mask
            "pswm": lambda cur, pat: cur | 2 << 44 | 0xB << 40,
            # only the architected FPC bits
            "fpc": lambda cur, pat: pat & 0xFCFCFF03,
        },
    ),
    "riscv64-virt-notes": Recipe(
        "qemu-system-riscv64",
        ["-M", "virt", "-bios", "none", "-m", "64M", "-smp", "2"],
        ("riscv.cpu",),
        {"zero": lambda cur, pat: None},
    ),
    # QEMU 10.0 (QEVM_QEMU_LOONGARCH64; 7.2 cannot dump LoongArch): r0 stays zero
    "loongarch64-virt-notes": Recipe(
        "qemu-system-loongarch64",
        ["-M", "virt", "-m", "256M", "-smp", "2"],
        ("loongarch.base", "loongarch.fpu"),
        {"r0": lambda cur, pat: None},
    ),
    "aarch64-max-sve-notes": Recipe(
        "qemu-system-aarch64",
        ["-M", "virt", "-cpu", "max", "-m", "64M", "-smp", "2"],
        ("aarch64.core", "aarch64.sve"),
        {
            "cpsr": lambda cur, pat: cur | (pat & 0xF0000000),  # NZCV only: keep EL and SP
            "vg": lambda cur, pat: None,
        },
        [("setzcr.bin", AARCH64_SET_ZCR, 0x40200000)],
        _aarch64_prepare,
    ),
}


def pattern(cpu: int, name: str, bits: int) -> int:
    """The value register ``name`` of CPU ``cpu`` gets: distinct bytes, never zero."""
    out = b""
    n = 0
    while len(out) * 8 < bits:
        out += hashlib.sha256(f"{cpu}/{name}/{n}".encode()).digest()
        n += 1
    return int.from_bytes(out[: bits // 8], "little") | 1


@dataclass
class Reg:
    """One register of QEMU's gdbstub target description."""

    num: int
    name: str
    bits: int
    feature: str


class Gdb:
    """A minimal GDB remote-protocol client for QEMU's gdbstub (over a unix socket)."""

    def __init__(self, path: str, big_endian: bool) -> None:
        for _ in range(200):
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                time.sleep(0.05)
        else:
            raise RuntimeError("QEMU's gdbstub socket did not appear")
        self.sock.settimeout(30)
        self.buf = b""
        self.order = "big" if big_endian else "little"
        self.cmd("qSupported:multiprocess+;xmlRegisters")
        self.cmd("?")
        self.reglist = self._target()
        #: by name; a name the stub lists twice (ppc's lr in core and spr) is the first
        self.regs: dict[str, Reg] = {}
        for r in self.reglist:
            self.regs.setdefault(r.name, r)

    def _packet(self) -> str:
        while True:
            m = re.search(rb"\$([^#]*)#[0-9a-fA-F]{2}", self.buf)
            if m:
                self.buf = self.buf[m.end() :]
                self.sock.sendall(b"+")
                return m.group(1).decode()
            data = self.sock.recv(1 << 16)
            if not data:
                raise RuntimeError("gdbstub connection closed")
            self.buf += data

    def cmd(self, body: str) -> str:
        """Send one packet and return the reply's payload."""
        self.sock.sendall(f"${body}#{sum(body.encode()) & 0xFF:02x}".encode())
        return self._packet()

    def _xfer(self, annex: str) -> str:
        out, off = "", 0
        while True:
            r = self.cmd(f"qXfer:features:read:{annex}:{off:x},ffb")
            out += r[1:]
            off += len(r) - 1
            if r[0] == "l":
                return out

    def _target(self) -> list[Reg]:
        regs: list[Reg] = []
        num = 0

        def walk(annex: str) -> None:
            nonlocal num
            text = re.sub(r"<!DOCTYPE[^>]*>", "", self._xfer(annex)).replace("xi:include", "inc")
            root = ET.fromstring(text)
            for el in root.iter():
                if el.tag == "inc":
                    walk(el.get("href", ""))
                elif el.tag == "feature":
                    for reg in el.findall("reg"):
                        num = int(reg.get("regnum", num))
                        bits = int(reg.get("bitsize", 0))
                        regs.append(Reg(num, reg.get("name", ""), bits, el.get("name", "")))
                        num += 1

        walk("target.xml")
        return regs

    def select(self, cpu: int) -> None:
        """Make CPU ``cpu`` (1-based thread id) the target of register reads and writes."""
        if self.cmd(f"Hgp1.{cpu:x}") != "OK":
            raise RuntimeError(f"gdbstub: no CPU {cpu}")

    def read(self, name: str | Reg) -> int:
        reg = self.regs[name] if isinstance(name, str) else name
        reply = self.cmd(f"p{reg.num:x}")
        if not re.fullmatch(r"([0-9a-f]{2})+", reply):
            raise RuntimeError(f"gdbstub cannot read {name}: {reply!r}")
        return int.from_bytes(bytes.fromhex(reply), self.order)

    def write(self, name: str | Reg, value: int) -> None:
        reg = self.regs[name] if isinstance(name, str) else name
        data = value.to_bytes(reg.bits // 8, self.order).hex()
        if self.cmd(f"P{reg.num:x}={data}") != "OK":
            raise RuntimeError(f"gdbstub refused to write {name}")

    def run_briefly(self, seconds: float = 0.3) -> None:
        """Let the VM run for ``seconds``, then stop it again."""
        self.sock.sendall(b"$c#63")
        time.sleep(seconds)
        self.sock.sendall(b"\x03")
        reply = self._packet()
        if not reply.startswith(("T", "S")):
            raise RuntimeError(f"gdbstub: unexpected stop reply {reply!r}")

    def close(self) -> None:
        self.sock.close()


def _notes_length(blob: bytes, e: str) -> int:
    """Bytes the notes at the start of ``blob`` take (up to a header that names nothing
    or does not fit)."""
    p = 0
    while p + 12 <= len(blob):
        nn, dn, _ = struct.unpack_from(e + "III", blob, p)
        size = 12 + -(-nn // 4) * 4 + -(-dn // 4) * 4
        if nn == 0 or p + size > len(blob):
            break
        p += size
    return p


def summarise_elf(path: str) -> dict:
    """Byte order, e_machine, the PT_NOTE bytes and every PT_LOAD (address, size, sha256).

    When the PT_NOTE segment is longer than the notes in it (QEMU sizes it from
    the first CPU), QEMU 7.2 wrote the memory right after the notes, before
    where its PT_LOADs point: each PT_LOAD then also gets the sha256 of its
    size of bytes at the place the data was written (``sha256_written``).
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        e = "<" if m[5] == 1 else ">"
        (e_machine,) = struct.unpack_from(e + "H", m, 18)
        (phoff,) = struct.unpack_from(e + "Q", m, 32)
        phentsize, phnum = struct.unpack_from(e + "HH", m, 54)
        headers = [
            struct.unpack_from(e + "IIQQQQQQ", m, phoff + i * phentsize) for i in range(phnum)
        ]
        notes = b"".join(m[h[2] : h[2] + h[5]] for h in headers if h[0] == 4)
        shift = len(notes) - _notes_length(notes, e)

        def sha(off: int, size: int) -> str:
            h = hashlib.sha256()
            for o in range(0, size, 1 << 24):
                h.update(m[off + o : off + min(size, o + (1 << 24))])
            return h.hexdigest()

        loads = []
        for p_type, _fl, off, _va, pa, filesz, _ms, _al in headers:
            if p_type == 1:
                load = {"paddr": pa, "size": filesz, "sha256": sha(off, filesz)}
                if shift:
                    load["sha256_written"] = sha(off - shift, filesz)
                loads.append(load)
    return {
        "e_machine": e_machine,
        "big_endian": e == ">",
        "notes": notes.hex(),
        "loads": loads,
    }


def binary_of(rec: Recipe) -> str:
    """The QEMU a recipe runs: ``$QEVM_QEMU_<ARCH>`` (e.g. QEVM_QEMU_LOONGARCH64) or PATH's."""
    return os.environ.get("QEVM_QEMU_" + rec.binary.rsplit("-", 1)[-1].upper(), rec.binary)


def make(name: str, outdir: pathlib.Path) -> pathlib.Path:
    """Run recipe ``name``; write ``NAME.mig.xz`` and ``NAME.json`` to ``outdir``."""
    rec = RECIPES[name]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="qevm-notes-"))
    try:
        zeros = tmp / "zeros.bin"
        zeros.write_bytes(bytes(0x10000))
        args = [a.replace("{zeros}", str(zeros)) for a in rec.args]
        argv = [binary_of(rec), "-S", "-nodefaults", *args]
        for fname, data, addr in rec.loads:
            (tmp / fname).write_bytes(data)
            argv += ["-device", f"loader,file={tmp / fname},addr={addr:#x}"]
        gsock = tmp / "gdb.sock"
        argv += [
            "-chardev",
            f"socket,path={gsock},server=on,wait=off,id=gdb0",
            "-gdb",
            "chardev:gdb0",
        ]
        big = rec.binary in ("qemu-system-ppc64", "qemu-system-s390x")
        with Qemu(argv) as vm:
            gdb = Gdb(str(gsock), big)
            try:
                if rec.prepare:
                    rec.prepare(gdb)
                written = _write_registers(gdb, rec, len(_threads(gdb)))
                dump = tmp / "dump.elf"
                vm.qmp.cmd("dump-guest-memory", paging=False, protocol=f"file:{dump}")
                elf = summarise_elf(str(dump))
                mig = tmp / f"{name}.mig"
                vm.save(str(mig))
            finally:
                gdb.close()
            version = vm.qmp.cmd("query-version")
        outdir.mkdir(parents=True, exist_ok=True)
        out = outdir / f"{name}.mig.xz"
        xz_file(mig, out)
        recipe = {
            "name": name,
            "qemu_version": version,
            "qemu": qemu_version(binary_of(rec)),
            "argv": [rec.binary, "-S", "-nodefaults", *rec.args]
            + [f"-device loader,file={f},addr={a:#x}" for f, _, a in rec.loads],
            "registers_written": written,
            "dump": elf,
        }
        (outdir / f"{name}.json").write_text(json.dumps(recipe, indent=1) + "\n")
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _threads(gdb: Gdb) -> list[str]:
    found: list[str] = []
    reply = gdb.cmd("qfThreadInfo")
    while reply.startswith("m"):
        found += reply[1:].split(",")
        reply = gdb.cmd("qsThreadInfo")
    return found


def _write_registers(gdb: Gdb, rec: Recipe, ncpus: int) -> list[str]:
    """Write the recipe's registers on every CPU; the names written."""
    names: list[str] = []
    for cpu in range(1, ncpus + 1):
        gdb.select(cpu)
        for reg in gdb.reglist:
            if not reg.feature.endswith(rec.features) or reg.bits == 0:
                continue
            if reg.feature.endswith(".spr") and (reg.name not in rec.adjust or cpu > 1):
                # only the first CPU's LPCR matters (the byte order); QEMU 7.2's
                # gdbstub numbers the other CPUs' SPRs differently
                continue
            value: int | None = pattern(cpu - 1, reg.name, reg.bits)
            how = rec.adjust.get(reg.name)
            if how is not None:
                value = how(gdb.read(reg), value)
            if value is None:
                continue
            gdb.write(reg, value)
            if cpu == 1:
                names.append(reg.name)
    return names


def main(argv: list[str]) -> int:
    outdir = pathlib.Path(argv[0])
    for name in argv[1:] or list(RECIPES):
        if shutil.which(binary_of(RECIPES[name])) is None:
            print(f"{name}: {binary_of(RECIPES[name])} not installed, skipped")
            continue
        t = time.time()
        out = make(name, outdir)
        print(f"{name}: {out.stat().st_size} bytes in {time.time() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    sys.exit(main(sys.argv[1:]))
