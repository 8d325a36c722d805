"""qevm memmap / qevm memory against QEMU's own truth.

Expectations come from QEMU: ``info mtree -f`` (which block backs which
guest-physical range), the patterns ``-device loader`` put at known
addresses, QEMU's ``dump-guest-memory`` ELF (whole files in the corpus, page
hashes for the streams made by ``gen_layouts.py``), the sha256 of each
PT_LOAD of QEMU's ELF of the Linux guests and what Volatility 3 found in it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys

import pytest
from conftest import CORPUS, DATA, HAVE_CORPUS, LINUX, STREAMS, meta, pattern1m, unpack
from mtree import loaded_patterns, system_ranges

import qevm
from qevm.errors import UsageError
from qevm.views.core import write_core
from qevm.views.memmap import layout, parse_overrides

LAYOUTS = {p.name[: -len(".mig.xz")]: p for p in sorted((DATA / "layouts").glob("*.mig.xz"))}
#: every stream whose recipe has `info mtree -f`
MTREE_STREAMS = {**STREAMS, **LAYOUTS, **LINUX}
SRC = str(pathlib.Path(__file__).resolve().parents[1] / "src")


def _patterns() -> dict[str, bytes]:
    from gen_layouts import pattern_files

    out = dict(pattern_files())
    out["pattern1m.bin"] = pattern1m()
    out["rand1m-b.bin"] = (DATA / "patterns" / "rand1m-b.bin").read_bytes()
    return out


PATTERNS = _patterns()


# -- reading ELF files ------------------------------------------------------------------


class Elf:
    """A core file: its PT_LOADs and notes, read independently of qevm."""

    def __init__(self, path: pathlib.Path | str) -> None:
        self.file = open(path, "rb")  # noqa: SIM115
        self.m = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)
        m = self.m
        assert m[:4] == b"\x7fELF" and m[4] == 2
        self.e = e = "<" if m[5] == 1 else ">"
        self.machine = struct.unpack_from(e + "H", m, 18)[0]
        (phoff,) = struct.unpack_from(e + "Q", m, 32)
        (phnum,) = struct.unpack_from(e + "H", m, 56)
        self.loads: list[tuple[int, int, int]] = []  # (paddr, size, offset)
        self.notes: list[tuple[bytes, int, bytes]] = []
        for i in range(phnum):
            t, _f, off, _va, pa, fs, ms, _al = struct.unpack_from(e + "IIQQQQQQ", m, phoff + 56 * i)
            if t == 1:
                assert fs == ms
                self.loads.append((pa, fs, off))
            elif t == 4:
                p, end = off, off + fs
                while p < end:
                    nn, dn, ty = struct.unpack_from(e + "III", m, p)
                    p += 12
                    name = m[p : p + nn].rstrip(b"\0")
                    p += -(-nn // 4) * 4
                    self.notes.append((name, ty, m[p : p + dn]))
                    p += -(-dn // 4) * 4

    def read(self, gpa: int, n: int) -> bytes:
        out = bytearray()
        while n:
            for pa, size, off in self.loads:
                if pa <= gpa < pa + size:
                    k = min(n, pa + size - gpa)
                    out += self.m[off + gpa - pa : off + gpa - pa + k]
                    gpa, n = gpa + k, n - k
                    break
            else:
                raise KeyError(f"{gpa:#x} is in no PT_LOAD")
        return bytes(out)

    def nonzero_pages(self, start: int, size: int) -> dict[int, bytes]:
        """Non-zero 4 KiB pages of guest-physical [start, start+size), found via SEEK_DATA."""
        out = {}
        fd = self.file.fileno()
        for pa, lsize, off in self.loads:
            lo, hi = max(pa, start), min(pa + lsize, start + size)
            if lo >= hi:
                continue
            pos, end = off + lo - pa, off + hi - pa
            while pos < end:
                try:
                    data = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:
                    break
                if data >= end:
                    break
                hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
                first = pos + (data - pos) // 4096 * 4096
                for p in range(first, hole, 4096):
                    page = self.m[p : p + 4096]
                    if page.count(0) != len(page):
                        out[pa + p - off] = page
                pos = max(hole, first + 4096)
        return out

    def close(self) -> None:
        self.m.close()
        self.file.close()


@pytest.fixture(scope="session")
def cores(tmp_path_factory):
    """qevm's ELF of a stream, written once per session."""
    made: dict[str, pathlib.Path] = {}
    root = tmp_path_factory.mktemp("cores")

    def get(path: pathlib.Path) -> pathlib.Path:
        key = str(path)
        if key not in made:
            out = root / f"{len(made)}.elf"
            write_core(str(unpack(path)), out)
            made[key] = out
        return made[key]

    return get


def _norm(ranges):
    """Join adjacent pieces of one block with contiguous offsets."""
    out: list[tuple[int, int, str, int]] = []
    for s, e, n, o in sorted(ranges):
        if (
            out
            and out[-1][1] == s
            and out[-1][2] == n
            and out[-1][3] + out[-1][1] - out[-1][0] == o
        ):
            out[-1] = (out[-1][0], e, n, out[-1][3])
        else:
            out.append((s, e, n, o))
    return out


def _region(block: str) -> str:
    """The memory region name `info mtree` shows for a RAM block."""
    return block.rsplit("/", 1)[-1] if re.match(r"[0-9a-f]{4}:", block) else block


# -- layout against info mtree -f ------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MTREE_STREAMS))
def test_memmap_matches_mtree(name):
    path = MTREE_STREAMS[name]
    truth = _norm([(s, e + 1, n, o) for s, e, n, o in system_ranges(meta(path)["mtree"])])
    assert truth
    with qevm.open(unpack(path), index_ram=True) as mig:
        mm = layout(mig)
    ours = _norm([(r.gpa, r.end, _region(r.block), r.offset) for r in mm.ranges])
    assert ours == truth
    assert all(r.source for r in mm.ranges)


# -- patterns and QEMU's dumps ----------------------------------------------------------


def _with_patterns_in_the_stream() -> list[str]:
    """Streams whose recipe loaded patterns into RAM that the stream carries
    (x-ignore-shared leaves guest RAM out)."""
    return sorted(
        name
        for name, path in MTREE_STREAMS.items()
        if loaded_patterns(meta(path)["argv"])
        and "x-ignore-shared" not in (meta(path).get("capabilities") or ())
    )


@pytest.mark.parametrize("name", _with_patterns_in_the_stream())
def test_patterns_at_their_address(name, cores):
    path = MTREE_STREAMS[name]
    loads = loaded_patterns(meta(path)["argv"])
    with qevm.open(unpack(path), decode_devices=False) as mig:
        assert all(b.in_stream for b in mig.ram_blocks if b.used_length >= 64 << 20)
    elf = Elf(cores(path))
    try:
        for pat, gpa in loads:
            data = PATTERNS[pat]
            assert elf.read(gpa, len(data)) == data, f"{pat} at {gpa:#x}"
    finally:
        elf.close()


DUMPS = {
    n: p.parent / f"{n}.dump.elf.xz"
    for n, p in STREAMS.items()
    if (p.parent / f"{n}.dump.elf.xz").exists()
}


@pytest.mark.parametrize("name", sorted(DUMPS))
def test_elf_equals_qemu_dump(name, cores):
    """Every guest-physical byte of QEMU's PT_LOADs, and its CPU notes, in qevm's ELF."""
    qemu = Elf(unpack(DUMPS[name]))
    ours = Elf(cores(STREAMS[name]))
    try:
        assert ours.machine == qemu.machine
        compared = 0
        for pa, size, off in qemu.loads:
            for o in range(0, size, 1 << 22):
                n = min(1 << 22, size - o)
                assert ours.read(pa + o, n) == qemu.m[off + o : off + o + n], hex(pa + o)
            compared += size
        assert compared >= 128 << 20
        assert ours.notes == qemu.notes
    finally:
        qemu.close()
        ours.close()


@pytest.mark.parametrize("name", sorted(n for n in LAYOUTS if meta(LAYOUTS[n]).get("dump")))
def test_layout_streams_equal_qemu_dump_pages(name, cores):
    """The non-zero pages of QEMU's dump of the generated VMs, by address and sha256."""
    dump = meta(LAYOUTS[name])["dump"]
    ours = Elf(cores(LAYOUTS[name]))
    try:
        assert ours.machine == dump["e_machine"]
        found = {}
        for load in dump["loads"]:
            ours.read(load["paddr"], 1)
            ours.read(load["paddr"] + load["size"] - 1, 1)
            for gpa, page in ours.nonzero_pages(load["paddr"], load["size"]).items():
                found[f"{gpa:#x}"] = hashlib.sha256(page).hexdigest()
        assert found == dump["nonzero_pages"]
    finally:
        ours.close()


def test_libvirt_images_cover_qemu_dump(tmp_path):
    """libvirt's memory-only dump of the same guest: every PT_LOAD covered, pattern in place.

    (The dump and the save images were taken at different moments of a running
    guest, so a few BIOS data pages differ; the layout and the pattern do not.)
    """
    if not HAVE_CORPUS:
        pytest.skip("the shared corpus is not available")
    qemu = Elf(unpack(CORPUS / "libvirt" / "dump-memonly.elf.xz"))
    out = tmp_path / "lv.elf"
    write_core(str(unpack(CORPUS / "libvirt" / "save-raw.img.xz")), out)
    ours = Elf(out)
    try:
        for pa, size, _off in qemu.loads:
            ours.read(pa, 1)
            ours.read(pa + size - 1, 1)
        assert ours.read(0x1000000, 1 << 20) == pattern1m() == qemu.read(0x1000000, 1 << 20)
        assert [n[:2] for n in ours.notes] == [n[:2] for n in qemu.notes]
    finally:
        qemu.close()
        ours.close()


# -- Linux guests -------------------------------------------------------------------------


def _elf_info(name: str) -> list[tuple[int, int, str]]:
    text = (CORPUS / "linux" / f"{name}.elf-info.txt").read_text()
    return [
        (int(m[1], 16), int(m[2], 16), m[3])
        for m in re.finditer(
            r"PT_LOAD paddr=(0x[0-9a-f]+) .*?filesz=(0x[0-9a-f]+) .*?sha256=(\w+)", text
        )
    ]


@pytest.mark.corpus
@pytest.mark.parametrize("name", sorted(LINUX))
def test_linux_segments_sha256(name, cores):
    ours = Elf(cores(LINUX[name]))
    try:
        for pa, size, digest in _elf_info(name):
            h = hashlib.sha256()
            for o in range(0, size, 1 << 24):
                h.update(ours.read(pa + o, min(1 << 24, size - o)))
            assert h.hexdigest() == digest, hex(pa)
    finally:
        ours.close()


#: Volatility 3's command line (its `vol` script) run by this interpreter
VOL = [
    sys.executable,
    "-c",
    "import sys; from volatility3.cli import main; sys.argv[0] = 'vol'; sys.exit(main())",
]


def _banners(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^(0x[0-9a-f]+)\t(Linux version .*)$", text, re.M)


@pytest.mark.slow
@pytest.mark.corpus
def test_volatility_banners_on_linux(cores):
    """Volatility 3 finds the same banners at the same addresses as in QEMU's ELF."""
    pytest.importorskip("volatility3")
    if not LINUX:
        pytest.skip("the shared corpus is not available")
    procs = {
        name: subprocess.Popen(
            [*VOL, "-q", "-f", str(cores(p)), "banners.Banners"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, p in LINUX.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        expected = _banners((CORPUS / "linux" / f"{name}.vol-banners.txt").read_text())
        assert expected and _banners(out) == expected


def test_volatility_reads_qevm_elf(cores):
    """Volatility 3's ELF layer stacks on qevm's core and reads the pattern at its GPA."""
    pytest.importorskip("volatility3")
    from volatility3.framework import contexts
    from volatility3.framework.layers import elf, physical

    path = cores(STREAMS["q35-11.1"])
    ctx = contexts.Context()
    ctx.config["base.location"] = pathlib.Path(path).as_uri()
    ctx.add_layer(physical.FileLayer(ctx, "base", "base"))
    ctx.config["elf.base_layer"] = "base"
    layer = elf.Elf64Layer(ctx, "elf", "elf")
    ctx.add_layer(layer)
    assert layer.read(0x1000000, 1 << 20) == pattern1m()
    assert layer.is_valid(0xFD000000) and layer.is_valid(0xFFFFFFFF)


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
@pytest.mark.parametrize("name", ["q35-11.1", "aarch64-virt-11.1"])
def test_gdb_opens_qevm_elf(name, cores):
    path = cores(STREAMS[name])
    out = subprocess.run(
        ["gdb", "-batch", "-ex", "info files", "-ex", "info registers pc", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    qemu = Elf(unpack(DUMPS[name]))
    try:
        for pa, size, _ in qemu.loads:
            assert _covered(out.stdout, pa, size), hex(pa)
        x86 = qemu.machine in (3, 62)
    finally:
        qemu.close()
    if x86:  # (the gdb here is not gdb-multiarch: it knows only x86 registers)
        # the PC gdb shows comes from qevm's NT_PRSTATUS: the CPU's from `info registers`
        regs = (pathlib.Path(STREAMS[name]).parent / f"{name}.regs.txt").read_text()
        pc = re.search(r"(?:EIP|RIP)=([0-9a-f]+)", regs)
        assert pc and re.search(rf"(?:pc|eip|rip)\s+0x0*{int(pc[1], 16):x}\b", out.stdout)


def _covered(text: str, pa: int, size: int) -> bool:
    spans = sorted(
        (int(a, 16), int(b, 16))
        for a, b in re.findall(r"(0x[0-9a-f]+) - (0x[0-9a-f]+) is load", text)
    )
    pos = pa
    for a, b in spans:
        if a <= pos < b:
            pos = b
    return pos >= pa + size


@pytest.mark.corpus
@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_gdb_x86_64_registers_from_notes(cores):
    name = "linux-x86-pc-smp2-qemu111"
    if name not in LINUX:
        pytest.skip("the shared corpus is not available")
    out = subprocess.run(
        ["gdb", "-batch", "-ex", "info registers rip rsp", "-c", str(cores(LINUX[name]))],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    regs = (CORPUS / "linux" / f"{name}.regs.txt").read_text()
    rip, rsp = re.search(r"RIP=([0-9a-f]+)", regs)[1], re.search(r"RSP=([0-9a-f]+)", regs)[1]
    assert f"0x{int(rip, 16):x}" in out and f"0x{int(rsp, 16):x}" in out
    assert (
        "elf64-x86-64"
        in subprocess.run(
            ["gdb", "-batch", "-ex", "info files", "-c", str(cores(LINUX[name]))],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    )


# -- the command line, pipes, raw images, overrides -----------------------------------


def _qevm(*args: str, stdin=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run(
        [sys.executable, "-m", "qevm", *args], stdin=stdin, capture_output=True, env=env
    )


def test_memory_from_pipe_equals_from_file(tmp_path, cores):
    path = STREAMS["q35-11.1"]
    with open(unpack(path), "rb") as f:
        r = _qevm("memory", "-", "-o", str(tmp_path / "p.elf"), stdin=f)
    assert r.returncode == 0, r.stderr
    a, b = Elf(tmp_path / "p.elf"), Elf(cores(path))
    try:
        assert [x[:2] for x in a.loads] == [x[:2] for x in b.loads]
        assert a.notes == b.notes
        for pa, size, _ in b.loads:
            assert a.read(pa, size) == b.read(pa, size)
    finally:
        a.close()
        b.close()
    assert os.stat(tmp_path / "p.elf").st_blocks * 512 < 16 << 20  # sparse


@pytest.mark.parametrize("pipe", [False, True])
def test_memory_raw(tmp_path, pipe):
    path = LAYOUTS["q35-below4g-1g"]
    out = tmp_path / "m.raw"
    if pipe:
        with open(unpack(path), "rb") as f:
            r = _qevm("memory", "-", "-o", str(out), "--format", "raw", stdin=f)
    else:
        r = _qevm("memory", str(unpack(path)), "-o", str(out), "--format", "raw")
    assert r.returncode == 0, r.stderr
    assert not list(tmp_path.glob("*.qevm-stage"))
    with open(out, "rb") as f:
        for pat, gpa in loaded_patterns(meta(path)["argv"]):
            f.seek(gpa)
            assert f.read(len(PATTERNS[pat])) == PATTERNS[pat]
        f.seek(0xFFFF0000)
        assert f.read(16) == b"QEVM-BIOS-START\n"
    assert os.stat(out).st_size == 1 << 32 | 0x10000000
    assert os.stat(out).st_blocks * 512 < 4 << 20


def test_memmap_cli_json_and_text():
    path = str(unpack(STREAMS["q35-11.1"]))
    r = _qevm("memmap", path, "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    vram = [x for x in j["ranges"] if x["block"].endswith("vga.vram")]
    assert vram and vram[0]["gpa"] == 0xFD000000 and "BAR0" in vram[0]["source"]
    r = _qevm("memmap", str(STREAMS["q35-11.1"]))  # compressed: read as a stream
    assert r.returncode == 0 and b"pc.bios" in r.stdout and b"PAM" in r.stdout


def test_map_override(tmp_path):
    path = unpack(LAYOUTS["pc-dimm2"])
    with qevm.open(path, index_ram=True) as mig:
        mm = layout(mig, "d2=0x200000000,d1=0x300000000+0x1000:0x2000")
    d1 = [r for r in mm.ranges if r.block == "d1"]
    d2 = [r for r in mm.ranges if r.block == "d2"]
    assert [(r.gpa, r.size, r.offset, r.source) for r in d1] == [
        (0x300000000, 0x2000, 0x1000, "--map")
    ]
    assert [(r.gpa, r.size) for r in d2] == [(0x200000000, 64 << 20)]
    r = _qevm("memory", str(path), "-o", str(tmp_path / "o.elf"), "--map", "d2=0x200000000")
    assert r.returncode == 0, r.stderr
    elf = Elf(tmp_path / "o.elf")
    try:
        rand = PATTERNS["rand10k.bin"]
        assert elf.read(0x200000000, len(rand)) == rand  # rand10k was loaded at d2's start
    finally:
        elf.close()


@pytest.mark.parametrize(
    "bad", ["nonsense", "=0x1000", "pc.ram=0x0+0x10", "pc.ram=zz", "pc.ram=0+0:0"]
)
def test_map_syntax_errors(bad):
    with pytest.raises(UsageError):
        parse_overrides(bad)


def test_map_errors_name_block_and_bounds():
    with qevm.open(unpack(LAYOUTS["isapc"]), index_ram=True) as mig:
        with pytest.raises(UsageError, match="no-such"):
            layout(mig, "no-such=0x0")
        with pytest.raises(UsageError, match="outside"):
            layout(mig, "pc.bios=0x0+0x0:0x20000")
    r = _qevm("memmap", str(unpack(LAYOUTS["isapc"])), "--map", "bad")
    assert r.returncode == 2 and b"BLOCK=GPA" in r.stderr


# -- live: RAM above 4 GiB on a default split, made by the installed QEMU ------------


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["pc-4200m", "q35-4200m-dimm"])
def test_live_layouts(recipe, tmp_path):
    import gen_layouts

    binary = gen_layouts.RECIPES[recipe][0]
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed")
    pats = tmp_path / "patterns"
    pats.mkdir()
    for n, data in gen_layouts.pattern_files().items():
        (pats / n).write_bytes(data)
    path = gen_layouts.make(recipe, tmp_path, pats)
    info = meta(path)
    with qevm.open(unpack(path), index_ram=True) as mig:
        mm = layout(mig)
        ours = _norm([(r.gpa, r.end, _region(r.block), r.offset) for r in mm.ranges])
        assert ours == _norm([(s, e + 1, n, o) for s, e, n, o in system_ranges(info["mtree"])])
        write_core(mig, tmp_path / "c.elf")
    elf = Elf(tmp_path / "c.elf")
    try:
        for pat, gpa in loaded_patterns(info["argv"]):
            assert elf.read(gpa, len(PATTERNS[pat])) == PATTERNS[pat]
        found = {}
        for load in info["dump"]["loads"]:
            for gpa, page in elf.nonzero_pages(load["paddr"], load["size"]).items():
                found[f"{gpa:#x}"] = hashlib.sha256(page).hexdigest()
        assert found == info["dump"]["nonzero_pages"]
    finally:
        elf.close()


@pytest.mark.parametrize("snapshot", ["snap1", "snap2"])
def test_raw_memory_of_a_qcow2_snapshot_equals_its_page_index(snapshot, tmp_path):
    """A snapshot's VM state cannot be mapped: its pages are copied in pieces."""
    path = unpack(DATA / "streams" / "savevm-11.1.qcow2.xz")
    out = tmp_path / "mem.raw"
    res = write_core(str(path), out, "raw", open_args={"snapshot": snapshot})
    assert res.memmap.ranges
    with qevm.open(path, snapshot=snapshot, index_ram=True) as mig, open(out, "rb") as f:
        for r in res.memmap.ranges:
            f.seek(r.gpa)
            assert f.read(r.size) == mig.page_index.read(r.block, r.offset, r.size), r
