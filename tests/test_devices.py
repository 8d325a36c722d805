"""qevm devices against what QEMU's monitor said about the same stopped VM.

Every capture holds, next to its stream, the HMP output of the VM that
wrote it: ``info pci``, ``info virtio-status`` and ``info
virtio-queue-status`` per queue, ``info lapic`` per CPU and ``info pic``
(the corpus' real Linux guests in ../shared/corpus/devices and diff, and
the firmware-only captures tests/gen_devices.py made).  The monitor text is
parsed by tests/monitor.py, independently of qevm.
"""

from __future__ import annotations

import json
import pathlib
import re

import pytest
from conftest import CORPUS, DATA, HAVE_CORPUS, unpack
from monitor import (
    class_matches,
    parse_info_pci,
    parse_info_pic,
    parse_lapic,
    parse_queue_status,
    parse_virtio_status,
)

import qevm
from qevm.devices import decode


def _captures() -> dict[str, tuple[pathlib.Path, pathlib.Path, str]]:
    """name -> (stream, truth json, truth key)."""
    out = {}
    for p in sorted((DATA / "devices").glob("*.mig.xz")):
        name = p.name[: -len(".mig.xz")]
        out[name] = (p, p.with_name(f"{name}.json"), "truth")
    if HAVE_CORPUS:
        for folder in ("devices", "diff"):
            for p in sorted((CORPUS / folder).glob("*.mig.xz")):
                name = p.name[: -len(".mig.xz")]
                base = name.removesuffix(".b")
                key = "truth_b" if name.endswith(".b") else "truth"
                out[name] = (p, p.with_name(f"{base}.json"), key)
    return out


CAPTURES = _captures()
_CACHE: dict[str, tuple] = {}


def _truth_keys(name: str) -> set[str]:
    _, meta_path, key = CAPTURES[name]
    return {k for k, v in json.loads(meta_path.read_text())[key].items() if v}


_KEYS = {name: _truth_keys(name) for name in CAPTURES}


def having(key: str) -> list[str]:
    """The captures whose monitor truth has ``key`` (a second stop may record less)."""
    return sorted(n for n in CAPTURES if key in _KEYS[n])


def _load(name: str):
    if name not in _CACHE:
        stream, meta_path, key = CAPTURES[name]
        meta = json.loads(meta_path.read_text())
        with qevm.open(unpack(stream), index_ram=True) as mig:
            report = decode(mig)
            _CACHE[name] = (report, report.to_json(), meta, meta[key])
    return _CACHE[name]


def test_captures_exist():
    assert any(n.startswith(("q35", "pc", "arm")) for n in CAPTURES), CAPTURES


@pytest.mark.parametrize("name", having("info pci"))
def test_pci_equals_info_pci(name):
    report, _, meta, truth = _load(name)
    qemu = parse_info_pci(truth["info pci"])
    assert qemu, "info pci printed no device"
    # a function behind a bridge the firmware gave no bus number: QEMU does not list it
    unnumbered = [f for f in report.pci if f.bus is None]
    assert all("no secondary bus number" in " ".join(f.notes) for f in unnumbered)
    ours = {(f.bus, f.slot, f.function): f for f in report.pci if f.bus is not None}
    assert set(ours) == {(d["bus"], d["slot"], d["function"]) for d in qemu}
    for d in qemu:
        f = ours[(d["bus"], d["slot"], d["function"])]
        where = f"{name} {f.section}"
        assert (f.vendor_id, f.device_id) == (d["vendor"], d["device"]), where
        assert class_matches(d["class"], f.class_code), (where, d["class"], hex(f.class_code))
        if "subsystem" in d:
            assert f.subsystem == d["subsystem"], where
        if "irq" in d:
            assert (f.interrupt_line, f.interrupt_pin) == (d["irq"], d["pin"]), where
        else:
            assert f.interrupt_pin is None, where
        if f.is_bridge:
            j = f.to_json()["bridge"]
            assert (j["primary"], j["secondary"], j["subordinate"]) == (
                d["primary"],
                d["secondary"],
                d["subordinate"],
            ), where
            w = j["windows"]
            assert (w["io"]["base"], w["io"]["limit"]) == d["io_range"], where
            assert (w["memory"]["base"], w["memory"]["limit"]) == d["memory_range"], where
            pref = (w["prefetchable"]["base"], w["prefetchable"]["limit"])
            assert pref == d["prefetchable_range"], where
        bars = {b.index: b for b in f.bars()}
        rom = f.rom()
        if rom is not None:
            bars[6] = rom
        for idx, qb in d["bars"].items():
            b = bars.get(idx)
            if b is None:
                # a registered 32-bit memory BAR the guest never programmed reads as 0
                assert qb["address"] is None and qb["kind"] == "mem32", (where, idx, qb)
                continue
            assert b.kind == qb["kind"], (where, idx)
            if b.kind != "io":
                assert b.prefetchable == qb["prefetchable"], (where, idx)
            if qb["address"] is None:
                assert not b.mapped, (where, idx)
            else:
                assert b.mapped and b.address == qb["address"], (where, idx, hex(b.address))
                if b.size is not None:
                    assert b.size == qb["size"], (where, idx)
        # nothing qevm shows that QEMU does not
        assert set(bars) <= set(d["bars"]), (where, sorted(bars), sorted(d["bars"]))


def _virtio_truth(truth: dict) -> dict:
    return truth.get("virtio") or {}


def _match_virtio(report, path: str, status: dict | None, queue0: dict | None, meta: dict):
    """The decoded device QEMU's QOM path names: by qdev id (query-pci) or by unique type."""
    ids = meta.get("virtio_sections", {})
    if path in ids:
        found = [v for v in report.virtio if v.section == ids[path]]
        assert len(found) == 1, (path, ids[path])
        return found[0]
    name = (status or {}).get("device_name") or (queue0 or {}).get("device_name")
    found = [v for v in report.virtio if v.type == name]
    assert len(found) == 1, f"{path}: {name} is not unique; give virtio_sections"
    return found[0]


@pytest.mark.parametrize("name", having("virtio"))
def test_virtio_equals_info_virtio(name):
    report, _, meta, truth = _load(name)
    vt = _virtio_truth(truth)
    full = all("queues" in t for t in vt.values())
    if full:
        assert len(report.virtio) == len(vt)
    for path, t in vt.items():
        status = parse_virtio_status(t["status"]) if full and t.get("status") else None
        # the second stop of a diff capture recorded the queues only
        raw = t["queues"] if full else t
        queues = {int(k): parse_queue_status(v) for k, v in raw.items()}
        v = _match_virtio(report, path, status, queues.get(0), meta)
        where = f"{name} {v.section}"
        if status is not None:
            assert v.type == status["device_name"], where
            assert v.device_id == int(status["device_id"]), where
            assert v.status_names == status["status"][0], where
            assert v.guest_feature_list.names == status["Guest features"][0], where
            assert v.guest_feature_list.unknown == status["Guest features"][1], where
            host_names, _ = status["Host features"]
            assert set(v.host_feature_list.names) <= set(host_names), where
            assert v.queue_sel == int(status["queue_sel"]), where
            assert v.isr == int(status["isr"]), where
            assert len(v.queues) == int(status["num_vqs"]), where
            assert v.endianness == status["endianness"], where
            for flag in ("broken", "disabled", "started"):
                assert v.flags[flag] == (status[flag] == "true"), (where, flag)
        assert len(v.queues) == len(queues), where
        for i, q in queues.items():
            ours = v.queues[i]
            w = f"{where} queue {i}"
            assert v.type == q["device_name"], w
            assert (ours.num, ours.num_default) == (q["num"], q["num_default"]), w
            assert (ours.desc, ours.avail, ours.used) == (q["desc"], q["avail"], q["used"]), w
            assert ours.last_avail_idx == q["last_avail_idx"], w
            assert ours.used_idx == q["used_idx"], w
            assert ours.ring.inuse == q["inuse"], w
            rings = truth.get("virtio_rings", {}).get(path, {}).get(str(i))
            if rings is not None:
                # what QEMU's xp read at the rings' addresses in the stopped VM
                assert ours.ring.avail_idx == rings["avail_idx"], w
                assert ours.used_idx == rings["used_idx"], w
            elif ours.desc:
                # only QEMU's copy of avail->idx from when it last looked (the corpus)
                assert ours.ring.avail_idx == q["shadow_avail_idx"], w
            else:
                assert ours.ring.avail_idx is None, w
            assert ours.ring.problem is None, w


@pytest.mark.parametrize("name", having("info lapic"))
def test_lapic_equals_info_lapic(name):
    report, _, meta, truth = _load(name)
    lapic = truth["info lapic"]
    ours = {a.cpu: a.to_json() for a in report.lapic}
    assert len(ours) == len(lapic)
    for text in lapic.values():
        cpu = int(re.search(r"local APIC state for CPU (\d+)", text).group(1))
        q = parse_lapic(text)
        o = ours[cpu]
        for k in ("lvt0", "lvt1", "lvtpc", "lvterr", "lvtthmr", "lvtt", "spiv", "icr", "icr2"):
            assert o[k] == q[k], (name, cpu, k)
        for k in ("esr", "dcr", "divide_by", "initial_count", "current_count"):
            assert o[k] == q[k], (name, cpu, k)
        for k in ("apr", "tpr", "dfr", "ldr", "ppr", "isr", "irr"):
            assert o[k] == q[k], (name, cpu, k)
        assert [v for v in o["isr"] if v in o["tmr"]] == q["isr_level"]
        assert [v for v in o["irr"] if v in o["tmr"]] == q["irr_level"]


@pytest.mark.parametrize("name", having("info pic"))
def test_ioapic_and_pic_equal_info_pic(name):
    report, j, meta, truth = _load(name)
    q = parse_info_pic(truth["info pic"])
    if q["ioapic"] is not None:
        pins = {p["pin"]: p for p in j["ioapic"]}
        assert set(pins) == set(q["pins"])
        for i, qp in q["pins"].items():
            p = pins[i]
            for k in qp:
                assert p[k] == qp[k], (name, i, k)
        assert [i for i, p in sorted(pins.items()) if p["irr"]] == q["irr"]
        assert [i for i, p in sorted(pins.items()) if p["remote_irr"]] == q["remote_irr"]
        assert {p["ioregsel"] for p in j["ioapic"]} == {q["ioapic"]["sel"]}
        assert {p["ioapic_id"] for p in j["ioapic"]} == {q["ioapic"]["id"]}
    names = {
        "irr": "irr",
        "imr": "imr",
        "isr": "isr",
        "hprio": "priority_add",
        "irq_base": "irq_base",
        "rr_sel": "read_reg_select",
        "elcr": "elcr",
        "fnm": "special_fully_nested_mode",
    }
    pics = {p["instance_id"]: p for p in j["pic"]}
    assert set(pics) == set(q["pic"])
    for n, qp in q["pic"].items():
        for qk, ok in names.items():
            assert pics[n][ok] == qp[qk], (name, n, qk)


def _argv_macs(argv: list[str]) -> dict[str, str]:
    """``-device MODEL,...,mac=X`` -> {model: mac}."""
    out = {}
    for a in argv:
        m = re.search(r"mac=([0-9a-f:]{17})", a)
        if m:
            out[a.split(",")[0]] = m.group(1)
    return out


def _with_macs() -> list[str]:
    return sorted(
        n for n, (_, m, _k) in CAPTURES.items() if _argv_macs(json.loads(m.read_text())["argv"])
    )


@pytest.mark.parametrize("name", _with_macs())
def test_nic_macs_equal_the_command_line(name):
    report, j, meta, _ = _load(name)
    want = _argv_macs(meta["argv"])
    models = {"virtio-net-pci": "virtio-net", "virtio-net-device": "virtio-net"}
    got = {}
    for n in j["nic"]:
        got.setdefault(n["model"], set()).add(n["mac"])
    for dev, mac in want.items():
        assert mac in got.get(models.get(dev, dev), set()), (name, dev, mac, got)
