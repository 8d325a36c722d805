"""Extra connections of a live migration, for every command that reads RAM.

``memory`` and ``memmap`` take ``--channel`` like ``extract`` and ``ram``;
without the channels every command says on stderr how many pages of each
block are missing, as the destination QEMU's trace counts them
(``truth.missing_without_channels`` of the captures by tests/gen_live.py).
A postcopy-preempt channel that ends between records (the connection closed
after the last page asked for) is complete; an error in a channel names it.
"""

from __future__ import annotations

import json
import pathlib
import re

import pytest
from conftest import DATA, cli, unpack
from test_live_capture import CAPTURES, LIVE_DIR, _files, _wrong_mib
from test_memory import Elf

MISSING = re.compile(r"^warning: (.+): (\d+) pages? missing \(read as zeros\)$", re.M)


def _said_missing(err: str) -> dict[str, int]:
    return {name: int(n) for name, n in MISSING.findall(err)}


def _elf_reader(elf: Elf):
    """Guest-physical bytes of a core, unmapped ranges as zeros."""

    def read(gpa: int, n: int) -> bytes:
        out = bytearray(n)
        for pa, size, off in elf.loads:
            lo, hi = max(pa, gpa), min(pa + size, gpa + n)
            if lo < hi:
                out[lo - gpa : hi - gpa] = elf.m[off + lo - pa : off + hi - pa]
        return bytes(out)

    return read


@pytest.mark.parametrize("name", CAPTURES)
def test_memory_and_memmap_with_and_without_channels(name, tmp_path, capsys):
    recipe = json.loads((LIVE_DIR / f"{name}.json").read_text())
    truth = json.loads((LIVE_DIR / f"{name}.pmem-sha256.json").read_text())
    want = recipe["truth"]["missing_without_channels"]
    main_ch, chans = _files(LIVE_DIR, name)
    chan_args = [a for c in chans for a in ("--channel", c)]
    core = tmp_path / "core.elf"

    rc, _, err = cli(capsys, "memory", main_ch, *chan_args, "-o", core)
    assert rc == 0 and "missing" not in err
    elf = Elf(core)
    try:
        assert not _wrong_mib(_elf_reader(elf), truth)
    finally:
        elf.close()
    rc, _, err = cli(capsys, "memmap", main_ch, *chan_args)
    assert rc == 0 and "missing" not in err

    # without the channels: from the file, and read once from the xz file
    for src in (main_ch, LIVE_DIR / f"{name}.mig.xz"):
        rc, _, err = cli(capsys, "memory", src, "-o", core)
        assert rc == 0 and _said_missing(err) == want, err
        assert "--channel" in err
        rc, _, err = cli(capsys, "memmap", src)
        assert rc == 0 and _said_missing(err) == want
    for cmd in (["ram"], ["extract", "-o", tmp_path / "x"]):
        rc, _, err = cli(capsys, cmd[0], main_ch, *cmd[1:])
        assert rc == 0 and _said_missing(err) == want


def test_multifd_without_any_page_on_the_main_channel_from_a_pipe(tmp_path, capsys):
    """QEMU 11.1's multifd sends every page on the channels: read from the xz file,
    ``memory`` used to stop with "internal error: KeyError", ``extract`` wrote no block."""
    rc, _, err = cli(capsys, "memory", LIVE_DIR / "multifd-111.mig.xz", "-o", tmp_path / "c")
    missing = _said_missing(err)
    assert rc == 0 and missing["pc.ram"] == 0x10000000 // 4096
    # extract wrote no file at all for such blocks, and said nothing
    rc, out, err = cli(capsys, "extract", LIVE_DIR / "multifd-111.mig.xz", "-o", tmp_path / "x")
    assert rc == 0 and _said_missing(err) == missing
    assert (tmp_path / "x" / "pc.ram").stat().st_size == 0x10000000
    assert "pc.ram  (65536 pages missing" in out
    assert set(missing) == {
        "pc.ram",
        "0000:00:02.0/vga.vram",
        "/rom@etc/acpi/tables",
        "pc.bios",
        "pc.rom",
        "0000:00:02.0/vga.rom",
        "/rom@etc/table-loader",
        "/rom@etc/acpi/rsdp",
    }


# -- postcopy-preempt: the end of the channel --------------------------------------------


def _preempt(tmp_path, cut: int):
    """The postcopy-preempt capture's channel without its last ``cut`` bytes."""
    main_ch, (chan,) = _files(LIVE_DIR, "postcopy-preempt-72")
    data = chan.read_bytes()
    assert data[-8:] == (0x10).to_bytes(8, "big")  # QEMU 7.2 ended it with EOS
    out = tmp_path / "preempt.bin"
    out.write_bytes(data[: len(data) - cut])
    return main_ch, out


def test_preempt_channel_ending_after_its_last_page_is_complete(tmp_path, capsys):
    """Without the final EOS (the connection closes after the last page the
    destination asked for) the channel gives the same pages."""
    import qevm

    truth = json.loads((LIVE_DIR / "postcopy-preempt-72.pmem-sha256.json").read_text())
    main_ch, chan = _preempt(tmp_path, 8)
    with qevm.open(main_ch, index_ram=True, channels=[chan], decode_devices=False) as mig:
        assert mig.missing_pages() == {}
        assert mig.channels[0].pages == 40
        assert not _wrong_mib(lambda o, n: mig.page_index.read("pc.ram", o, n), truth)
    rc, _, err = cli(capsys, "memory", main_ch, "--channel", chan, "-o", tmp_path / "c")
    assert rc == 0 and "missing" not in err


def test_error_in_a_channel_names_the_channel(tmp_path, capsys):
    main_ch, chan = _preempt(tmp_path, 100)  # cut inside the last page
    rc, _, err = cli(capsys, "ram", main_ch, "--channel", chan)
    assert rc == 2
    assert err.startswith(f"qevm: error: in channel {chan}, at offset 0x")
    assert "input ends" in err
    multifd = unpack(DATA / "live" / "multifd-72.ch2.bin.xz")
    cut = tmp_path / "mf.bin"
    cut.write_bytes(multifd.read_bytes()[:1000])
    rc, _, err = cli(
        capsys, "extract", unpack(LIVE_DIR / "multifd-72.mig.xz"), "-o", tmp_path / "x",
        "--channel", cut,
    )  # fmt: skip
    # the first packet's header (0x40) is whole, its page offsets (0x180: 1024 bytes) not
    assert rc == 2 and f"in channel {cut}, at offset 0x180: input ends" in err


# -- a main stream that states no page size ----------------------------------------------


def _main_without_description(tmp_path):
    """multifd-111's main channel as QEMU writes it with suppress-vmdesc: cut after its
    EOF byte, nothing in it states the page size (every page went on the channels)."""
    import qevm
    from qevm.stream import EofRecord

    main = unpack(LIVE_DIR / "multifd-111.mig.xz")
    with qevm.open(main, decode_devices=False) as mig:
        (eof,) = [r for r in mig.records if isinstance(r, EofRecord)]
    out = tmp_path / "main.mig"
    out.write_bytes(main.read_bytes()[: eof.end])
    with qevm.open(out, decode_devices=False) as mig:
        assert mig.page_size is None
    return out


def _multifd_channel(tmp_path, page_size: int, pages: dict[int, bytes]) -> pathlib.Path:
    """A multifd channel (multifd-111's handshake) with one packet of ``pages`` of pc.ram."""
    from qevm.format import MULTIFD_MAGIC, MULTIFD_PACKET_SIZE, MULTIFD_VERSION, MultiFDPacket

    slots = MULTIFD_PACKET_SIZE // page_size
    hdr = MultiFDPacket(
        magic=MULTIFD_MAGIC,
        version=MULTIFD_VERSION,
        pages_alloc=slots,
        normal_pages=len(pages),
        next_packet_size=len(pages) * page_size,
        packet_num=1,
        ramblock=b"pc.ram",
    )
    offsets = list(pages) + [0] * (slots - len(pages))
    handshake = unpack(LIVE_DIR / "multifd-111.ch1.bin.xz").read_bytes()[:64]
    out = tmp_path / f"multifd-{page_size}.bin"
    out.write_bytes(
        handshake
        + hdr.pack()
        + b"".join(a.to_bytes(8, "big") for a in offsets)
        + b"".join(pages.values())
    )
    return out


def test_multifd_channel_tells_the_page_size_nothing_else_stated(tmp_path):
    """Pages of 8 KiB (alpha, sparc64) on a channel, the main stream silent on the size:
    the consumer used to be made for a guessed 4 KiB and the channel read with 8 KiB,
    each page indexed at the wrong place with no error."""
    import qevm

    page = bytes(range(256)) * 32
    chan = _multifd_channel(tmp_path, 8192, {0x4000: page})
    with qevm.open(_main_without_description(tmp_path), channels=[chan]) as mig:
        assert mig.page_size == 8192
        assert mig.page_index.read("pc.ram", 0x4000, 8192) == page
        assert mig.missing_pages()["pc.ram"] == 0x10000000 // 8192 - 1


def test_preempt_page_outlives_older_multifd_pages_when_no_page_made_the_consumer(tmp_path):
    """A page sent on the postcopy-preempt channel is newer than every multifd round
    before it.  When the main stream gave no page (the consumer is made only when a
    channel is added), that consumer used to start at round 0 after the stream's
    11 sync points, and the multifd channels' copy of the page (round 1) replaced it."""
    import qevm
    from qevm.format import RAM_SAVE_FLAG_EOS, RAM_SAVE_FLAG_PAGE

    page = b"preempt!" * 512
    preempt = tmp_path / "preempt.bin"
    preempt.write_bytes(
        RAM_SAVE_FLAG_PAGE.to_bytes(8, "big")  # pc.ram offset 0
        + b"\x06pc.ram"
        + page
        + RAM_SAVE_FLAG_EOS.to_bytes(8, "big")
    )
    _, multifd = _files(LIVE_DIR, "multifd-111")
    main = _main_without_description(tmp_path)
    with qevm.open(main, channels=[preempt, *multifd], decode_devices=False) as mig:
        assert mig.ram.syncs == 11
        assert mig.page_index.read("pc.ram", 0, 4096) == page
        assert mig.page_index.rounds("pc.ram", 0, 1)[0] == 11
    with qevm.open(main, channels=multifd, decode_devices=False) as mig:
        assert mig.page_index.rounds("pc.ram", 0, 1)[0] == 1  # the page is on the channels
        assert mig.page_index.read("pc.ram", 0, 4096) != page
