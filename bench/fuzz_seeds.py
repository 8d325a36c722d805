"""Seeds of the fuzzer: small streams derived from the committed test data.

Every seed is a real stream from ``tests/data`` (QEMU 7.2, 10.0 and 11.1), made
small enough to be read five times per case in a few tens of milliseconds:
the long runs of page records are cut (``ZERO|CONTINUE`` and
``PAGE|CONTINUE`` records after the first few of each RAM section go; they
change no block and name none, so what remains is a stream QEMU would load
with those pages missing), a multifd channel keeps its first packets, and
containers are rebuilt around small streams (a libvirt image with gzip, a
zstd file).  Each seed also gets its structure (:class:`Layout`): where the
framing integers, RAM records, sections, the JSON description and the RAM
block names are, for the structure-aware mutations.
"""

from __future__ import annotations

import gzip
import lzma
import struct
from dataclasses import dataclass, field
from pathlib import Path

import qevm
from qevm.format import (
    MULTIFD_PACKET_SIZE,
    RAM_PAGE_KINDS,
    RAM_SAVE_FLAG_CONTINUE,
    RAM_SAVE_FLAG_PAGE,
    RAM_SAVE_FLAG_ZERO,
    SECTION_FULL,
    SECTION_START,
    MultiFDInit,
    MultiFDPacket,
)
from qevm.sections.ram.consumer import PageConsumer
from qevm.sections.ram.records import RamState
from qevm.stream import CommandRecord, DescriptionRecord, SectionRecord
from qevm.wire import Reader

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
#: page records kept per RAM section record (the first ones, whatever they are)
KEEP_RUN = 48
#: bytes of CONTINUE page records kept in all
KEEP_BYTES = 96 << 10


@dataclass
class Layout:
    """Where the structure of one input file is."""

    #: (offset, size) of framing and record integers
    ints: list[tuple[int, int]] = field(default_factory=list)
    #: (start, end) of whole units: sections, commands, RAM records, packets
    units: list[tuple[int, int]] = field(default_factory=list)
    #: (offset of the u32 length, offset of the text, its length) of the JSON description
    desc: tuple[int, int, int] | None = None
    #: RAM block names
    names: list[str] = field(default_factory=list)


@dataclass
class Seed:
    """One fuzz input: the main file, extra channel files, and options for every command."""

    name: str
    main: bytes
    channels: list[bytes] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    layouts: list[Layout] = field(default_factory=list)
    #: a description to give with --desc (streams without one)
    desc: bytes | None = None

    def files(self) -> list[bytes]:
        return [self.main, *self.channels]


def _unxz(rel: str) -> bytes:
    return lzma.decompress((DATA / rel).read_bytes())


def _ram_records(mig: qevm.Migration) -> list[tuple[SectionRecord, list]]:
    """The RAM records of every top-level RAM section record, as qevm reads them."""
    ctx = mig._parsed.context
    state = RamState(ctx)
    state.consumer = PageConsumer(ctx.page_size or 4096)
    out = []
    for rec in mig.records:
        if isinstance(rec, SectionRecord) and rec.entry is not None and rec.entry.idstr == "ram":
            r = Reader(mig.source, rec.body_offset)
            out.append((rec, list(state.records(r, runs=False))))
    return out


def shrink(data: bytes, path: Path, desc: Path | None = None) -> bytes:
    """``data`` without the CONTINUE page records (ZERO, PAGE, XBZRLE, zlib) past the
    first :data:`KEEP_RUN` of each RAM section record."""
    path.write_bytes(data)
    cut: list[tuple[int, int]] = []
    kept = 0
    with qevm.open(path, desc=desc) as mig:
        for _rec, rrs in _ram_records(mig):
            seen = 0
            for rr in rrs:
                if rr.kind in RAM_PAGE_KINDS and rr.flags & RAM_SAVE_FLAG_CONTINUE:
                    seen += 1
                    if seen > KEEP_RUN or kept + rr.end - rr.offset > KEEP_BYTES:
                        cut.append((rr.offset, rr.end))
                    else:
                        kept += rr.end - rr.offset
    out = bytearray()
    pos = 0
    for a, b in cut:
        out += data[pos:a]
        pos = b
    out += data[pos:]
    return bytes(out)


def stream_layout(data: bytes, path: Path, desc: Path | None = None) -> Layout:
    """The structure of a QEVM stream, from qevm's own reading of it."""
    path.write_bytes(data)
    lay = Layout(ints=[(0, 4), (4, 4)])
    with qevm.open(path, desc=desc) as mig:
        lay.names = [b.name for b in mig.ram_blocks]
        for rec in mig.all_records():
            lay.units.append((rec.offset, rec.end))
            if isinstance(rec, SectionRecord):
                lay.ints += [(rec.offset, 1), (rec.offset + 1, 4)]
                if rec.type in (SECTION_START, SECTION_FULL) and rec.entry is not None:
                    at = rec.offset + 5
                    lay.ints += [(at, 1), (at + 1 + len(rec.entry.idstr), 4)]
                    lay.ints.append((at + 5 + len(rec.entry.idstr), 4))
                if rec.footer:
                    lay.ints += [(rec.body_end, 1), (rec.body_end + 1, 4)]
            elif isinstance(rec, CommandRecord):
                lay.ints += [(rec.offset + 1, 2), (rec.offset + 3, 2)]
                if rec.nested is not None:
                    lay.ints.append((rec.offset + 5, 4))
            elif isinstance(rec, DescriptionRecord):
                lay.ints.append((rec.offset + 1, 4))
                lay.desc = (rec.offset + 1, rec.offset + 5, rec.length)
        for _rec, rrs in _ram_records(mig):
            for rr in rrs:
                lay.units.append((rr.offset, rr.end))
                lay.ints.append((rr.offset, 8))
                if rr.named:
                    lay.ints.append((rr.offset + 8, 1))
                if rr.data_offset and rr.kind not in (RAM_SAVE_FLAG_ZERO, RAM_SAVE_FLAG_PAGE):
                    lay.ints.append((rr.data_offset - 4, 4))
        for b in mig.ram_blocks:
            if b.offset:
                lay.ints += [(b.offset, 1), (b.offset + 1 + len(b.name.encode()), 8)]
    return lay


def cut_multifd(data: bytes, packets: int, page_size: int = 4096) -> tuple[bytes, Layout]:
    """The handshake, the first packet and the first ``packets`` packets with pages (of
    at most 32 KiB) of a multifd channel (uncompressed: a packet's meaning does not
    depend on the others')."""
    lay = Layout(ints=[(0, 4), (4, 4), (24, 1)])
    out = bytearray(data[: MultiFDInit.size])
    pos = MultiFDInit.size
    header = MultiFDPacket.size + 8 * (MULTIFD_PACKET_SIZE // page_size)
    first = True
    while packets and pos + header <= len(data):
        p = MultiFDPacket.unpack(data[pos : pos + MultiFDPacket.size], pos)
        with_pages = bool(p.normal_pages or p.zero_pages)
        end = pos + header + (p.next_packet_size if with_pages else 0)
        if (with_pages and end - pos <= 32 << 10) or first:
            at = len(out)
            out += data[pos:end]
            lay.units.append((at, len(out)))
            lay.ints += [(at + k, 4) for k in range(0, 36, 4)]
            n = min(4, p.normal_pages + p.zero_pages)
            lay.ints += [(at + MultiFDPacket.size + 8 * i, 8) for i in range(n)]
            packets -= with_pages
            first = False
        pos = end
    return bytes(out), lay


def _libvirt_around(stream: bytes) -> bytes:
    """libvirt's gzip save image header (and XML) from the committed image, around ``stream``."""
    img = (DATA / "libvirt" / "save-gzip.img").read_bytes()
    (data_len,) = struct.unpack_from("<I", img, 20)
    return img[: 92 + data_len] + gzip.compress(stream, 6, mtime=0)


def make_seeds(work: Path) -> list[Seed]:
    """Every seed with its layout (``work`` holds scratch files)."""
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / "seed.tmp"
    seeds: list[Seed] = []

    def stream(name: str, rel: str, small: bool = True, desc_rel: str | None = None) -> Seed:
        data = _unxz(rel)
        desc = None
        if desc_rel is not None:
            desc = work / "seed-desc.tmp"
            desc.write_bytes(_unxz(desc_rel))
        if small:
            data = shrink(data, tmp, desc)
        s = Seed(name, data, desc=desc.read_bytes() if desc else None)
        s.layouts = [stream_layout(data, tmp, desc)]
        seeds.append(s)
        if desc is not None:
            desc.unlink()
        return s

    stream("isapc-7.2", "layouts/isapc.mig.xz", small=False)
    stream("riscv64-virt-7.2", "notes/riscv64-virt-notes.mig.xz")
    stream("s390x-7.2", "notes/s390x-notes.mig.xz")
    stream("aarch64-sve-7.2", "notes/aarch64-max-sve-notes.mig.xz")
    stream("pc-2.3-nofooter", "generated/pc-2.3-nofooter.mig.xz")
    stream(
        "pc-2.2-nodesc", "generated/pc-2.2-nodesc.mig.xz", desc_rel="generated/pc-2.2-desc.mig.xz"
    )
    stream("pc-7.2-noconfig", "generated/pc-7.2-noconfig.mig.xz")
    stream("q35-ignore-shared-7.2", "streams/q35-ignore-shared-7.2.mig.xz")
    stream("xbzrle-11.1", "live/xbzrle-111.mig.xz")
    stream("compress-7.2", "live/compress-72.mig.xz")
    stream("postcopy-11.1", "live/postcopy-paused-111.mig.xz")
    mf = stream("multifd-7.2", "live/multifd-72.mig.xz")
    chan, clay = cut_multifd(_unxz("live/multifd-72.ch3.bin.xz"), 3)
    mf.channels, mf.layouts = [chan], [*mf.layouts, clay]
    for rel, snap in (("qcow2/c512.qcow2.xz", "1"), ("qcow2/v2-c4k.qcow2.xz", "1")):
        seeds.append(Seed(Path(rel).stem, _unxz(rel), options=["--snapshot", snap]))
        seeds[-1].layouts = [Layout(ints=[(k, 4) for k in range(0, 104, 4)])]
    small = seeds[1].main
    seeds.append(Seed("libvirt-gzip", _libvirt_around(small), layouts=[Layout()]))
    import zstandard

    seeds.append(Seed("zstd", zstandard.ZstdCompressor().compress(small), layouts=[Layout()]))
    tmp.unlink(missing_ok=True)
    return seeds
