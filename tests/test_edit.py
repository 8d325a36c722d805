"""``qevm edit``: device fields and RAM changed, everything else written back as it was."""

from __future__ import annotations

import os
import re
import struct

import pytest
from conftest import LIVE, STREAMS, all_stream_paths, unpack

import qevm
from qevm.cli import main
from qevm.edit import resolve, set_field
from qevm.sections.ram.index import KIND_SCRATCH, KIND_SHIFT, KIND_ZLIB
from qevm.vmstate.desc import JsonObject, parse_json
from qevm.writer import write_stream

PATHS = all_stream_paths()
PS = 4096


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def edited(tmp_path, name: str, *sets: str, ram: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
    """(input bytes, output bytes) of ``qevm edit`` with ``--set``s and ``--write-ram``s."""
    src = unpack(PATHS[name])
    out = tmp_path / "out.mig"
    argv = ["edit", str(src), "-o", str(out), "-q"]
    for s in sets:
        argv += ["--set", s]
    for r in ram:
        argv += ["--write-ram", r]
    assert main(argv) == 0
    return src.read_bytes(), out.read_bytes()


# -- device fields -----------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["q35-11.1", "pc-devices-7.2", "s390x-7.2", "q35-mapped-ram-multifd-11.1"]
)
def test_set_rax_changes_exactly_its_bytes(name, tmp_path):
    with qevm.open(unpack(PATHS[name])) as mig:
        regs = mig.device("cpu", 0).state.field("env.regs")
        at = regs.offset  # element 0 of the u64 array
    old, new = edited(tmp_path, name, "cpu#0:env.regs[0]=0x1234abcd")
    want = bytearray(old)
    want[at : at + 8] = struct.pack(">Q", 0x1234ABCD)
    assert new == bytes(want)
    with qevm.open(tmp_path / "out.mig") as mig:
        assert mig.device("cpu", 0).state.get("env.regs")[0] == 0x1234ABCD


def test_second_cpu_struct_element_and_device_name_with_colons(tmp_path):
    name = "linux-x86-pc-smp2-qemu111"
    if name not in PATHS:
        name = "pc-devices-7.2"
    with qevm.open(unpack(PATHS[name])) as mig:
        cpus = sorted(d.instance_id for d in mig.devices("cpu"))
        inst = cpus[-1]
        seg = mig.device("cpu", inst).state.values("env.segs")[1]
        base_at = seg.field("base").offset
        ide = [d for d in mig.devices() if d.name.endswith("/ide")][0]
        bm = resolve(mig, f"{ide.name}:bmdma[1]/cmd")[0]
        cmd_at = bm.target.fv.offset
    old, new = edited(
        tmp_path,
        name,
        f"cpu#{inst}:env.segs[1]/base=0xffffffff81000000",
        f"{ide.name}:bmdma[1]/cmd=0x5",
    )
    want = bytearray(old)
    want[base_at : base_at + 8] = struct.pack(">Q", 0xFFFFFFFF81000000)
    want[cmd_at : cmd_at + 1] = b"\x05"
    assert new == bytes(want)


def test_subsection_by_full_and_short_name(tmp_path):
    with qevm.open(unpack(PATHS["q35-11.1"])) as mig:
        cpu = mig.device("cpu").state
        sub = cpu.subsections[0]
        f = sub.node.fields[0]
        assert f.desc.type == "uint64"
        a = resolve(mig, f"cpu:{sub.name}/{f.desc.name}")[0]
        b = resolve(mig, f"cpu:{sub.name.rsplit('/', 1)[1]}/{f.desc.name}")[0]
        assert a.target.fv is b.target.fv is f
        set_field(mig, f"cpu:{sub.name}/{f.desc.name}", "0x8000000000000001")
        write_stream(mig, tmp_path / "out.mig")
    with qevm.open(tmp_path / "out.mig") as mig:
        got = mig.device("cpu").state.subsection(sub.name).get(f.desc.name)
    assert got == 0x8000000000000001


@pytest.mark.parametrize(
    "path,value,message",
    [
        ("cpux:env.eip", "1", "no device section 'cpux'.*close: cpu"),
        ("cpu#3:env.eip", "1", "no device section 'cpu#3'"),
        ("cpu", "1", "NAME\\[#INSTANCE\\]:FIELD"),
        ("cpu:env.regz[0]", "1", "no field 'env.regz\\[0\\]'.*close: env.regs"),
        ("cpu:env.regs", "1", "array of 16; give an element"),
        ("cpu:env.regs[16]", "1", "has 16 elements"),
        ("cpu:env.eip[1]", "1", "not an array"),
        ("cpu:env.segs[1]", "1", "is a struct; name a field"),
        ("cpu:env.regs[0]", "0x1_0000_0000_0000_0000", "does not fit in uint64"),
        ("cpu:env.regs[0]", "-1", "does not fit in uint64"),
        ("cpu:env.regs[0]", "rax", "not an integer"),
        ("cpu:env.hflags", "0x100000000", "does not fit in uint32"),
        ("cpu:env.fpregs[0]/tmp/tmp_exp", "0x10000", "does not fit in uint16"),
        ("0000:00:00.0/mch:parent_obj/config[0]", "00", "is 256 bytes; give 256 bytes"),
    ],
)
def test_bad_paths_and_values_are_refused(path, value, message, capsys, tmp_path):
    src = unpack(PATHS["q35-11.1"])
    rc, _, err = cli(capsys, "edit", src, "-o", tmp_path / "o", "--set", f"{path}={value}")
    assert rc == 2
    assert re.search(message, err), err
    assert not (tmp_path / "o").exists()


def test_value_spellings():
    with qevm.open(unpack(PATHS["q35-11.1"])) as mig:
        a20 = mig.device("cpu").state.field("env.a20_mask")
        assert a20.desc.type == "int32"
        set_field(mig, "cpu:env.a20_mask", "0xffffffff")  # the unsigned spelling
        assert a20.value == -1
        set_field(mig, "cpu:env.a20_mask", "-2")
        assert a20.value == -2
        with pytest.raises(qevm.UsageError, match="does not fit in int32"):
            set_field(mig, "cpu:env.a20_mask", "0x100000000")
        irq = mig.device("0000:00:1f.3/ich9_smb").state.field("irq_enabled")
        assert irq.desc.type == "bool"
        for text, want in (("true", 1), ("off", 0), ("1", 1)):
            set_field(mig, "0000:00:1f.3/ich9_smb:irq_enabled", text)
            assert irq.value == want
        with pytest.raises(qevm.UsageError, match="not a boolean"):
            set_field(mig, "0000:00:1f.3/ich9_smb:irq_enabled", "2")


def _diff(a, b, path=""):
    """Leaf paths where two JSON trees (pairs kept) differ."""
    if isinstance(a, JsonObject) and isinstance(b, JsonObject):
        assert [k for k, _ in a.pairs] == [k for k, _ in b.pairs], path
        out = []
        for (k, x), (_, y) in zip(a.pairs, b.pairs):
            out += _diff(x, y, f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            name = x.get("name") if isinstance(x, JsonObject) else None
            out += _diff(x, y, f"{path}[{name or i}]")
        return out
    return [] if a == b else [(path, a, b)]


def _desc_json(data: bytes) -> JsonObject:
    """The description JSON at the end of a stream (the last 0x06 whose length fits)."""
    at = len(data)
    while True:
        at = data.rindex(b"\x06", 0, at)
        length = struct.unpack(">I", data[at + 1 : at + 5])[0]
        if data[at + 5 : at + 6] == b"{" and at + 5 + length == len(data):
            return parse_json(data[at + 5 :])


def test_buffer_of_another_length_updates_the_description(tmp_path):
    """A VBUFFER (spapr's device tree blob) with its length field, and an old-style
    section's data."""
    blob = bytes(range(256)) * 2
    sets = [
        f"spapr:spapr_dtb/fdt_blob={blob.hex()}",
        f"spapr:spapr_dtb/fdt_size={len(blob)}",
        "slirp:data=00112233",
    ]
    old, new = edited(tmp_path, "ppc64-pseries-11.1", *sets)
    diffs = _diff(_desc_json(old), _desc_json(new))
    with qevm.open(unpack(PATHS["ppc64-pseries-11.1"])) as mig:
        old_blob = mig.device("spapr").state.subsection("spapr_dtb").get("fdt_blob")
        old_slirp = mig.device("slirp").state.get("data")
    assert sorted(diffs) == [
        ("/devices[slirp]/fields[data]/size", len(old_slirp), 4),
        ("/devices[slirp]/size", len(old_slirp), 4),
        ("/devices[spapr]/subsections[1]/fields[fdt_blob]/size", len(old_blob), len(blob)),
    ]
    with qevm.open(tmp_path / "out.mig") as mig:
        dtb = mig.device("spapr").state.subsection("spapr_dtb")
        assert dtb.get("fdt_blob") == blob and dtb.get("fdt_size") == len(blob)
        assert mig.device("slirp").state.get("data") == bytes.fromhex("00112233")
    grown = (len(blob) - len(old_blob)) + (4 - len(old_slirp))
    with qevm.open(unpack(PATHS["ppc64-pseries-11.1"])) as a, qevm.open(tmp_path / "out.mig") as b:
        text_grown = b.records[-1].length - a.records[-1].length
    assert len(new) == len(old) + grown + text_grown


def test_buffer_in_a_struct_updates_the_struct_size(tmp_path):
    """A variable buffer in a struct element: the struct's size follows."""
    src = tmp_path / "in.mig"
    fields = [_elem("s", "", 3)]
    src.write_bytes(_described_stream(fields, struct.pack(">I", 3) + b"abc"))
    with qevm.open(src) as mig:
        set_field(mig, "d:s/b", "0102030405")
        set_field(mig, "d:s/n", "5")
        write_stream(mig, tmp_path / "out.mig")
    want = _described_stream([_elem("s", "", 5)], struct.pack(">I", 5) + bytes(range(1, 6)))
    assert (tmp_path / "out.mig").read_bytes() == want


def _described_stream(fields: list[str], body: bytes) -> bytes:
    """A stream with one device section ``d`` and its description, built by hand."""
    out = struct.pack(">II", 0x5145564D, 3)
    out += b"\x04" + struct.pack(">I", 0) + b"\x01d" + struct.pack(">II", 0, 1)
    out += body + b"\x7e" + struct.pack(">I", 0) + b"\x00"
    text = (
        '{"page_size": 4096, "devices": [{"name": "d", "instance_id": 0, "vmsd_name": "d", '
        f'"version": 1, "fields": [{", ".join(fields)}]}}]}}'
    ).encode()
    return out + b"\x06" + struct.pack(">I", len(text)) + text


def _elem(name: str, key: str, size: int) -> str:
    """A struct of a uint32 ``n`` and a buffer ``b`` of ``n`` bytes (a VMSTATE_VBUFFER_UINT32)."""
    return (
        f'{{"name": "{name}", {key}"type": "struct", "struct": {{"vmsd_name": "e", '
        f'"version": 1, "fields": [{{"name": "n", "type": "uint32", "size": 4}}, '
        f'{{"name": "b", "type": "buffer", "size": {size}}}]}}, '
        f'"size": {size + 4}}}'
    )


def _vbuf(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def test_size_changes_where_the_description_has_one_entry_per_element(tmp_path):
    """A compressed array describes its elements once: their sizes cannot change.
    Elements described one by one (index entries) can."""
    src = tmp_path / "in.mig"
    fields = [_elem("arr", '"array_len": 2, ', 4), _elem("lst", '"index": 0, ', 2)]
    body = _vbuf(b"AAAA") + _vbuf(b"BBBB") + _vbuf(b"CC") + _vbuf(b"DDD")
    src.write_bytes(_described_stream([*fields, _elem("lst", "", 3)], body))
    with qevm.open(src) as mig:
        with pytest.raises(qevm.UsageError, match="give 4 bytes"):
            set_field(mig, "d:arr[1]/b", "00")
        set_field(mig, "d:arr[1]/b", "31323334")
        set_field(mig, "d:lst[1]/b", "4546474849")
        set_field(mig, "d:lst[1]/n", "5")
        write_stream(mig, tmp_path / "out.mig")
    body = _vbuf(b"AAAA") + _vbuf(b"1234") + _vbuf(b"CC") + _vbuf(b"EFGHI")
    want = _described_stream([*fields, _elem("lst", "", 5)], body)
    assert (tmp_path / "out.mig").read_bytes() == want


# -- RAM ---------------------------------------------------------------------------------
def _block_bytes(path, block: str) -> bytes:
    with qevm.open(path, index_ram=True, decode_devices=False) as mig:
        b = next(x for x in mig.ram_blocks if x.name == block)
        return mig.page_index.read(block, 0, b.used_length)


def _records(path) -> dict[str, dict[str, int]]:
    with qevm.open(path, decode_devices=False) as mig:
        return {b.name: dict(b.records) for b in mig.ram_blocks}


def test_write_ram_into_zero_pages_across_a_page_boundary(tmp_path):
    data = os.urandom(0x2020)
    (tmp_path / "data").write_bytes(data)
    name = "q35-11.1"
    src = unpack(PATHS[name])
    before = _block_bytes(src, "pc.ram")
    assert before[0x100000:0x104000] == bytes(0x4000)  # zero pages in the input
    _, new = edited(tmp_path, name, ram=(f"pc.ram:0x100ff0=@{tmp_path / 'data'}",))
    out = tmp_path / "out.mig"
    after = _block_bytes(out, "pc.ram")
    want = bytearray(before)
    want[0x100FF0 : 0x100FF0 + len(data)] = data
    assert after == bytes(want)
    r0, r1 = _records(src)["pc.ram"], _records(out)["pc.ram"]
    assert (r1["zero"], r1["page"]) == (r0["zero"] - 4, r0["page"] + 4)
    # four ZERO records (9 bytes, CONTINUE) became PAGE records (8 + 4096)
    assert len(new) == src.stat().st_size + 4 * (4096 - 1)


@pytest.mark.parametrize("name,kind", [("xbzrle-111", KIND_SCRATCH), ("compress-72", KIND_ZLIB)])
def test_write_ram_replaces_the_last_record_of_a_page(name, kind, tmp_path):
    """The page's last record is an XBZRLE delta (or a zlib page): it becomes a PAGE
    record holding the old content with the new bytes in it."""
    src = unpack(LIVE[name])
    with qevm.open(src, index_ram=True, decode_devices=False) as mig:
        page = next(
            first + i
            for first, codes in mig.page_index.loc["pc.ram"].items()
            for i, c in enumerate(codes.tolist())
            if c >> KIND_SHIFT == kind
        )
        before = mig.page_index.read("pc.ram", 0, 256 << 20)
    off = page * PS + 100
    _, new = edited(tmp_path, name, ram=(f"pc.ram:{off:#x}=00112233445566778899",))
    out = tmp_path / "out.mig"
    want = bytearray(before)
    want[off : off + 10] = bytes.fromhex("00112233445566778899")
    assert _block_bytes(out, "pc.ram") == bytes(want)
    r0, r1 = _records(src)["pc.ram"], _records(out)["pc.ram"]
    key = "xbzrle" if kind == KIND_SCRATCH else "zlib"
    assert r1[key] == r0[key] - 1 and r1["page"] == r0["page"] + 1
    assert r1["zero"] == r0["zero"]


def _synthetic(pages: list[tuple[str, int, bytes]]) -> bytes:
    """A stream built by hand: pc.ram of 4 pages, some records, no devices."""
    name = b"pc.ram"
    out = struct.pack(">II", 0x5145564D, 3)
    out += b"\x07" + struct.pack(">I", 13) + b"pc-i440fx-7.2"
    out += b"\x01" + struct.pack(">I", 0) + b"\x03ram" + struct.pack(">II", 0, 4)
    out += struct.pack(">Q", 4 * PS | 0x04) + bytes([len(name)]) + name
    out += struct.pack(">Q", 4 * PS) + struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", 0)
    out += b"\x02" + struct.pack(">I", 0)
    for kind, page, data in pages:
        flags = {"zero": 0x02, "page": 0x08}[kind]
        out += struct.pack(">Q", page * PS | flags | (0x20 if out.count(name) > 1 else 0))
        if out.count(name) == 1:
            out += bytes([len(name)]) + name
        out += data
    out += struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", 0)
    out += b"\x03" + struct.pack(">I", 0) + struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", 0)
    return out + b"\x00"


def test_write_ram_adds_pages_the_stream_never_sent(tmp_path):
    p0 = bytes(range(256)) * 16
    src = tmp_path / "in.mig"
    src.write_bytes(_synthetic([("page", 0, p0), ("zero", 1, b"\x00")]))
    with qevm.open(src, index_ram=True) as mig:
        assert mig.missing_pages() == {"pc.ram": 2}
    out = tmp_path / "out.mig"
    # page 1 (a ZERO record) partly, page 2 (never sent) wholly, page 3 (never sent) partly
    patch = b"\xaa" * (PS + 0x20)
    (tmp_path / "d").write_bytes(patch)
    assert (
        main(
            [
                "edit",
                str(src),
                "-o",
                str(out),
                "-q",
                "--write-ram",
                f"pc.ram:0x1ff0=@{tmp_path / 'd'}",
                "--write-ram",
                "pc.ram:0x3000=01",
            ]
        )
        == 0
    )
    page1 = bytes(0xFF0) + b"\xaa" * 0x10
    page2 = b"\xaa" * PS
    page3 = b"\x01" + b"\xaa" * 0xF + bytes(PS - 0x10)  # both writes reach it; the later wins
    name = b"\x06pc.ram"
    want = src.read_bytes()
    part_zero = struct.pack(">Q", 1 * PS | 0x22) + b"\x00"
    assert want.count(part_zero) == 1
    want = want.replace(part_zero, struct.pack(">Q", 1 * PS | 0x28) + page1)
    end_eos = b"\x03" + struct.pack(">I", 0) + struct.pack(">Q", 0x10)
    added = struct.pack(">Q", 2 * PS | 0x08) + name + page2
    added += struct.pack(">Q", 3 * PS | 0x28) + page3
    want = want.replace(end_eos, b"\x03" + struct.pack(">I", 0) + added + struct.pack(">Q", 0x10))
    assert out.read_bytes() == want


def test_write_ram_into_mapped_ram_sets_slots_and_bitmap(tmp_path):
    name = (
        "q35-mapped-ram-11.1" if "q35-mapped-ram-11.1" in STREAMS else "q35-mapped-ram-multifd-11.1"
    )
    src = unpack(PATHS[name])
    with qevm.open(src, index_ram=True, decode_devices=False) as mig:
        pc = next(b for b in mig.ram_blocks if b.name == "pc.ram")
        m = pc.mapped
        bitmap = bytes(mig.source.read_at(m.bitmap_offset, pc.used_length // PS // 8))
    bits = int.from_bytes(bitmap, "little")
    clear = next(p for p in range(0x200, 0x8000) if not bits >> p & 1)
    used = next(p for p in range(0x200, 0x8000) if bits >> p & 1)
    _, new = edited(
        tmp_path, name, ram=(f"pc.ram:{clear * PS:#x}=c0ffee", f"pc.ram:{used * PS + 8:#x}=beef")
    )
    old = src.read_bytes()
    want = bytearray(old)
    want[m.bitmap_offset + clear // 8] |= 1 << (clear % 8)
    slot = m.pages_offset + clear * PS
    want[slot : slot + 3] = bytes.fromhex("c0ffee")
    slot = m.pages_offset + used * PS + 8
    want[slot : slot + 2] = bytes.fromhex("beef")
    assert new == bytes(want)


@pytest.mark.parametrize(
    "name,spec,message",
    [
        ("multifd-111", "pc.ram:0=00", "multifd"),
        ("q35-ignore-shared-7.2", "m0:0=00", "not in the stream"),
        ("q35-11.1", "pc.ramx:0=00", "no RAM block 'pc.ramx'.*pc.ram"),
        ("q35-11.1", "pc.ram:0x7fffffe=000000", "do not fit"),
        ("q35-11.1", "pc.ram=00", "BLOCK:OFFSET"),
        ("q35-11.1", "pc.ram:0=@/nonexistent/file", "No such file"),
        ("q35-11.1", "pc.ram:0=xyz", "neither @FILE nor hex"),
    ],
)
def test_bad_ram_writes_are_refused(name, spec, message, capsys, tmp_path):
    rc, _, err = cli(capsys, "edit", unpack(PATHS[name]), "-o", tmp_path / "o", "--write-ram", spec)
    assert rc == 2 and re.search(message, err), err
    assert not (tmp_path / "o").exists()


def test_edit_cli_reports_and_without_edits_copies(capsys, tmp_path):
    src = unpack(PATHS["q35-11.1"])
    rc, _, err = cli(capsys, "edit", src, "-o", tmp_path / "same.mig")
    assert rc == 0 and "wrote" in err
    assert (tmp_path / "same.mig").read_bytes() == src.read_bytes()
    rc, _, err = cli(capsys, "edit", src, "-o", tmp_path / "e.mig", "--set", "cpu:env.eip=0x10")
    assert rc == 0
    assert "cpu#0:env.eip" in err and "-> 0x10" in err


def test_packaged_length_follows_an_edit_inside_it(tmp_path):
    """Postcopy streams carry device state in a PACKAGED blob: its length is
    written anew (the description comes from another stream of the same build)."""
    from qevm.writer import StreamWriter, open_for_writing

    src = unpack(LIVE["postcopy-paused-111"])
    desc = unpack(LIVE["xbzrle-111"])
    out = tmp_path / "out.mig"
    # queue.data is a fixed buffer QEMU would not load at another length (write_stream
    # refuses it); the writer itself is what is tested, so it is called directly
    with open_for_writing(src, desc=desc) as mig:
        set_field(mig, "ps2kbd:parent_obj/queue.data", "ab" * 300)
        with pytest.raises(qevm.UsageError, match="fixed-size buffer of 256 bytes"):
            write_stream(mig, out)
        with open(out, "wb") as f:
            StreamWriter(mig).write(f)
    with qevm.open(src) as a, qevm.open(out) as b:
        pa = next(c for c in a.commands() if c.name == "PACKAGED")
        pb = next(c for c in b.commands() if c.name == "PACKAGED")
        assert pb.info["length"] == pa.info["length"] + 44
        ka = next(d for d in a.devices() if d.name == "ps2kbd").record
        kb = next(d for d in b.devices() if d.name == "ps2kbd").record
        old, new = src.read_bytes(), out.read_bytes()
    assert old[: pa.offset + 5] == new[: pb.offset + 5]  # up to the length
    assert old[pa.offset + 9 : ka.body_offset] == new[pb.offset + 9 : kb.body_offset]
    assert new[kb.body_offset : kb.body_end].count(b"\xab" * 300) == 1
    assert old[ka.body_end :] == new[kb.body_end :]


def test_old_style_section_is_edited_through_its_description(tmp_path):
    """s390's TOD clock section is old-style: its handler reads it, the
    description calls it ``data``; the edit goes through the latter."""
    name = "s390x-11.1"
    with qevm.open(unpack(PATHS[name])) as mig:
        dev = mig.device("todclock")
        at = dev.record.body_offset
        assert dev.state.field("data").desc.size == 10
    old, new = edited(tmp_path, name, "todclock:data=01" + "22" * 9)
    want = bytearray(old)
    want[at : at + 10] = bytes.fromhex("01" + "22" * 9)
    assert new == bytes(want)
    with qevm.open(tmp_path / "out.mig") as mig:
        rec = mig.device("todclock").record
        assert rec.content == {"present": True, "high": 0x22, "low": 0x2222222222222222}


def test_size_change_with_a_borrowed_description_is_refused(capsys, tmp_path):
    src = unpack(PATHS["q35-11.1"])
    rc, _, err = cli(
        capsys,
        "edit",
        src,
        "-o",
        tmp_path / "o",
        "--desc",
        src,
        "--set",
        "ps2kbd:parent_obj/queue.data=00",
    )
    assert rc == 2 and "the stream's own description" in err


def test_device_without_a_description_cannot_be_edited(capsys, tmp_path):
    src = unpack(LIVE["postcopy-paused-111"])
    rc, _, err = cli(capsys, "edit", src, "-o", tmp_path / "o", "--set", "cpu:env.eip=0")
    assert rc == 2 and "no decoded state" in err and "--desc" in err


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_one_integer_of_every_device_is_settable(name, tmp_path):
    """Every device by its name and instance, its first scalar integer field by
    its name: each changes exactly the bytes the field occupies."""
    from qevm.vmstate.types import IntType, field_type

    src = unpack(STREAMS[name])
    patches: list[tuple[int, bytes]] = []
    sets: list[tuple[str, int]] = []
    with qevm.open(src) as mig:
        for dev in mig.devices():
            if dev.state is None:
                continue
            for fv in dev.state.fields:
                t = field_type(fv.desc)
                if fv.desc.count == 1 and isinstance(t, IntType) and t.width > 1:
                    new = fv.value ^ 1
                    sets.append((f"{dev.name}#{dev.instance_id}:{fv.desc.name}", new))
                    patches.append((fv.offset, struct.pack(">" + t.code, new)))
                    break
        if not sets:
            pytest.skip("no description")
        for path, value in sets:
            set_field(mig, path, str(value))
        write_stream(mig, tmp_path / "out.mig")
    want = bytearray(src.read_bytes())
    for at, data in patches:
        want[at : at + len(data)] = data
    assert (tmp_path / "out.mig").read_bytes() == bytes(want)
