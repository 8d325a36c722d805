"""qevm devices: the JSON the issue asks for, the CLI, RTC/serial/timers, bad input."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from contextlib import redirect_stdout

import pytest
from conftest import CORPUS, DATA, unpack

import qevm
from qevm.cli import main
from qevm.devices import decode
from qevm.devices.pci import ids
from qevm.devices.virtio import wire

Q35 = DATA / "devices" / "q35-bridges-72.mig.xz"
PC = DATA / "devices" / "pc-bridge-100.mig.xz"


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(list(argv))
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def q35_json() -> dict:
    rc, text = _run("devices", str(Q35), "--json")
    assert rc == 0
    return json.loads(text)


def _ints(obj, where="") -> None:
    """Integers are JSON numbers: no value is a hex string masquerading as a number."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _ints(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _ints(v, f"{where}[{i}]")
    elif isinstance(obj, str):
        assert not re.fullmatch(r"0x[0-9a-f]+", obj), where


def test_json_has_the_issues_keys(q35_json):
    j = q35_json
    _ints(j)
    for f in j["pci"]:
        for k in (
            "bus", "slot", "function", "section", "vendor_id", "device_id",
            "subsystem_vendor_id", "subsystem_id", "class", "irq", "pin", "bars", "capabilities",
        ):  # fmt: skip
            assert k in f, k
        assert f["pin"] in (None, "A", "B", "C", "D")
        for b in f["bars"]:
            assert set(b) >= {"index", "kind", "prefetchable", "address"}
            assert b["kind"] in ("io", "mem32", "mem64")
            assert isinstance(b["address"], int)
    for v in j["virtio"]:
        for k in ("section", "type", "status", "host_features", "guest_features", "queues"):
            assert k in v, k
        assert v["type"].startswith("virtio-")
        for q in v["queues"]:
            assert set(q) >= {"index", "num", "desc", "avail", "used", "last_avail_idx", "used_idx"}
    for a in j["lapic"]:
        for k in ("cpu", "lvt0", "lvt1", "lvtpc", "lvterr", "lvtthmr", "lvtt", "spiv", "dcr"):
            assert isinstance(a[k], int), k
        assert isinstance(a["initial_count"], int)
    assert [p["pin"] for p in j["ioapic"]] == list(range(24))
    assert all(isinstance(p["entry"], int) for p in j["ioapic"])
    assert {v["type"] for v in j["virtio"]} == {
        "virtio-net",
        "virtio-scsi",
        "virtio-blk",
        "virtio-rng",
    }


def test_capabilities_and_express_details(q35_json):
    by_addr = {(f["bus"], f["slot"], f["function"]): f for f in q35_json["pci"]}
    net = by_addr[(1, 0, 0)]  # virtio-net behind root port 00:10.0
    assert net["express"] and net["section"] == "0000:00:10.0:00.0/virtio-net"
    caps = {c["name"]: c for c in net["capabilities"]}
    msix = caps["MSI-X"]
    assert msix["table_size"] == 4 and len(msix["entries"]) == 4
    assert caps["Express"]["port_type_name"] == "Endpoint"
    vendor = [c["virtio"] for c in net["capabilities"] if c["name"] == "Vendor Specific"]
    assert {v["cfg_type_name"] for v in vendor} == {"common", "notify", "isr", "device", "pci"}
    rp = by_addr[(0, 0x10, 0)]
    assert rp["bridge"]["secondary"] == 1
    assert [c["name"] for c in rp["extended_capabilities"]] == [
        "Advanced Error Reporting",
        "Access Control Services",
    ]


def test_legacy_virtio_rings_follow_desc(q35_json):
    blk = next(v for v in q35_json["virtio"] if v["type"] == "virtio-blk")
    q = blk["queues"][0]
    assert "VIRTIO_F_VERSION_1" not in blk["guest_features"]
    # vring.avail right after 256 descriptors, vring.used at the next 4 KiB
    assert q["avail"] == q["desc"] + 256 * 16
    assert q["used"] == (q["avail"] + 4 + 2 * 256 + 4095) & ~4095


def test_rtc_from_cmos_follows_the_command_line_base(q35_json):
    rtc = q35_json["rtc"][0]
    with qevm.open(unpack(Q35)) as mig:
        vm_seconds = mig.device("timer").state.get("cpu_clock_offset") / 1e9
    # -rtc base=2021-03-04T05:06:07,clock=vm: the CMOS time is from that base on
    assert rtc["datetime"][:10] == "2021-03-04"
    secs = rtc["hour"] * 3600 + rtc["minute"] * 60 + rtc["second"]
    assert 5 * 3600 + 6 * 60 + 7 <= secs <= 5 * 3600 + 6 * 60 + 7 + vm_seconds + 1


@pytest.mark.corpus
def test_corpus_rtc_and_serial_match_the_guest_console():
    name = "lx-q35-111"
    console = (CORPUS / "devices" / f"{name}.console").read_text(errors="replace")
    m = re.search(r"\[\s*([\d.]+)\] rtc_cmos .*setting system clock to (\S+)T(\S+) UTC", console)
    assert m
    with qevm.open(unpack(CORPUS / "devices" / f"{name}.mig.xz"), index_ram=True) as mig:
        j = decode(mig).to_json()
        vm_seconds = mig.device("timer").state.get("cpu_clock_offset") / 1e9
    rtc = j["rtc"][0]
    assert rtc["datetime"][:10] == m.group(2)
    h, mi, s = (int(x) for x in m.group(3).split(":"))
    booted = h * 3600 + mi * 60 + s
    now = rtc["hour"] * 3600 + rtc["minute"] * 60 + rtc["second"]
    assert booted <= now <= booted + (vm_seconds - float(m.group(1))) + 1
    # console=ttyS0 without options: Linux programs 9600 baud, 8 data bits, no parity, 1 stop
    serial = j["serial"][0]
    assert (serial["baud"], serial["data_bits"], serial["parity"], serial["stop_bits"]) == (
        9600,
        8,
        "N",
        1,
    )


def test_text_view_reads_like_lspci():
    rc, text = _run("devices", str(Q35))
    assert rc == 0
    assert re.search(r"^01:00\.0 Ethernet controller \[0200\]: .*\[1af4:1041\]", text, re.M)
    assert "\tCapabilities: [40] Express (v2) Endpoint" in text
    assert "\tCapabilities: [100 v2] Advanced Error Reporting" in text
    assert re.search(r"^\tRegion 4: Memory at [0-9a-f]+ \(64-bit, prefetchable\)", text, re.M)
    for title in ("== virtio", "== local APICs", "== I/O APIC", "== 8259 PICs", "== RTC"):
        assert title in text


def test_state_decode_shows_the_views_under_each_section():
    rc, text = _run("state", str(Q35), "--decode", "--device", "ioapic")
    assert rc == 0 and "  decoded:" in text and "pin 23" in text
    rc, text = _run("state", str(Q35), "--decode", "--json", "--device", "*virtio-blk")
    dev = json.loads(text)["devices"][0]
    assert dev["decoded"]["virtio"][0]["type"] == "virtio-blk"
    assert dev["decoded"]["pci"][0]["slot"] == 4


def test_pipe_input_equals_file_input(q35_json):
    data = unpack(Q35).read_bytes()
    out = subprocess.run(
        [sys.executable, "-m", "qevm", "devices", "-", "--json"],
        input=data,
        capture_output=True,
        check=True,
    ).stdout
    assert json.loads(out) == q35_json


def test_without_ram_the_rings_are_left_out():
    rc, text = _run("devices", str(Q35), "--json", "--no-ram")
    j = json.loads(text)
    blk = next(v for v in j["virtio"] if v["type"] == "virtio-blk")
    assert blk["queues"][0]["avail_idx"] is None
    assert any("guest RAM" in n for n in blk["notes"])


def test_numbers_only_without_pci_ids(monkeypatch):
    monkeypatch.setenv("QEVM_PCI_IDS", "/nonexistent")
    monkeypatch.setattr(ids, "SEARCH_PATH", ())
    ids.database.cache_clear()
    try:
        rc, text = _run("devices", str(Q35), "--device", "*e1000")
        assert rc == 0
        assert "03:01.0 Class 0200: Device [8086:100e] (rev 03)" in text
    finally:
        ids.database.cache_clear()


def test_bad_virtio_bytes_are_a_warning_with_an_offset():
    with qevm.open(unpack(PC)) as mig:
        dev = mig.devices("*virtio-blk")[0]
        f = dev.state.field("virtio")
        data = bytes(f.value)
    with pytest.raises(qevm.QevmError) as e:
        wire.parse(data[:300], f.offset, dev.name, "pci")
    assert e.value.offset is not None and e.value.section == dev.name
    cut = bytearray(data)
    cut[4 + 256 : 4 + 256 + 4] = b"\x00\x00\x00\x07"  # INTx state must be 0 or 1
    with pytest.raises(qevm.QevmError, match="INTx"):
        wire.parse(bytes(cut), f.offset, dev.name, "pci")


def test_ring_sizes_for_check():
    with qevm.open(unpack(PC), index_ram=True) as mig:
        blk = next(v for v in decode(mig).virtio if v.type == "virtio-blk")
    # SeaBIOS shrank queue 0 to 256 entries; the device's default is 1024
    assert blk.ring_sizes()[:2] == [(0, 256, 1024), (1, 1024, 1024)]
