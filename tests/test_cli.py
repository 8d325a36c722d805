"""The command line says what it did not do, and prints words, not Python."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest
from conftest import GENERATED, LIVE, STREAMS, unpack

import qevm
from qevm.stream import DescriptionRecord

#: Python's spelling of dicts, lists, strings and booleans inside text output.
PYTHON_REPR = re.compile(r"\{'|\['|': |\bTrue\b|\bFalse\b|\bNone\b|b'")


def _qevm(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qevm", *map(str, args)], capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def small():
    return unpack(STREAMS["riscv64-virt-11.1"])


@pytest.mark.parametrize(
    "args",
    [
        ("state", "--device", "no-such*"),
        ("state", "--json", "--device", "no-such*"),
        ("state", "--compat", "--device", "no-such*"),
    ],
)
def test_a_glob_that_matches_nothing_says_so(small, args):
    res = _qevm(*args, small)
    assert res.returncode == 1 and "no-such*" in res.stderr and res.stdout == ""


def test_extract_block_glob_that_matches_nothing(small, tmp_path):
    res = _qevm("extract", small, "-o", tmp_path / "x", "--block", "no-such*")
    assert res.returncode == 1 and "no-such*" in res.stderr


@pytest.mark.parametrize("opt", [("--length", "16"), ("--raw",)])
def test_ram_options_that_need_offset(small, opt):
    res = _qevm("ram", small, *opt)
    assert res.returncode == 1 and "--offset" in res.stderr and res.stdout == ""


def test_ram_sizes_take_suffixes(small):
    a = _qevm("ram", small, "--offset", "16M", "--length", "1K")
    b = _qevm("ram", small, "--offset", "0x1000000", "--length", "1024")
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout
    bad = _qevm("ram", small, "--offset", "12Q")
    assert bad.returncode == 2 and "is not a size" in bad.stderr


def test_ram_block_filters_the_statistics(small):
    res = _qevm("ram", small, "--json", "--block", "riscv_virt_board.ram")
    assert res.returncode == 0
    assert [b["name"] for b in json.loads(res.stdout)["blocks"]] == ["riscv_virt_board.ram"]


def test_debug_after_the_command(small, tmp_path):
    assert _qevm("info", small, "--debug").returncode == 0
    missing = _qevm("info", tmp_path / "nope", "--debug")
    assert "Traceback" in missing.stderr


def test_text_state_shows_the_live_sections():
    res = _qevm("state", unpack(GENERATED["pc-7.2-block-bitmap"]))
    assert res.returncode == 0
    live = res.stdout.split("live sections\n", 1)[1]
    names = [line.split()[0] for line in live.splitlines() if not line.startswith(" ")]
    assert names == ["block", "ram", "dirty-bitmap"], names


@pytest.mark.parametrize(
    "path",
    [
        LIVE["postcopy-paused-111"],  # commands with payloads
        STREAMS["s390x-7.2"],  # storage keys and TOD clock: handler results
        GENERATED["pc-7.2-block-bitmap"],  # block and dirty-bitmap records
    ],
    ids=lambda p: p.name,
)
@pytest.mark.parametrize("cmd", ["info", "state"])
def test_no_python_reprs_in_text_output(path, cmd):
    res = _qevm(cmd, unpack(path))
    assert res.returncode == 0, res.stderr
    assert not PYTHON_REPR.search(res.stdout), PYTHON_REPR.search(res.stdout)


def test_container_is_named_once():
    res = _qevm("info", STREAMS["q35-11.1"])  # the .xz file itself
    first = res.stdout.splitlines()[0]
    assert first.split() == ["file", str(STREAMS["q35-11.1"]), "(xz)"]


def test_desc_raw_is_the_stored_bytes(small):
    with qevm.open(small) as mig:
        rec = next(r for r in mig.records if isinstance(r, DescriptionRecord))
    stored = small.read_bytes()[rec.offset + 5 : rec.end]
    res = subprocess.run(
        [sys.executable, "-m", "qevm", "desc", "--raw", small], capture_output=True
    )
    assert res.returncode == 0 and res.stdout == stored


def test_desc_of_a_stream_without_one():
    res = _qevm("desc", unpack(GENERATED["pc-2.2-nodesc"]))
    assert res.returncode == 2 and "no JSON description" in res.stderr
    assert "--desc" not in res.stderr


def test_demo_runs_on_the_example_in_the_package():
    res = _qevm("demo")
    assert res.returncode == 0, res.stderr
    assert "machine       pc-q35-7.2" in res.stdout and "CPU#0 (x86_64)" in res.stdout
    path = _qevm("demo", "--path").stdout.strip()
    assert path.endswith("/qevm/data/demo.mig.xz")
    assert pathlib.Path(path).stat().st_size < 300_000  # package data: keep it small
    with qevm.open(path) as mig:
        assert not mig.errors and mig.devices()
        assert all(d.state is not None for d in mig.devices())


def _info_pages(path: pathlib.Path) -> dict[str, str]:
    res = _qevm("info", unpack(path))
    assert res.returncode == 0, res.stderr
    rows = res.stdout.split("RAM blocks\n", 1)[1].splitlines()[1:]
    return {r.split()[0]: r.split(None, 2)[2] for r in rows if r.startswith("  ")}


def test_info_tells_blocks_on_other_connections_from_unmigrated_ones():
    # multifd (7.2): the two 4 KiB ROM blocks' only pages went on the channels
    recipe = json.loads(LIVE["multifd-72"].with_name("multifd-72.json").read_text())
    assert "multifd" in recipe["dest_capabilities"]
    pages = _info_pages(LIVE["multifd-72"])
    on_channels = [n for n, p in pages.items() if p.startswith("none in this stream (multifd")]
    assert on_channels == ["/rom@etc/table-loader", "/rom@etc/acpi/rsdp"], pages
    # x-ignore-shared: the shared memory backend m0 is not migrated at all
    pages = _info_pages(STREAMS["q35-ignore-shared-7.2"])
    assert pages["m0"].startswith("not migrated (x-ignore-shared)")
    assert not any("none in this stream" in p for p in pages.values())


def test_report_says_which_pages_are_missing(tmp_path):
    # multifd (QEMU 7.2): without its channels the stream lacks the pages they carried
    main = unpack(LIVE["multifd-72"])
    chans = sorted(LIVE["multifd-72"].parent.glob("multifd-72.ch*.bin.xz"))
    recipe = json.loads(LIVE["multifd-72"].with_name("multifd-72.json").read_text())
    missing = recipe["truth"]["missing_without_channels"]["pc.ram"]  # QEMU's traces' count
    res = _qevm("report", main, "-o", tmp_path / "r.html")
    assert res.returncode == 0, res.stderr
    assert re.search(rf"^warning: pc\.ram: {missing} pages missing", res.stderr, re.M), res.stderr
    with_ch = [a for c in chans for a in ("--channel", unpack(c))]
    res = _qevm("report", main, "-o", tmp_path / "r.html", *with_ch)
    assert res.returncode == 0, res.stderr
    assert "missing" not in res.stderr
    res = _qevm("report", main, "-o", tmp_path / "r.html", "--diff-channel", unpack(chans[0]))
    assert res.returncode == 1 and "does nothing without --diff" in res.stderr
