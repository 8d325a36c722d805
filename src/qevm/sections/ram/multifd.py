"""Extra migration connections: multifd channels and the postcopy-preempt channel.

A live migration with multifd sends RAM pages on extra connections (QEMU's
multifd.c / multifd-nocomp.c / multifd-zlib.c / multifd-zstd.c).  Each starts
with a 64-byte handshake (magic 0x11223344, version 1, source UUID, channel
id), then packets: a header with the RAM block name and page offsets (normal
pages first, then zero pages; its size is fixed by the page count of a 512 KiB
packet), then the payload of the normal pages, raw or compressed (one zlib or
zstd stream per channel, flushed at each packet).

Pages of one round of RAM are sent once, so order only matters across rounds:
a packet belongs to the round counted by the SYNC packets before it, a
main-channel record to the round counted by the MULTIFD_FLUSH records (or, in
the legacy per-section mode, the EOS records) before it; the latest round wins.

The postcopy-preempt channel carries bare RAM records (no section headers).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...errors import FormatError, TruncatedError, UnsupportedError
from ...wire import Reader

if TYPE_CHECKING:
    from ...source.base import Source
    from .records import RamState

MULTIFD_MAGIC = 0x11223344
MULTIFD_VERSION = 1
#: Bytes of RAM one multifd packet carries at most.
PACKET_SIZE = 512 * 1024

FLAG_SYNC = 1 << 0
FLAG_COMPRESSION_MASK = 0x1F << 1
FLAG_DEVICE_STATE = 32 << 1
COMPRESSION = {
    0: "none",
    1 << 1: "zlib",
    2 << 1: "zstd",
    4 << 1: "qpl",
    8 << 1: "uadk",
    16 << 1: "qatzip",
}

INIT = struct.Struct(">II16sB7s32s")
RAM_HEADER = struct.Struct(">IIIIIIQII24s256s")
DEVICE_HEADER = struct.Struct(">III256sII")


@dataclass
class ChannelSummary:
    """What one extra connection held."""

    name: str
    kind: str
    channel_id: int | None = None
    uuid: str | None = None
    packets: int = 0
    syncs: int = 0
    pages: int = 0
    zero_pages: int = 0
    compression: str = "none"
    device_state: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [])}


class _Inflater:
    """One channel's compression stream (packets are flushed chunks of it)."""

    def __init__(self, kind: str, offset: int) -> None:
        self.kind = kind
        if kind == "zlib":
            self._z: Any = zlib.decompressobj()
        elif kind == "zstd":
            import zstandard

            self._z = zstandard.ZstdDecompressor().decompressobj()
        else:
            raise UnsupportedError(
                f"multifd compression {kind!r} (hardware accelerated) is not supported",
                offset=offset,
            )

    def feed(self, data: bytes, want: int, offset: int) -> bytes:
        try:
            out = self._z.decompress(data)
        except Exception as e:  # zlib.error, zstandard.ZstdError
            raise FormatError(
                f"multifd {self.kind} payload is corrupt: {e}", offset=offset
            ) from None
        if len(out) != want:
            raise FormatError(
                f"multifd {self.kind} payload inflates to {len(out)} bytes",
                offset=offset,
                expected=f"{want} bytes",
            )
        return out


def channel_kind(source: Source) -> str:
    """``multifd`` or ``postcopy-preempt``, from the first bytes."""
    head = bytes(source.read_at(0, 4)) if source.seekable else b""
    if not head:
        raise TruncatedError("channel file is empty", offset=0)
    return (
        "multifd"
        if struct.unpack(">I", head.ljust(4, b"\0"))[0] == MULTIFD_MAGIC
        else "postcopy-preempt"
    )


def apply_channel(
    state: RamState, source: Source, src_no: int, kind: str | None = None
) -> ChannelSummary:
    """Read an extra connection's pages into the RAM state's consumer.

    ``kind`` (``multifd`` or ``postcopy-preempt``) is found from the first
    bytes when not given (which needs a seekable source).
    """
    kind = kind or channel_kind(source)
    if kind == "postcopy-preempt":
        return _apply_preempt(state, source, src_no)
    return _apply_multifd(state, source, src_no)


def _apply_preempt(state: RamState, source: Source, src_no: int) -> ChannelSummary:
    summary = ChannelSummary(source.name, "postcopy-preempt")
    r = Reader(source, 0)
    saved = state.last
    state.last = None  # the preempt channel has its own "last block"
    state.src = src_no  # page offsets are in this channel's file, not the main stream
    try:
        while not r.at_end():
            # the connection may close after the last page asked for, with no EOS
            stats = state.read_section(r, eof_ok=True)
            summary.packets += 1
            summary.pages += stats.records.get("page", 0)
            summary.zero_pages += stats.records.get("zero", 0)
    finally:
        state.last = saved
        state.src = 0
    return summary


@dataclass
class Handshake:
    """MultiFDInit_t, the 64 bytes a multifd channel starts with."""

    at: int
    magic: int
    version: int
    uuid: bytes
    #: The channel number.
    id: int


@dataclass
class PacketHeader:
    """A multifd RAM packet's header (MultiFDPacket_t) up to its page offsets."""

    at: int
    flags: int
    pages_alloc: int
    normal_pages: int
    next_packet_size: int
    packet_num: int
    zero_pages: int
    ramblock: bytes

    @property
    def block_name(self) -> str:
        return self.ramblock.split(b"\0")[0].decode("latin-1")


@dataclass
class DeviceStateHeader:
    """A multifd device state packet's header (MultiFDPacketDeviceState_t, 10.0+)."""

    at: int
    flags: int
    idstr: bytes
    instance_id: int
    next_packet_size: int

    @property
    def device_name(self) -> str:
        return self.idstr.split(b"\0")[0].decode("latin-1")


@dataclass
class Packet:
    """One packet of a multifd channel: its header, page offsets and payload's extent."""

    header: PacketHeader | DeviceStateHeader
    #: The whole offset[] array as sent (normal pages, then zero pages, then
    #: entries QEMU left from earlier packets); empty for device state.
    offsets: tuple[int, ...]
    payload_offset: int
    payload_length: int

    @property
    def is_device_state(self) -> bool:
        return isinstance(self.header, DeviceStateHeader)


def read_handshake(r: Reader) -> Handshake:
    """The MultiFDInit_t a channel starts with, checked."""
    at = r.offset
    magic, version, uuid, chan_id, _, _ = INIT.unpack(r.bytes(INIT.size))
    if magic != MULTIFD_MAGIC or version != MULTIFD_VERSION:
        raise FormatError(
            f"multifd handshake magic {magic:#x} version {version}",
            offset=at,
            expected="0x11223344 version 1",
        )
    return Handshake(at, magic, version, uuid, chan_id)


def read_packets(r: Reader, page_size: int) -> Iterator[Packet]:
    """The packets after the handshake, to the end of the channel.

    A RAM packet's offset array has room for a full packet's pages
    (512 KiB / page size), whatever it carries.  The payload is left for the
    caller to read (or skip) before the next packet is read.
    """
    page_count = PACKET_SIZE // page_size
    while not r.at_end():
        off = r.offset
        r.ensure(12)
        magic, version, flags = struct.unpack_from(">III", r.buf, r.pos)
        if magic != MULTIFD_MAGIC or version != MULTIFD_VERSION:
            raise FormatError(
                f"multifd packet magic {magic:#x} version {version}",
                offset=off,
                expected="0x11223344 version 1",
            )
        if flags & FLAG_DEVICE_STATE:
            _, _, _, idstr, instance, size = DEVICE_HEADER.unpack(r.bytes(DEVICE_HEADER.size))
            dev = DeviceStateHeader(off, flags, idstr, instance, size)
            yield Packet(dev, (), r.offset, size)
            continue
        head = r.bytes(RAM_HEADER.size + 8 * page_count)
        _, _, _, alloc, normal, next_size, num, zero, _, _, name = RAM_HEADER.unpack_from(head)
        hdr = PacketHeader(off, flags, alloc, normal, next_size, num, zero, name)
        if alloc > page_count or normal > alloc or zero > alloc - normal:
            raise FormatError(
                f"multifd packet with {alloc} slots, {normal} pages, {zero} zero pages",
                offset=off,
                expected=f"at most {page_count} pages",
            )
        offsets = struct.unpack_from(f">{page_count}Q", head, RAM_HEADER.size)
        # Only packets with pages carry a payload, whatever next_packet_size
        # says: QEMU reads one only for them, and 7.2 leaves the previous
        # packet's size in its empty SYNC packets.
        has_pages = normal or zero
        yield Packet(hdr, offsets, r.offset, next_size if has_pages else 0)


def packet_page_size(r: Reader) -> int:
    """The target page size, from the first packet after the handshake.

    For a channel read when nothing else stated the page size (a main
    stream without page records or description yet).  A packet's header
    holds an offset slot per page of 512 KiB: ``pages_alloc`` says how many
    (SYNC packets since 9.0 leave it 0: then the size that puts the next
    packet, or the end of the channel, right after the header is the one).
    """
    off = r.offset
    head = r.peek(16)
    alloc = struct.unpack_from(">I", head, 12)[0] if len(head) == 16 else 0
    if alloc:
        ps = PACKET_SIZE // alloc
        if PACKET_SIZE % alloc or ps & (ps - 1) or ps < 1024:
            raise FormatError(
                f"multifd packet with {alloc} page slots",
                offset=off + 12,
                field="pages_alloc",
                expected="512 KiB divided by a page size",
            )
        return ps
    nxt = struct.pack(">II", MULTIFD_MAGIC, MULTIFD_VERSION)
    for ps in (65536, 32768, 16384, 8192, 4096, 2048, 1024):  # shortest header first
        end = off + RAM_HEADER.size + 8 * (PACKET_SIZE // ps)
        head = r.peek_at(end - 1, 9)
        if head[1:] == nxt or len(head) == 1:
            return ps
    raise FormatError(
        "cannot tell the target page size from the multifd packets",
        offset=off,
        expected="a packet header of 320 + 8 * (512 KiB / page size) bytes",
    )


def _apply_multifd(state: RamState, source: Source, src_no: int) -> ChannelSummary:
    r = Reader(source, 0)
    init = read_handshake(r)
    summary = ChannelSummary(source.name, "multifd", init.id, init.uuid.hex())
    if r.at_end():
        return summary
    ps = state.page_size or packet_page_size(r)
    consumer = state.consumer
    inflater: _Inflater | None = None
    epoch = 0
    for pkt in read_packets(r, ps):
        summary.packets += 1
        hdr = pkt.header
        if isinstance(hdr, DeviceStateHeader):
            r.skip(pkt.payload_length)
            summary.device_state.append(
                {
                    "idstr": hdr.device_name,
                    "instance_id": hdr.instance_id,
                    "bytes": pkt.payload_length,
                }
            )
            continue
        comp = COMPRESSION.get(hdr.flags & FLAG_COMPRESSION_MASK)
        if comp is None:
            raise FormatError(f"multifd flags {hdr.flags:#x}", offset=hdr.at + 8)
        normal, zero = hdr.normal_pages, hdr.zero_pages
        # 7.2 sets the compression flag only on packets with pages.
        if normal or zero:
            summary.compression = comp
            bname = hdr.block_name
            block = state.blocks.get(bname)
            if block is None:
                raise FormatError(f"multifd packet for unknown RAM block {bname!r}", offset=hdr.at)
            offs = pkt.offsets[: normal + zero]
            for a in offs:
                if a > block.used_length - ps or a % ps:
                    raise FormatError(
                        f"multifd page offset {a:#x} is outside block {bname!r}", offset=hdr.at
                    )
            payload_off = pkt.payload_offset
            if normal and comp == "none":
                if pkt.payload_length != normal * ps:
                    raise FormatError(
                        f"multifd payload of {pkt.payload_length} bytes for {normal} pages",
                        offset=hdr.at,
                        expected=f"{normal * ps}",
                    )
                r.ensure(pkt.payload_length)
                for i, a in enumerate(offs[:normal]):
                    consumer.channel_page(block, a, src_no, payload_off + i * ps, epoch)
                r.skip(pkt.payload_length)
            elif normal:
                if inflater is None:
                    inflater = _Inflater(comp, hdr.at)
                data = inflater.feed(r.bytes(pkt.payload_length), normal * ps, payload_off)
                for i, a in enumerate(offs[:normal]):
                    consumer.channel_computed(block, a, data[i * ps : (i + 1) * ps], epoch)
            for a in offs[normal:]:
                consumer.channel_zero(block, a, epoch)
            if normal:
                block.records["page"] += normal
            if zero:
                block.records["zero"] += zero
            summary.pages += normal
            summary.zero_pages += zero
        if hdr.flags & FLAG_SYNC:
            epoch += 1
            summary.syncs += 1
    return summary
