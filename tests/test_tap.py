"""``qevm tap`` between two real QEMUs on loopback, against what the QEMUs say.

Each migration runs the guest of tests/gen_live.py (a real-mode loop that
keeps dirtying memory, ``-m 64``, ``-nodefaults``) from a source QEMU through
``qevm tap --json --record`` to a destination started with ``-S``.  The truth
is QEMU's: the migration completes on both sides; the destination's RAM
(``pmemsave``, the destination paused) equals the source's and the RAM
``qevm extract`` gets from the recording; the summary's page counts equal the
source's ``query-migrate`` (``ram.normal``, ``ram.duplicate``, XBZRLE pages
that were not overflows, postcopy requests).  Only 127.0.0.1 is used.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import gen_live
import pytest
from conftest import have_qemu
from gen_live import MIB, PATTERN_ADDR, WINDOW, Capture, Spec, TapRun

from qevm.cli import main as cli_main

RAM_MB = 64
QEMU_72 = "qemu-system-x86_64"
#: Debian trixie's QEMU 10.0 (see .ci/qemu-trixie)
QEMU_NEW = os.environ.get("QEVM_QEMU_NEW") or "/tmp/qevm-trixie/qemu-system-x86_64"

PRECOPY = {"max-bandwidth": 8 << 20}
SPECS = {
    "plain": Spec("precopy", [], source=PRECOPY, passes=3),
    "multifd": Spec(
        "multifd, 3 channels",
        ["multifd"],
        both={"multifd-channels": 3, "multifd-compression": "none"},
        source=PRECOPY,
        passes=3,
    ),
    "multifd-zlib": Spec(
        "multifd, 2 channels, zlib",
        ["multifd"],
        both={"multifd-channels": 2, "multifd-compression": "zlib"},
        source=PRECOPY,
        passes=3,
    ),
    "multifd-zstd": Spec(
        "multifd, 2 channels, zstd",
        ["multifd"],
        both={"multifd-channels": 2, "multifd-compression": "zstd"},
        source=PRECOPY,
        passes=3,
    ),
    "xbzrle": Spec("xbzrle", ["xbzrle"], source=PRECOPY, passes=4),
    "postcopy-preempt": Spec(
        "postcopy with preempt; the destination's monitor reads memory during postcopy",
        ["postcopy-ram", "postcopy-preempt"],
        source={"max-bandwidth": 256 << 10, "max-postcopy-bandwidth": 1 << 20},
        postcopy_after=96 << 10,
        touch=[(0x20000, 0x50000), (PATTERN_ADDR, MIB)],
    ),
}

CASES = [
    pytest.param(QEMU_72, "plain", id="7.2-plain"),
    pytest.param(QEMU_72, "multifd", id="7.2-multifd"),
    pytest.param(QEMU_72, "multifd-zlib", id="7.2-multifd-zlib"),
    pytest.param(QEMU_72, "xbzrle", id="7.2-xbzrle"),
    pytest.param(QEMU_72, "postcopy-preempt", id="7.2-postcopy-preempt"),
    pytest.param(QEMU_NEW, "multifd-zstd", id="10.0-multifd-zstd"),
    pytest.param(QEMU_NEW, "postcopy-preempt", id="10.0-postcopy-preempt"),
]


def _need(qemu: str) -> None:
    if not (have_qemu(qemu) or os.access(qemu, os.X_OK)):
        pytest.skip(f"needs {qemu}")


def _ram(path: pathlib.Path) -> bytearray:
    """Guest RAM bytes with the window pmemsave reads through VGA/ROM zeroed."""
    data = bytearray(path.read_bytes())
    data[WINDOW[0] : WINDOW[1]] = bytes(WINDOW[1] - WINDOW[0])
    return data


def _channels(rec: pathlib.Path) -> list[pathlib.Path]:
    """The recorded extra connections, in the order the source opened them."""
    found = [p for p in rec.glob("channel-*.bin") if re.fullmatch(r"channel-\d+\.bin", p.name)]
    return sorted(found, key=lambda p: int(p.name[8:-4]))


def _check_pages(summary: dict, query: dict, source_trace: pathlib.Path) -> None:
    ram = query["ram"]
    pages = summary["pages"]
    assert pages["normal"] == ram["normal"]
    assert pages["zero"] == ram["duplicate"]
    xbz = query.get("xbzrle-cache")
    if xbz is not None:
        # QEMU counts every page found in the XBZRLE cache: those whose delta
        # overflowed went as normal pages, those that had not changed not at all
        trace = gen_live.parse_trace(source_trace)
        skipped = sum(ev == "save_xbzrle_page_skipping" for _, ev, _ in trace)
        assert pages["xbzrle"] == xbz["pages"] - xbz["overflow"] - skipped > 0
    else:
        assert pages["xbzrle"] == 0
    # every page is in exactly one pass or in postcopy
    total: dict[str, int] = {}
    for part in [*summary["per_pass"], summary.get("postcopy") or {"pages": {}}]:
        for k, v in part["pages"].items():
            total[k] = total.get(k, 0) + v
    assert {k: v for k, v in total.items() if v} == {k: v for k, v in pages.items() if v}
    # a pass is a round over RAM that sent pages; QEMU also counts syncs that found none
    assert 1 <= summary["passes"] <= ram["dirty-sync-count"]


@pytest.mark.qemu
@pytest.mark.parametrize(("qemu", "kind"), CASES)
def test_tap_between_two_qemus(qemu, kind, tmp_path, capsys):
    _need(qemu)
    spec = SPECS[kind]
    cap = Capture(kind, spec, tmp_path, qemu=qemu, ram_mb=RAM_MB, source_ram=True)
    cap.migrate()
    tap = cap.tap
    assert tap is not None
    assert tap.returncode == 0, tap.stderr
    summary = tap.summary
    assert summary["status"] == "completed", summary.get("failure")
    assert not summary.get("errors")
    query = cap.result["source_query_migrate"]
    _check_pages(summary, query, tmp_path / "src.trace")

    # the recording: main stream first, the others in the order the source opened them
    rec = tmp_path / "rec"
    session = json.loads((rec / "session.json").read_text())
    roles = [c["role"] for c in session["connections"] if c.get("s2d")]
    params = cap.result["dest_parameters"]
    if "multifd" in spec.capabilities:
        assert roles == ["main"] + ["multifd"] * params["multifd-channels"]
        ids = [summary["channels"][p.name]["channel_id"] for p in _channels(rec)]
        assert sorted(ids) == list(range(params["multifd-channels"]))
        comp = params["multifd-compression"]
        assert {c.get("compression") for c in summary["channels"].values()} == {comp}
    elif "postcopy-preempt" in spec.capabilities:
        assert roles == ["main", "postcopy-preempt"]
        assert summary["postcopy"]["pages"]["normal"] > 0
        assert summary["channels"]["channel-1.bin"]["pages"]["normal"] > 0
        rp = summary["return_path"]
        requests = rp["messages"].get("REQ_PAGES", 0) + rp["messages"].get("REQ_PAGES_ID", 0)
        assert requests == query["ram"]["postcopy-requests"] > 0
        assert rp["shut"] == 0
    else:
        assert roles == ["main"]
    for c in session["connections"]:
        if c.get("s2d"):
            name = c["s2d"]["file"]
            assert (rec / name).stat().st_size == c["s2d"]["bytes"] == c["s2d"]["delivered"]

    # RAM: the destination's equals the source's and the recording's.  (QEMU 7.2's
    # multifd under TCG about once in 40 runs through the tap never sends the guest's
    # last rewrite of a page of its rep-stosw region: then the destination holds what
    # the recording holds, and the source's final page is in no packet or record.)
    dst = _ram(tmp_path / "dst.pmem")
    assert dst == _ram(tmp_path / "src.pmem")
    out = tmp_path / "extract"
    args = ["extract", str(rec / "main.mig"), "-o", str(out)]
    for ch in _channels(rec):
        args += ["--channel", str(ch)]
    assert cli_main(args) == 0
    printed = capsys.readouterr()
    assert "missing" not in printed.out + printed.err  # its summary and its warnings
    assert _ram(out / "pc.ram") == dst


def _error_section(log: str) -> str:
    """The section QEMU's destination names when it refuses one."""
    m = re.search(r"Unknown savevm section or instance '([^']+)'", log)
    assert m, log
    return m[1]


@pytest.mark.qemu
@pytest.mark.parametrize("qemu", [QEMU_72, QEMU_NEW], ids=["7.2", "10.0"])
def test_tap_when_the_destination_fails(qemu, tmp_path):
    """A device the destination lacks: it fails at that section and says so (SHUT 1)."""
    _need(qemu)
    cap = Capture("failing", Spec("failing", ["return-path"]), tmp_path, qemu=qemu, ram_mb=RAM_MB)
    argv = cap.prepare()
    dst = src = tap = None
    try:
        dst = gen_live.Vm("dst", [*argv, "-incoming", "defer"], tmp_path, [])
        src = gen_live.Vm("src", [*argv, "-device", "i6300esb"], tmp_path, [])
        for vm in (dst, src):
            vm.cmd("migrate-set-capabilities", **gen_live.caps_arg(["return-path", "events"]))
        dst.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
        tap = TapRun(int(dst.status()["socket-address"][0]["port"]), tmp_path / "rec")
        src.cmd("migrate", uri=f"tcp:127.0.0.1:{tap.port}")
        st = src.qmp.wait_migration(60)
        assert st["status"] == "failed"
    finally:
        for vm in (src, dst):
            if vm is not None:
                vm.close()
        if tap is not None:
            tap.close()
    assert tap.returncode == 1, tap.stderr
    summary = tap.summary
    assert summary["status"] == "failed"
    fail = summary["failure"]
    # 10.0 says so on the return path; 7.2 exits without a word: the connection
    # resets, breaks the pipe, or closes as a success's would if it had read
    # everything (without its SHUT 0 then): the destination's doing in each case
    shut = summary["return_path"]["shut"]
    assert bool(shut) == (qemu == QEMU_NEW), shut
    if shut:
        assert any("SHUT 1" in why for why in fail["reasons"]), fail
    else:
        assert any(
            why.startswith(("main.mig: the destination", "the destination closed"))
            for why in fail["reasons"]
        ), fail

    # what the source had sent when the destination failed: at least the section
    # the destination refused (its own error message names it)
    refused = _error_section((tmp_path / "dst.err").read_text())
    rec = tmp_path / "rec"
    assert summary["recording"] == str(rec) and (rec / "main.mig").exists()
    session = json.loads((rec / "session.json").read_text())
    # the recording may end early (the destination hung up, the source was reset):
    # the sections the tap saw go by are in its events
    where = {e["name"]: e["offset"] for e in session["events"] if e["event"] == "section"}
    assert refused in where
    sent = fail["source_had_sent"]
    assert sent["offset"] > where[refused]
    assert sent["record"]
    assert session["summary"]["status"] == "failed"


def _plain_guest(tmp_path: pathlib.Path, name: str) -> tuple[list[str], int]:
    """A plain guest's QEMU arguments (its files written to ``tmp_path``), and a free port."""
    import socket

    argv = Capture(name, SPECS["plain"], tmp_path, ram_mb=RAM_MB).prepare()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return argv, s.getsockname()[1]


@pytest.mark.qemu
def test_tap_cli_text_and_connection_without_data(tmp_path):
    """Without --json the tap logs text; a connection that closes empty is not forwarded."""
    _need(QEMU_72)
    import socket
    import subprocess
    import sys

    argv, port = _plain_guest(tmp_path, "plain")
    dst = src = None
    tap = subprocess.Popen(
        [sys.executable, "-m", "qevm", "tap", "--listen", f"127.0.0.1:{port}", "--to", "x"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert tap.wait(30) == 2  # a bad address: usage error
    assert "HOST:PORT" in tap.stderr.read()  # type: ignore[union-attr]
    try:
        dst = gen_live.Vm("dst", [*argv, "-incoming", "defer"], tmp_path, [])
        src = gen_live.Vm("src", argv, tmp_path, [])
        dst.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
        dport = int(dst.status()["socket-address"][0]["port"])
        tap = subprocess.Popen(
            [
                *(sys.executable, "-m", "qevm", "tap", "--listen", f"127.0.0.1:{port}"),
                *("--to", f"127.0.0.1:{dport}"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert "listening on" in tap.stdout.readline()  # type: ignore[union-attr]
        socket.create_connection(("127.0.0.1", port)).close()  # a probe: nothing sent
        src.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
        assert src.qmp.wait_migration(60)["status"] == "completed"
        assert dst.qmp.wait_migration(60)["status"] == "completed"
        out, err = tap.communicate(timeout=30)
    finally:
        for vm in (src, dst):
            if vm is not None:
                vm.close()
        if tap.poll() is None:
            tap.kill()
    assert tap.returncode == 0, err
    assert "connection 0: closed without data" in out
    assert "connection 1: main -> main.mig" in out
    assert "migration completed" in out
    # without --record the recording was temporary, and went with the success
    assert "recording" not in out.split("migration completed")[1]


@pytest.mark.qemu
def test_tap_keep_serves_the_next_migration(tmp_path):
    """--keep: two migrations through one tap, recorded in DIR/1 and DIR/2."""
    import signal
    import time

    _need(QEMU_72)
    argv, port = _plain_guest(tmp_path, "keep")
    incoming = [*argv, "-incoming", f"tcp:127.0.0.1:{port}"]
    queries = []
    src = dst = tap = None
    try:
        tap = TapRun(port, tmp_path / "rec", "--keep")
        for n in (1, 2):
            dst = gen_live.Vm(f"dst{n}", incoming, tmp_path, [])
            src = gen_live.Vm(f"src{n}", argv, tmp_path, [])
            src.cmd("migrate", uri=f"tcp:127.0.0.1:{tap.port}")
            queries.append(src.qmp.wait_migration(60))
            assert dst.qmp.wait_migration(60)["status"] == "completed"
            deadline = time.monotonic() + 30
            while sum(e["event"] == "summary" for e in tap.events) < n:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            for vm in (src, dst):
                vm.close()
            src = dst = None
        tap.proc.send_signal(signal.SIGTERM)  # idle between migrations: a clean stop
        assert tap.close() == 0
    finally:
        for vm in (src, dst):
            if vm is not None:
                vm.close()
        if tap is not None and tap.returncode is None:
            tap.close()
    summaries = [e for e in tap.events if e["event"] == "summary"]
    assert [s["recording"] for s in summaries] == [str(tmp_path / "rec" / n) for n in "12"]
    for s, q in zip(summaries, queries):
        assert q["status"] == "completed"
        assert s["status"] == "completed"
        pages = (s["pages"]["normal"], s["pages"]["zero"])
        assert pages == (q["ram"]["normal"], q["ram"]["duplicate"])
        assert (pathlib.Path(s["recording"]) / "main.mig").stat().st_size == s["bytes"]
