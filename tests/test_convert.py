"""``qevm convert --to stream``: plain single-pass streams with the same RAM and devices."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from conftest import CORPUS, DATA, HAVE_CORPUS, LIVE, all_stream_paths, unpack

import qevm
from qevm.cli import main
from qevm.stream import CommandRecord, ConfigurationRecord, SectionRecord

PATHS = all_stream_paths()


def _mapped_inputs() -> dict[str, object]:
    found = {}
    for name, path in PATHS.items():
        if "mapped-ram" in name:
            found[name] = path
    sparse = [DATA / "libvirt" / "save-sparse.img.xz"]
    if HAVE_CORPUS:
        sparse += sorted((CORPUS / "libvirt").glob("*sparse*.xz"))
    for p in sparse:
        found.setdefault(p.name, p)
    return found


MAPPED = _mapped_inputs()


def convert(src, out, *extra) -> None:
    assert main(["convert", str(src), "-o", str(out), "-q", *map(str, extra)]) == 0


def device_bodies(mig: qevm.Migration) -> list[tuple[str, int, int | None, bytes]]:
    """(name, instance, version, body bytes) of every FULL section, in stream order."""
    src = mig.source
    return [
        (
            d.name,
            d.instance_id,
            d.record.version,
            bytes(src.read_at(d.record.body_offset, d.record.body_size)),
        )
        for d in mig.devices()
    ]


def assert_single_pass(mig: qevm.Migration) -> None:
    """Every page of every block in the stream comes exactly once, as ZERO or PAGE."""
    for b in mig.ram_blocks:
        assert b.mapped is None
        if not b.in_stream:
            assert not b.records
            continue
        assert set(b.records) <= {"zero", "page"}, (b.name, b.records)
        assert sum(b.records.values()) == b.used_length // mig.page_size, b.name


def assert_same_ram(a: qevm.Migration, b: qevm.Migration) -> None:
    assert [(x.name, x.used_length, x.mr_addr) for x in a.ram_blocks] == [
        (x.name, x.used_length, x.mr_addr) for x in b.ram_blocks
    ]
    for x in a.ram_blocks:
        if not x.in_stream:
            continue
        n = x.used_length
        assert a.page_index.read(x.name, 0, n) == b.page_index.read(x.name, 0, n), x.name


@pytest.mark.parametrize("name", sorted(MAPPED))
def test_mapped_ram_converts_to_the_same_ram_and_devices(name, tmp_path):
    src = unpack(MAPPED[name])
    out = tmp_path / "plain.mig"
    convert(src, out)
    with qevm.open(src, index_ram=True) as a, qevm.open(out, index_ram=True) as b:
        assert "mapped-ram" in a.capabilities and "mapped-ram" not in b.capabilities
        assert b.source.start == 0 and out.read_bytes()[:4] == b"QEVM"
        assert b.machine == a.machine
        assert_single_pass(b)
        assert_same_ram(a, b)
        assert device_bodies(a) == device_bodies(b)
        # the configuration lost its capabilities subsection, nothing else
        conf_a = next(r for r in a.records if isinstance(r, ConfigurationRecord))
        conf_b = next(r for r in b.records if isinstance(r, ConfigurationRecord))
        subs_a = [s.name for s in conf_a.config.node.subsections]
        subs_b = [s.name for s in conf_b.config.node.subsections]
        assert subs_b == [s for s in subs_a if s != "configuration/capabilities"]
        text_a, text_b = a.description.text, b.description.text
    # the description: the same text without the capabilities subsection
    want = re.sub(
        rb', "subsections": \[\{"vmsd_name": "configuration/capabilities", "version": 1, '
        rb'"fields": \[[^\]]*\]\}\]',
        b"",
        text_a,
        count=1,
    )
    assert want != text_a and text_b == want
    json.loads(text_b)


def test_converting_twice_changes_nothing(tmp_path):
    src = unpack(MAPPED["q35-mapped-ram-multifd-11.1"])
    convert(src, tmp_path / "a.mig")
    convert(tmp_path / "a.mig", tmp_path / "b.mig")
    assert (tmp_path / "a.mig").read_bytes() == (tmp_path / "b.mig").read_bytes()


def _channels(name: str) -> list[str]:
    folder = LIVE[name].parent
    return [str(unpack(p)) for p in sorted(folder.glob(f"{name}.ch*.bin.xz"))]


LIVE_TRUTH = sorted(n for n in LIVE if (DATA / "live" / f"{n}.pmem-sha256.json").exists())


def assert_equals_destination(mig: qevm.Migration, name: str) -> None:
    """pc.ram equals the destination's pmemsave (sha256 per MiB; VGA/ROM window zeroed)."""
    truth = json.loads((DATA / "live" / f"{name}.pmem-sha256.json").read_text())
    lo, hi = truth["zeroed"]
    step = truth["chunk_size"]
    for i, digest in enumerate(truth["sha256"]):
        data = bytearray(mig.page_index.read("pc.ram", i * step, step))
        a, b = max(lo - i * step, 0), min(hi - i * step, step)
        if a < b:
            data[a:b] = bytes(b - a)
        assert hashlib.sha256(data).hexdigest() == digest, (name, f"MiB {i}")


@pytest.mark.parametrize("name", LIVE_TRUTH)
def test_live_migration_converts_to_one_pass_with_the_destinations_ram(name, tmp_path):
    out = tmp_path / "one.mig"
    convert(unpack(LIVE[name]), out, *[a for c in _channels(name) for a in ("--channel", c)])
    with qevm.open(out, index_ram=True) as mig:
        assert not mig.missing_pages()
        assert_single_pass(mig)
        assert_equals_destination(mig, name)
        commands = {c.name for c in mig.commands()}
        assert commands <= {"SWITCHOVER_START"}
        assert not any(isinstance(r, CommandRecord) and r.nested for r in mig.records)
    with qevm.open(unpack(LIVE[name])) as orig, qevm.open(out) as conv:
        assert device_bodies(orig) == device_bodies(conv)
        # RAM sections: START (blocks), PART (pages), END, side by side
        ram = [r for r in conv.records if isinstance(r, SectionRecord) and r.entry.idstr == "ram"]
        assert [r.type_name for r in ram] == ["START", "PART", "END"]
        assert ram[0].end == ram[1].offset and ram[1].end == ram[2].offset


def test_multifd_without_its_channels_is_refused(capsys, tmp_path):
    rc = main(["convert", str(unpack(LIVE["multifd-111"])), "-o", str(tmp_path / "o")])
    _, err = capsys.readouterr()
    assert rc == 2 and "--channel" in err and "65536 pages of pc.ram" in err
    assert not (tmp_path / "o").exists()


def test_plain_stream_converts_to_the_same_state(tmp_path):
    src = unpack(PATHS["q35-ignore-shared-7.2"])
    out = tmp_path / "one.mig"
    convert(src, out)
    with qevm.open(src, index_ram=True) as a, qevm.open(out, index_ram=True) as b:
        # x-ignore-shared stays: the block list keeps the guest-physical addresses
        assert a.capabilities == b.capabilities == {"x-ignore-shared"}
        assert a.description.text == b.description.text
        assert_single_pass(b)
        assert_same_ram(a, b)
        assert device_bodies(a) == device_bodies(b)
