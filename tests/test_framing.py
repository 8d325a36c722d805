"""Every stream frames completely: records tile the file, device sections decode exactly."""

from __future__ import annotations

import pytest
from conftest import CORPUS, HAVE_CORPUS, LIVE, STREAMS, all_stream_paths, unpack

import qevm
from qevm.stream import CommandRecord, SectionRecord
from qevm.vmstate.values import StateNode

STREAM_FILES = all_stream_paths()


def check_node_tiles(node: StateNode) -> None:
    """Fields and subsections of a node cover its bytes back to back."""
    pos = node.offset
    for fv in node.fields:
        assert fv.offset == pos, (node.vmsd_name, fv.desc.name)
        pos += fv.size
        for v in fv.elements:
            if isinstance(v, StateNode):
                check_node_tiles(v)
    for s in node.subsections:
        assert s.offset == pos, (node.vmsd_name, s.name)
        check_node_tiles(s.node)
        pos = s.node.offset + s.node.size
    assert pos == node.offset + node.size, node.vmsd_name


def check_records_tile(records, start, end) -> None:
    pos = start
    for r in records:
        assert r.offset == pos, r
        if isinstance(r, SectionRecord):
            assert r.offset < r.body_offset <= r.body_end <= r.end
        if isinstance(r, CommandRecord) and r.nested:
            assert r.nested[-1].end <= r.nested_end == r.end
            check_records_tile(r.nested, r.nested_offset, r.nested[-1].end)
        pos = r.end
    assert pos == end


@pytest.mark.parametrize("name", sorted(STREAM_FILES))
def test_stream_frames_and_decodes(name):
    path = unpack(STREAM_FILES[name])
    with qevm.open(path) as mig:
        size = mig.source.size
        check_records_tile(mig.records, 0, size)
        devices = mig.devices()
        assert devices
        for dev in devices:
            if mig.description is None:
                assert dev.state is None
                continue
            assert dev.state is not None, dev.name
            assert dev.state.offset == dev.record.body_offset
            assert dev.state.size == dev.record.body_size
            check_node_tiles(dev.state)
        assert mig.footers is True


def test_every_capture_has_ram_blocks():
    for name in list(STREAMS)[:3] + list(LIVE)[:2]:
        with qevm.open(unpack(all_stream_paths()[name])) as mig:
            assert mig.ram_blocks, name
            assert mig.page_size == 4096


def _other_corpus_streams() -> dict[str, object]:
    """The corpus' streams that STREAM_FILES leaves out: check/, devices/, diff/ and
    libvirt/ (save images in every format, virsh dump files)."""
    if not HAVE_CORPUS:
        return {}
    found = {}
    for sub in ("check", "devices", "diff", "libvirt"):
        for p in sorted((CORPUS / sub).iterdir()):
            n = p.name
            if n.endswith((".mig.xz", ".img", ".img.xz", ".save", ".save.xz", ".core", ".core.xz")):
                found[f"{sub}/{n}"] = p
    return found


OTHER_CORPUS = _other_corpus_streams()


@pytest.mark.corpus
@pytest.mark.parametrize("name", sorted(OTHER_CORPUS))
def test_every_corpus_stream_decodes(name):
    with qevm.open(unpack(OTHER_CORPUS[name])) as mig:
        assert not mig.errors and mig.has_description and mig.footers
        devices = mig.devices()
        assert devices
        for dev in devices:
            assert dev.state is not None, dev.name
            assert dev.state.size == dev.record.body_size, dev.name
