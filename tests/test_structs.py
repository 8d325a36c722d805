"""Declared fixed headers: one declaration reads, writes and locates every field.

The sizes and offsets checked here are the ones the formats' own documents
give (docs/interop/qcow2.rst, libvirt's qemu_saveimage.h, QEMU's multifd.h
and ram.c), typed in by hand, not computed by the code under test.
"""

from __future__ import annotations

import struct

import pytest
from conftest import DATA, unpack

from qevm.errors import TruncatedError
from qevm.format import MappedRamHeader, MultiFDInit, MultiFDPacket, MultiFDPacketDeviceState
from qevm.sections.ram.multifd import read_handshake, read_packets
from qevm.source.base import FileSource
from qevm.source.libvirt import VirQEMUSaveHeader
from qevm.source.qcow2.header import QCowHeader
from qevm.source.qcow2.snapshots import QCowSnapshotExtraData, QCowSnapshotHeader
from qevm.structs import CStruct, parse_fields
from qevm.wire import Reader


class Sample(
    CStruct,
    fields="""
        uint32_t magic;     /* a comment */
        uint8_t  id;        // another
        int16_t  delta;
        char     name[5];
        uint32_t words[3];
        uint64_t last;
    """,
):
    """A struct with every kind of field."""


def test_declaration_gives_offsets_and_size():
    assert Sample.size == 4 + 1 + 2 + 5 + 12 + 8
    offsets = [Sample.field_offset(f.name) for f in Sample.fields]
    assert offsets == [0, 4, 5, 7, 12, 24]


def test_read_write_round_trip():
    data = struct.pack(">IBh5s3IQ", 0xABCD, 7, -2, b"ab\0\0\0", 1, 2, 3, 1 << 60)
    s = Sample.unpack(data, at=0x100)
    assert (s.magic, s.id, s.delta, s.name, s.words, s.last) == (
        0xABCD,
        7,
        -2,
        b"ab\0\0\0",
        (1, 2, 3),
        1 << 60,
    )
    assert s.pack() == data
    assert s.offset_of("words") == 0x100 + 12
    built = Sample(magic=0xABCD, id=7, delta=-2, name=b"ab", words=(1, 2, 3), last=1 << 60)
    assert built.pack() == data  # struct pads the short name with NULs
    assert built.replace(name=b"ab\0\0\0") == s  # equality is by value, not offset
    assert s.replace(id=9).pack()[4] == 9 and s.replace(id=9).at == 0x100
    little = s.pack(byte_order="<")
    assert little[:4] == (0xABCD).to_bytes(4, "little")
    assert Sample.unpack(little, byte_order="<") == s


def test_errors_name_the_field_where_it_is():
    e = Sample.unpack(bytes(Sample.size), at=0x100).error("last", "bad last", expected="ok")
    assert (e.offset, e.field, e.expected) == (0x100 + 24, "Sample.last", "ok")
    assert str(e) == "at offset 0x118, field 'Sample.last': bad last (expected ok)"
    assert type(e).__name__ == "FormatError"
    assert type(QCowHeader().error("version", "x")).__name__ == "ContainerError"


def test_defaults_and_bad_use():
    assert Sample().pack() == bytes(Sample.size)
    with pytest.raises(TypeError, match="no field bogus"):
        Sample(bogus=1)
    with pytest.raises(ValueError, match="3 elements"):
        Sample(words=(1, 2)).pack()
    with pytest.raises(TruncatedError, match="Sample needs 32 bytes, 3 present") as e:
        Sample.unpack(b"abc", at=0x40)
    assert e.value.offset == 0x40
    with pytest.raises(ValueError, match="unknown C type"):
        parse_fields("float x;")
    with pytest.raises(ValueError, match="declared twice"):
        parse_fields("uint8_t a; uint8_t a;")


def test_read_from_a_reader(tmp_path):
    p = tmp_path / "s.bin"
    p.write_bytes(b"\xff" * 3 + Sample(magic=5, last=9).pack())
    with FileSource(p) as src:
        r = Reader(src, 3)
        s = Sample.read(r)
        assert (s.magic, s.last, s.at, r.offset) == (5, 9, 3, 3 + Sample.size)


@pytest.mark.parametrize(
    "cls,size,offsets",
    [
        # docs/interop/qcow2.rst: the header's byte ranges
        (
            QCowHeader,
            112,
            {
                "version": 4,
                "backing_file_offset": 8,
                "backing_file_size": 16,
                "cluster_bits": 20,
                "size": 24,
                "crypt_method": 32,
                "l1_size": 36,
                "l1_table_offset": 40,
                "nb_snapshots": 60,
                "snapshots_offset": 64,
                "incompatible_features": 72,
                "header_length": 100,
                "compression_type": 104,
            },
        ),
        # docs/interop/qcow2.rst: snapshot table entry, and its extra data
        (
            QCowSnapshotHeader,
            40,
            {"l1_size": 8, "id_str_size": 12, "date_sec": 16, "vm_state_size": 32},
        ),
        (QCowSnapshotExtraData, 24, {"disk_size": 8, "icount": 16}),
        # libvirt qemu_saveimage.h: 16-byte magic, five u32, unused[14]
        (VirQEMUSaveHeader, 92, {"version": 16, "data_len": 20, "format": 28, "cookieOffset": 32}),
        # QEMU multifd.c / multifd.h, ram.c
        (MultiFDInit, 64, {"uuid": 8, "id": 24}),
        (
            MultiFDPacket,
            320,
            {"flags": 8, "next_packet_size": 20, "zero_pages": 32, "ramblock": 64},
        ),
        (MultiFDPacketDeviceState, 276, {"idstr": 12, "instance_id": 268}),
        (MappedRamHeader, 28, {"page_size": 4, "bitmap_offset": 12, "pages_offset": 20}),
    ],
)
def test_declared_headers_match_their_formats(cls, size, offsets):
    assert cls.size == size
    for name, off in offsets.items():
        assert cls.field_offset(name) == off, name


@pytest.mark.parametrize("channel", sorted((DATA / "live").glob("multifd-*.ch*.bin.xz")), ids=str)
def test_multifd_channels_written_back_from_their_headers(channel):
    """Every packet re-packed from its declaration, with its payload, gives QEMU's bytes."""
    path = unpack(channel)
    data = path.read_bytes()
    out = bytearray()
    with FileSource(path) as src:
        r = Reader(src, 0)
        out += read_handshake(r).pack()
        packets = 0
        for pkt in read_packets(r, 4096):
            out += pkt.pack()
            out += data[pkt.payload_offset : pkt.payload_offset + pkt.payload_length]
            r.skip(pkt.payload_length)
            packets += 1
    assert packets > 1
    assert bytes(out) == data
