"""``qevm ram`` on inputs read once: compressed files and pipes.

The statistics need no page bytes and a hexdump keeps only its range's
(:class:`qevm.ramspool.SpoolingIndex`): the answers must be those of the
decompressed file, and the bytes those of the destination QEMU's memory.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import DATA, LIVE, STREAMS, unpack
from test_live_capture import _wrong_mib

import qevm
from qevm.cli import main
from qevm.ramspool import SpoolingIndex

#: streams with page kinds a one-pass reader must rebuild: mapped-ram (+ multifd),
#: zlib pages, XBZRLE deltas, several passes
CASES = {
    "q35-mapped-ram-multifd-11.1": STREAMS["q35-mapped-ram-multifd-11.1"],
    "q35-compress-7.2": STREAMS["q35-compress-7.2"],
    "xbzrle-111": LIVE["xbzrle-111"],
}


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize(
    "opts",
    [(), ("--json",), ("--offset", "0x100000", "--length", "0x3000"), ("--block", "pc.ram")],
)
def test_compressed_file_answers_as_the_file(name, opts, capsys):
    xz = CASES[name]
    rc_xz, out_xz, err_xz = _cli(capsys, "ram", xz, *opts)
    rc, out, err = _cli(capsys, "ram", unpack(xz), *opts)
    assert (rc_xz, out_xz, err_xz) == (rc, out, err) and rc == 0
    assert out


@pytest.mark.parametrize("name", ["xbzrle-111", "compress-72"])
def test_streamed_pages_equal_the_destination(name):
    """Every MiB of pc.ram kept from the xz file (XBZRLE rebuilt, zlib inflated)
    against the destination QEMU's pmemsave."""
    truth = json.loads((DATA / "live" / f"{name}.pmem-sha256.json").read_text())
    size = truth["chunk_size"] * len(truth["sha256"])
    with qevm.open(
        LIVE[name], ram_consumer=lambda ctx, ps: SpoolingIndex(ps, "pc.ram", 0, size)
    ) as mig:
        assert not mig.source.seekable
        assert not _wrong_mib(lambda o, n: mig.page_index.read("pc.ram", o, n), truth)


def test_standard_input(capsys):
    path = unpack(STREAMS["q35-compress-7.2"])
    args = ["ram", "-", "--offset", "0x7000", "--length", "64", "--json"]
    with open(path, "rb") as f:
        r = subprocess.run([sys.executable, "-m", "qevm", *args], stdin=f, capture_output=True)
    rc, out, _ = _cli(capsys, "ram", path, *args[2:])
    assert r.returncode == rc == 0 and r.stdout.decode() == out


def test_channels_need_the_main_stream_in_a_file(capsys):
    ch = unpack(DATA / "live" / "multifd-72.ch1.bin.xz")
    rc, _, err = _cli(capsys, "ram", LIVE["multifd-72"], "--channel", ch)
    assert rc == 2 and "decompress it to a file first" in err
