"""``qevm check``'s device checks (qevm.devices.loadchecks) against QEMU.

* every virtio field of every stream here and in the corpus is read by
  qevm's model of ``virtio_load()`` exactly to its end (what QEMU wrote is
  what its own load reads) — QEMU 7.2, 10.0 and 11.1, PCI and MMIO;
* streams edited here to trip one of virtio_load()'s checks, loaded by the
  installed QEMU: qevm says what QEMU says, at the same place;
* the corpus' live Linux guest (QEMU 10.0.13, virtio-net, -blk, -rng,
  -balloon in use) against destinations made here with the same command
  line but one device property changed, loaded by trixie's QEMU 10.0.

Device pairs committed with the others (read-only PCI bytes, ring sizes,
features negotiated by SeaBIOS and iPXE) are checked by test_check.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
import sys

import pytest
from conftest import CORPUS, DATA, HAVE_CORPUS, all_stream_paths, have_qemu, unpack
from test_check import assert_agrees, assert_names_qemu

import qevm
from qevm.analysis import check
from qevm.devices.virtio.load import read_as_loaded
from qevm.devices.virtio.loadside import side_from_field
from qevm.devices.virtio.section import transport_of

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import gen_check  # noqa: E402


def _virtio_fields(mig):
    for dev in mig.devices():
        if dev.state is None:
            continue
        for node in dev.state.walk():
            for f in node.fields:
                if f.desc.type == "virtio":
                    yield dev, f


def _own_reading(mig, dev, f):
    blocks = [(b.name, b.used_length) for b in mig.ram_blocks]
    data = bytes(f.value)
    side = side_from_field(
        data, f.offset, dev.name, dev.state.vmsd_name, transport_of(dev.name), blocks, mig.machine
    )
    return side, read_as_loaded(data, f.offset, side, side, len(data))


def _streams_with_virtio() -> list[pathlib.Path]:
    paths = list(all_stream_paths().values()) + sorted((DATA / "devices").glob("*.mig.xz"))
    if HAVE_CORPUS:
        for sub in ("devices", "diff"):
            paths += sorted((CORPUS / sub).glob("*.mig.xz"))
    return paths


def test_virtio_reading_fits_every_stream():
    """Read with its own device as the destination, each virtio field ends exactly where
    QEMU ended it, with no refusal and nothing taken on trust."""
    seen = set()
    for path in _streams_with_virtio():
        try:
            mig = qevm.open(unpack(path), strict=False)
        except qevm.QevmError:
            continue
        with mig:
            for dev, f in _virtio_fields(mig):
                if transport_of(dev.name) == "ccw":
                    continue  # the CCW transport's own state is not decoded
                side, got = _own_reading(mig, dev, f)
                where = (path.name, dev.name)
                assert got.size == f.size and not got.refusals and not got.notes, (
                    where,
                    got.size,
                    f.size,
                    [r.message for r in got.refusals],
                    got.notes,
                )
                seen.add((side.device_id, side.transport))
    # net, blk, serial, rng, balloon, scsi, input over PCI and MMIO at least
    assert {(1, "pci"), (2, "pci"), (3, "pci"), (4, "pci"), (5, "pci"), (8, "pci")} <= seen
    assert {(2, "mmio"), (4, "mmio"), (18, "pci")} <= seen


# -- streams edited to trip virtio_load()'s checks, loaded by the installed QEMU ----------

BASE = gen_check.Side(
    "qemu-system-x86_64", ["-M", "pc-q35-7.2", "-m", "32", "-device", "virtio-net-pci,addr=4"]
)
#: what to edit: the read's name in qevm's reading -> (bytes, QEMU's words)
EDITS = {
    "vq-address": ("vq[0].last_avail_idx", struct.pack(">H", 5), "VQ 0 address 0x0"),
    "num-queues": ("num_queues", struct.pack(">I", 0x500), "Invalid number of virtqueues: 0x500"),
    "vnet-hdr": ("has_vnet_hdr", struct.pack(">I", 1), "saved image requires vnet_hdr=on"),
    "config-vector": ("config_vector", struct.pack(">H", 9), "Failed to load virtio-net:virtio"),
}


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    if not have_qemu():
        pytest.skip("no qemu-system-x86_64")
    work = tmp_path_factory.mktemp("virtio-edits")
    base = work / "base.mig"
    gen_check.save(BASE, base, work)
    with qevm.open(base) as mig:
        dev, f = next((d, f) for d, f in _virtio_fields(mig) if d.name.endswith("virtio-net"))
        _, own = _own_reading(mig, dev, f)
        where = {what: f.offset + pos for what, pos in own.steps}
    out = {}
    for name, (what, value, _) in EDITS.items():
        data = bytearray(base.read_bytes())
        data[where[what] : where[what] + len(value)] = value
        path = work / f"{name}.mig"
        path.write_bytes(data)
        out[name] = (path, gen_check.load(BASE, path, work))
    return base, out


@pytest.mark.qemu
@pytest.mark.parametrize("name", sorted(EDITS))
def test_edited_virtio_state_agrees_with_qemu(edited, name):
    base, cases = edited
    path, verdict = cases[name]
    assert not verdict["loads"] and EDITS[name][2] in "\n".join(verdict["qemu_errors"])
    report = check(path, base)
    assert report.loads is False, [p.message for p in report.problems]
    p = report.first()
    assert p.kind == "device" and p.section.endswith("/virtio-net")
    assert_names_qemu(report, verdict)
    assert EDITS[name][2] in p.qemu


def test_unedited_virtio_base_loads(edited):
    base, _ = edited
    assert check(base, base).loads is True


# -- a live Linux guest against destinations with one property changed --------------------

LX = CORPUS / "diff" / "lx-diff-100.mig.xz"
#: destination -> (device driver, property added); the verdict comes from trixie's QEMU
LX_CASES = {
    "same": (None, None),
    "mrg-rxbuf-off": ("virtio-net-pci", "mrg_rxbuf=off"),
    "indirect-desc-off": ("virtio-blk-pci", "indirect_desc=off"),
    "event-idx-off": ("virtio-rng-pci", "event_idx=off"),
    "blk-num-queues": ("virtio-blk-pci", "num-queues=2"),
    "net-vectors": ("virtio-net-pci", "vectors=6"),
}


def _lx_args(argv: list[str], disk: pathlib.Path, change: tuple) -> list[str]:
    """The guest's command line as a destination: no kernel, monitor or log files."""
    drop_with_value = {"-kernel", "-initrd", "-append", "-qmp", "-monitor", "-accel", "-display"}
    out: list[str] = []
    it = iter(argv)
    for a in it:
        if a in drop_with_value:
            next(it)
        elif a == "-nodefaults":
            continue
        elif a == "-serial":
            next(it)
            out += ["-serial", "null"]
        elif a.startswith("file=disk.raw"):
            out.append(a.replace("file=disk.raw", f"file={disk}"))
        elif change[0] and (a == change[0] or a.startswith(change[0] + ",")):
            out.append(f"{a},{change[1]}")
        else:
            out.append(a)
    return out


@pytest.fixture(scope="module")
def lx_pairs(tmp_path_factory):
    if not HAVE_CORPUS or not LX.exists():
        pytest.skip("the corpus' diff/ guest is not available")
    if not os.path.exists(gen_check.NEW):
        pytest.skip("trixie's QEMU 10.0 is not built")
    work = tmp_path_factory.mktemp("lx-pairs")
    disk = work / "disk.raw"
    disk.write_bytes(bytes(1 << 20))
    argv = json.loads((CORPUS / "diff" / "lx-diff-100.json").read_text())["argv"]
    src = unpack(LX)
    out = {}
    for name, change in LX_CASES.items():
        side = gen_check.Side(gen_check.NEW, _lx_args(argv, disk, change))
        dst = work / f"{name}.dst.mig"
        gen_check.save(side, dst, work)
        out[name] = (dst, gen_check.load(side, src, work))
    return src, out


@pytest.mark.corpus
@pytest.mark.parametrize("name", sorted(LX_CASES))
def test_live_guest_against_changed_destination(lx_pairs, name):
    src, cases = lx_pairs
    dst, verdict = cases[name]
    report = check(src, dst)
    assert_agrees(report, verdict, name)
    # the virtio state itself is read to its end: nothing left unexplained
    assert not [p for p in report.problems if p.kind in ("layout", "unexplained")]
    if name == "same":
        assert verdict["loads"]
