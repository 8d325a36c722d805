"""``qevm diff`` against QEMU's own account of what changed between two saves.

Truth: QEMU's memory dumps at both moments (``diff_pages``: the
guest-physical pages whose contents differ) and ``info registers`` at both
moments — tests/data/diff (gen_diff.py: SeaBIOS running for a moment, QEMU
7.2) and the corpus' Linux guest saved 3 s apart (QEMU 10.0).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import CORPUS, DATA, HAVE_CORPUS, LIVE, cli, unpack
from test_live_capture import _wrong_mib

from qevm.analysis.diff import diff

OFFLINE = DATA / "diff" / "bios-run-72"
#: info registers masks segment flags (target/i386 cpu_dump_state: flags & 0x00ffff00)
SEG_MASK = 0x00FFFF00
_GP32 = {
    "EAX": "rax",
    "EBX": "rbx",
    "ECX": "rcx",
    "EDX": "rdx",
    "ESI": "rsi",
    "EDI": "rdi",
    "EBP": "rbp",
    "ESP": "rsp",
    "EIP": "rip",
    "EFL": "rflags",
}


def parse_info_registers(text: str) -> dict[str, int]:
    """QEMU's x86 ``info registers`` as qevm's register names (the parts both have)."""
    out: dict[str, int] = {}
    for name, val in re.findall(r"\b([A-Z][A-Z0-9]*) ?=([0-9a-f]+)\b", text):
        key = _GP32.get(name, name.lower())
        if name in ("RFL",):
            key = "rflags"
        if re.fullmatch(r"r[a-z0-9]+|cr[0-4]|dr[0-7]|efer|fcw|fsw|mxcsr", key):
            out[key] = int(val, 16)
    for seg, sel, base, limit, flags in re.findall(
        r"^(ES|CS|SS|DS|FS|GS|LDT|TR) ?=([0-9a-f]{4}) ([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+)",
        text,
        re.M,
    ):
        s = seg.lower()
        out[f"{s}.selector"], out[f"{s}.base"] = int(sel, 16), int(base, 16)
        out[f"{s}.limit"], out[f"{s}.flags"] = int(limit, 16), int(flags, 16)
    for tab, base, limit in re.findall(r"^(GDT|IDT)= +([0-9a-f]+) ([0-9a-f]+)", text, re.M):
        out[f"{tab.lower()}.base"], out[f"{tab.lower()}.limit"] = int(base, 16), int(limit, 16)
    return out


def _comparable(name: str, value: int) -> int:
    return value & SEG_MASK if name.endswith(".flags") else value


def assert_registers(report, before: str, after: str) -> None:
    """Exactly the registers ``info registers`` shows changed, with QEMU's new values."""
    a, b = parse_info_registers(before), parse_info_registers(after)
    truth = {k for k in a if a[k] != b.get(k)}
    got = {}
    for c in report.cpus:
        if c["index"] == 0 and c["register"] in a:
            name = c["register"]
            if _comparable(name, c["a"]) != _comparable(name, c["b"]):
                got[name] = c["b"]
    assert set(got) == truth
    for name, value in got.items():
        assert _comparable(name, value) == b[name], name


def assert_pages(report, truth: list[list[int]], limit: int | None = None) -> None:
    got = [
        [m["gpa"], m["gpa"] + m["length"]]
        for m in report.memory
        if limit is None or m["gpa"] < limit
    ]
    assert got == truth


def test_bios_run_from_pipe_and_file():
    truth = json.loads(OFFLINE.with_suffix(".json").read_text())
    a, b = OFFLINE.with_name("bios-run-72.a.mig.xz"), OFFLINE.with_name("bios-run-72.b.mig.xz")
    lo, hi = truth["pmem"]
    for x, y in ((a, b), (unpack(a), unpack(b))):  # decompressed as it goes / page index
        rep = diff(x, y)
        assert not rep.equal
        assert_pages(rep, truth["diff_pages"], hi)
        assert_registers(rep, truth["truth_a"], truth["truth_b"])
        # the same pages per block: pc.ram offsets are guest-physical below 2 GiB here
        ram = [[r["offset"], r["offset"] + r["length"]] for r in rep.ram if r["block"] == "pc.ram"]
        below = [p for p in truth["diff_pages"] if not 0xC0000 <= p[0] < 0x100000]
        assert [p for p in ram if not 0xC0000 <= p[0] < 0x100000] == below


def test_ignore_and_equal():
    a = unpack(OFFLINE.with_name("bios-run-72.a.mig.xz"))
    same = diff(a, a)
    assert same.equal and same.pages_differing == 0
    b = unpack(OFFLINE.with_name("bios-run-72.b.mig.xz"))
    rep = diff(a, b, ignore=["cpu:*", "pc.ram", "mc146818rtc", "*:*timer*"])
    assert not rep.cpus
    assert not any(r["block"] == "pc.ram" for r in rep.ram)
    assert not any(d["name"] == "mc146818rtc" for d in rep.devices)
    assert not any("timer" in d["field"] for d in rep.devices)


def test_cli(tmp_path):
    a = unpack(OFFLINE.with_name("bios-run-72.a.mig.xz"))
    b = OFFLINE.with_name("bios-run-72.b.mig.xz")

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "qevm", "diff", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = run(str(a), str(b), "--json")
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert {"devices", "ram", "memory", "cpus", "description", "configuration"} <= set(out)
    assert {"name", "instance_id", "field", "a", "b"} <= set(out["devices"][0])
    assert {"block", "offset", "length"} <= set(out["ram"][0])
    assert {"gpa", "length"} <= set(out["memory"][0])
    assert {"index", "register", "a", "b"} <= set(out["cpus"][0])
    assert run(str(a), str(a)).returncode == 0
    text = run(str(a), str(b)).stdout
    assert "memory" in text and "CPU#0 rip" in text
    assert run(str(a), str(tmp_path / "missing")).returncode == 2


@pytest.mark.skipif(not HAVE_CORPUS, reason="the shared corpus is not available")
def test_corpus_linux_saved_twice():
    """A Linux guest saved 3 s apart: exactly QEMU's changed pages and registers."""
    base = CORPUS / "diff" / "lx-diff-100"
    truth = json.loads(base.with_suffix(".json").read_text())
    a, b = base.with_name("lx-diff-100.mig.xz"), base.with_name("lx-diff-100.b.mig.xz")
    rep = diff(unpack(a), unpack(b))
    assert_pages(rep, truth["diff_pages"])
    assert_registers(rep, truth["truth"]["info registers"], truth["truth_b"]["info registers"])
    piped = diff(a, b)  # the xz files, digested as they decompress
    assert piped.memory == rep.memory and piped.cpus == rep.cpus and piped.ram == rep.ram
    assert piped.devices == rep.devices


def test_multifd_channels_complete_each_side(tmp_path, capsys):
    """A live multifd capture (QEMU 7.2, 3 channels) against itself: with its
    channels on one side only, the pages that differ are those whose final
    contents only the channels carry, as two extractions (with and without the
    channels; the one with them checked against the destination QEMU's RAM)
    show page by page."""

    main = unpack(LIVE["multifd-72"])
    chans = sorted(unpack(p) for p in LIVE["multifd-72"].parent.glob("multifd-72.ch*.bin.xz"))
    assert len(chans) == 3
    with_ch = [a for c in chans for a in ("--channel", c)]
    rc, _, _ = cli(capsys, "extract", main, "-o", tmp_path / "full", *with_ch)
    assert rc == 0
    truth = json.loads(LIVE["multifd-72"].with_name("multifd-72.pmem-sha256.json").read_text())
    with open(tmp_path / "full" / "pc.ram", "rb") as f:
        assert not _wrong_mib(lambda o, n: f.read(n), truth)
    rc, _, _ = cli(capsys, "extract", main, "-o", tmp_path / "main")
    assert rc == 0
    want = {}
    for f in (tmp_path / "full").rglob("*"):
        if not f.is_file() or f.suffix == ".json":
            continue
        rel = f.relative_to(tmp_path / "full")
        a, b = f.read_bytes(), (tmp_path / "main" / rel).read_bytes()
        n = sum(a[i : i + 4096] != b[i : i + 4096] for i in range(0, len(a), 4096))
        if n:
            want[str(rel)] = n
    assert sum(want.values()) > 300

    report = diff(main, main, b_channels=chans)
    assert report.pages_differing == sum(want.values())
    (hint,) = [w for w in report.warnings if w.startswith("a:")]
    # the option that gives them is --a-channel under diff, --channel under report
    assert "give that side's multifd and postcopy-preempt channels" in hint and "--" not in hint
    assert not any(w.startswith("b:") for w in report.warnings)

    b_ch = [a for c in chans for a in ("--b-channel", c)]
    a_ch = [a for c in chans for a in ("--a-channel", c)]
    rc, out, _ = cli(capsys, "diff", main, main, *a_ch, *b_ch)
    assert rc == 0, out
    assert "pages no record gave" not in out
    # the xz file, read once, is copied to a file for its channels' pages
    report = diff(LIVE["multifd-72"], main, a_channels=chans, b_channels=chans)
    assert report.equal and report.pages > 30000 and not report.warnings
