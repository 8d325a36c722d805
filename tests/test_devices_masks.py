"""QEMU's PCI config compare masks (qevm.devices.pci.qemu_masks) against real loads.

A destination QEMU refuses an incoming PCI device whose config space differs
from its own in bits it compares ("Bad config data: i=0x.."); the masks
rebuilt from the destination's config space must predict exactly that
message, and nothing for pairs that load.  Truth: the destination QEMU's own
verdict (the corpus' check pairs, and pairs made here at run time).
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil

import pytest
from conftest import DATA, unpack
from qemuvm import Vm

import qevm
from qevm.analysis import check
from qevm.cli import main
from qevm.devices import decode, pci_functions
from qevm.devices.pci import qemu_masks


def _functions(path: pathlib.Path) -> dict:
    with qevm.open(path) as mig:
        return pci_functions(mig)


def predicted(src: pathlib.Path, dst: pathlib.Path) -> list[str]:
    """QEMU's message for every device whose config the destination would refuse."""
    s, d = _functions(src), _functions(dst)
    out = []
    for path, df in d.items():
        sf = s.get(path)
        if sf is None or len(sf.config) != len(df.config):
            continue
        m = qemu_masks(df.config, df.bar_sizes).first_mismatch(df.config, sf.config)
        if m is not None:
            out.append(m.qemu_message())
    return out


def _bad_config(errors: list[str]) -> list[str]:
    return [e.split(": ", 1)[1] for e in errors if "Bad config data" in e]


@pytest.mark.corpus
def test_masks_predict_the_check_corpus(corpus):
    pairs = sorted((corpus / "check").glob("*.verdict.json"))
    assert pairs
    seen_bad = 0
    for v in pairs:
        meta = json.loads(v.read_text())
        name = meta["name"]
        src = unpack(corpus / "check" / f"{name}.src.mig.xz")
        dst = unpack(corpus / "check" / f"{name}.dst.mig.xz")
        ours = predicted(src, dst)
        bad = _bad_config(meta["qemu_errors"])
        if bad:
            seen_bad += 1
            assert ours[:1] == bad[:1], name
        elif meta["loads"]:
            assert ours == [], name
    assert seen_bad


CASES = {
    # MSI-X table size is read-only: 3 vectors cannot load into a 4-vector device
    "vectors": (
        ["-M", "pc-i440fx-7.2", "-device", "virtio-net-pci,vectors=3,addr=0x4"],
        ["-M", "pc-i440fx-7.2", "-device", "virtio-net-pci,vectors=4,addr=0x4"],
    ),
    # the physical slot number is in the Express capability's slot capabilities
    "slot": (
        ["-M", "pc-q35-7.2", "-device", "pcie-root-port,chassis=1,slot=1,addr=0x10"],
        ["-M", "pc-q35-7.2", "-device", "pcie-root-port,chassis=1,slot=2,addr=0x10"],
    ),
    # a hot-plug capable slot says so in its (read-only) slot capabilities
    "hotplug": (
        ["-M", "pc-q35-7.2", "-device", "pcie-root-port,chassis=1,hotplug=off,addr=0x10"],
        ["-M", "pc-q35-7.2", "-device", "pcie-root-port,chassis=1,hotplug=on,addr=0x10"],
    ),
    # an extended capability the source lacks: the header at 0x100 is compared
    "aer": (
        ["-M", "pc-q35-7.2", "-device", "pcie-root-port,id=rp,chassis=1,addr=0x10",
         "-device", "virtio-net-pci,bus=rp,aer=off"],
        ["-M", "pc-q35-7.2", "-device", "pcie-root-port,id=rp,chassis=1,addr=0x10",
         "-device", "virtio-net-pci,bus=rp,aer=on"],
    ),
    # the same configuration loads
    "same": (
        ["-M", "pc-q35-7.2", "-device", "pcie-root-port,chassis=1,addr=0x10",
         "-device", "e1000e,addr=0x4", "-device", "pci-bridge,chassis_nr=2,addr=0x5"],
        ["-M", "pc-q35-7.2", "-device", "pcie-root-port,chassis=1,addr=0x10",
         "-device", "e1000e,addr=0x4", "-device", "pci-bridge,chassis_nr=2,addr=0x5"],
    ),
}  # fmt: skip
BASE = ["-nodefaults", "-m", "32", "-display", "none", "-nic", "none"]


@pytest.mark.qemu
@pytest.mark.parametrize("case", sorted(CASES))
def test_masks_predict_a_real_load(case, tmp_path):
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    src_args, dst_args = CASES[case]
    streams = {}
    for side, args in (("src", src_args), ("dst", dst_args)):
        streams[side] = tmp_path / f"{side}.mig"
        with Vm(binary, [*BASE, *args, "-S"], tmp_path, side) as vm:
            vm.save(streams[side])
    ours = predicted(streams["src"], streams["dst"])
    with Vm(binary, [*BASE, *dst_args, "-incoming", "defer"], tmp_path, "load") as vm:
        loaded = vm.load_file(streams["src"]) == "completed"
        log = vm.log()
    bad = re.findall(r"get_pci_config_device: Bad config data: [^\n]*", log)
    if loaded:
        assert ours == []
    else:
        assert bad, log
        assert ours[:1] == bad[:1]
    assert loaded == (case == "same")


def _ram_location(mig, gpa: int) -> tuple[str, int]:
    from qevm.devices.guestmem import GuestMemory

    for r in GuestMemory(mig).map.ranges:
        if r.gpa <= gpa < r.end:
            return r.block, r.offset + gpa - r.gpa
    raise AssertionError(f"{gpa:#x} is not RAM")


@pytest.mark.qemu
@pytest.mark.parametrize("ring", ["avail", "used"])
def test_ring_check_equals_qemus_load(ring, tmp_path):
    """Break a virtio ring index in guest RAM: qevm reports what QEMU says when it loads."""
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    src = unpack(DATA / "devices" / "q35-bridges-72.mig.xz")
    meta = json.loads((DATA / "devices" / "q35-bridges-72.json").read_text())
    with qevm.open(src, index_ram=True) as mig:
        net = next(v for v in decode(mig).virtio if v.type == "virtio-net")
        q = net.queues[0]
        gpa = (q.avail if ring == "avail" else q.used) + 2
        block, offset = _ram_location(mig, gpa)
    # avail: 0x200 heads ahead of the device; used: 0x200 requests in flight
    value = (q.last_avail_idx + 0x200) if ring == "avail" else (q.last_avail_idx - 0x200)
    edited = tmp_path / "edited.mig"
    spec = f"{block}:{offset:#x}={(value & 0xFFFF).to_bytes(2, 'little').hex()}"
    assert main(["edit", str(src), "-o", str(edited), "--write-ram", spec, "-q"]) == 0
    with qevm.open(edited, index_ram=True) as mig:
        report = decode(mig)
    ours = next(v for v in report.virtio if v.type == "virtio-net").queues[0].ring
    assert ours.problem is not None and ours.fatal == (ring == "used")
    assert any(ours.problem in w for w in report.warnings)

    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    args = [a.format(disk=disk) for a in meta["argv"][1:]]
    with Vm(binary, [*args, "-display", "none", "-incoming", "defer"], tmp_path, "load") as vm:
        loaded = vm.load_file(edited) == "completed"
        log = vm.log()
    # QEMU's own words, and the load fails exactly when qevm says it would
    assert ours.problem in log, log
    assert loaded == (not ours.fatal)
    # qevm check against the unedited stream (the same configuration) says the same
    report = check(edited, src)
    assert report.loads == loaded, [p.message for p in report.problems]
    if ours.fatal:
        assert report.first().qemu == ours.problem
    else:
        assert any(ours.problem in w for w in report.warnings), report.warnings
