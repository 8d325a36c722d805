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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...errors import FormatError, TruncatedError, UnsupportedError
from ...format import (
    MULTIFD_COMPRESSION,
    MULTIFD_FLAG_COMPRESSION_MASK,
    MULTIFD_FLAG_DEVICE_STATE,
    MULTIFD_FLAG_SYNC,
    MULTIFD_MAGIC,
    MULTIFD_PACKET_SIZE,
    MULTIFD_VERSION,
    MultiFDInit,
    MultiFDPacket,
    MultiFDPacketDeviceState,
)
from ...wire import Reader

if TYPE_CHECKING:
    from ...source.base import Source
    from .blocks import RamBlock
    from .records import RamState


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
class Packet:
    """One packet of a multifd channel: its header, page offsets and payload's extent."""

    header: MultiFDPacket | MultiFDPacketDeviceState
    #: The whole offset[] array as sent (normal pages, zero pages, then
    #: entries QEMU left from earlier packets); empty for device state.
    offsets: tuple[int, ...]
    payload_offset: int
    payload_length: int

    @property
    def is_device_state(self) -> bool:
        return isinstance(self.header, MultiFDPacketDeviceState)

    def pack(self) -> bytes:
        """The packet up to its payload, as QEMU writes it."""
        return self.header.pack() + struct.pack(f">{len(self.offsets)}Q", *self.offsets)


def read_handshake(r: Reader) -> MultiFDInit:
    """The MultiFDInit_t a channel starts with, checked."""
    init = MultiFDInit.read(r)
    if init.magic != MULTIFD_MAGIC or init.version != MULTIFD_VERSION:
        raise FormatError(
            f"multifd handshake magic {init.magic:#x} version {init.version}",
            offset=init.at,
            expected=f"{MULTIFD_MAGIC:#x} version {MULTIFD_VERSION}",
        )
    return init


def read_packets(r: Reader, page_size: int) -> Iterator[Packet]:
    """The packets after the handshake, to the end of the channel.

    A RAM packet's offset array has room for a full packet's pages
    (MULTIFD_PACKET_SIZE / page size), whatever it carries.  The payload is
    left for the caller to read (or skip) before the next packet is read.
    """
    page_count = MULTIFD_PACKET_SIZE // page_size
    while not r.at_end():
        off = r.offset
        r.ensure(12)
        magic, version, flags = struct.unpack_from(">III", r.buf, r.pos)
        if magic != MULTIFD_MAGIC or version != MULTIFD_VERSION:
            raise FormatError(
                f"multifd packet magic {magic:#x} version {version}",
                offset=off,
                expected=f"{MULTIFD_MAGIC:#x} version {MULTIFD_VERSION}",
            )
        if flags & MULTIFD_FLAG_DEVICE_STATE:
            dev = MultiFDPacketDeviceState.read(r)
            yield Packet(dev, (), r.offset, dev.next_packet_size)
            continue
        hdr = MultiFDPacket.read(r)
        offsets = struct.unpack(f">{page_count}Q", r.bytes(8 * page_count))
        if hdr.pages_alloc > page_count or hdr.normal_pages > hdr.pages_alloc:
            raise FormatError(
                f"multifd packet with {hdr.pages_alloc} slots, {hdr.normal_pages} pages, "
                f"{hdr.zero_pages} zero pages",
                offset=off,
                expected=f"at most {page_count} pages",
            )
        if hdr.zero_pages > hdr.pages_alloc - hdr.normal_pages:
            raise hdr.error(
                "zero_pages",
                f"multifd packet with {hdr.pages_alloc} slots, {hdr.normal_pages} pages, "
                f"{hdr.zero_pages} zero pages",
                expected=f"at most {hdr.pages_alloc - hdr.normal_pages} zero pages",
            )
        # Only packets with pages carry a payload, whatever next_packet_size
        # says: QEMU reads one only for them, and 7.2 leaves the previous
        # packet's size in its empty SYNC packets.
        has_pages = hdr.normal_pages or hdr.zero_pages
        yield Packet(hdr, offsets, r.offset, hdr.next_packet_size if has_pages else 0)


def packet_page_size(r: Reader) -> int:
    """The target page size, from the first packet after the handshake.

    For a channel read when nothing else stated the page size (a main
    stream without page records or description yet).  A packet's header
    holds an offset slot per page of 512 KiB: ``pages_alloc`` says how many
    (SYNC packets since 9.0 leave it 0: then the size that puts the next
    packet, or the end of the channel, right after the header is the one).
    """
    off = r.offset
    head = r.peek(MultiFDPacket.size)
    if len(head) < MultiFDPacket.size:
        raise FormatError("multifd channel given but the page size is unknown", offset=off)
    hdr = MultiFDPacket.unpack(head, off)
    if hdr.pages_alloc:
        ps = MULTIFD_PACKET_SIZE // hdr.pages_alloc
        if MULTIFD_PACKET_SIZE % hdr.pages_alloc or ps & (ps - 1) or ps < 1024:
            raise FormatError(
                f"multifd packet with {hdr.pages_alloc} page slots",
                offset=hdr.offset_of("pages_alloc"),
                field="pages_alloc",
                expected="512 KiB divided by a page size",
            )
        return ps
    nxt = struct.pack(">II", MULTIFD_MAGIC, MULTIFD_VERSION)
    for ps in (65536, 32768, 16384, 8192, 4096, 2048, 1024):  # shortest header first
        end = off + MultiFDPacket.size + 8 * (MULTIFD_PACKET_SIZE // ps)
        head = r.peek_at(end - 1, 9)
        if head[1:] == nxt or len(head) == 1:
            return ps
    raise FormatError(
        "cannot tell the target page size from the multifd packets",
        offset=off,
        expected="a packet header of 320 + 8 * (512 KiB / page size) bytes",
    )


def checked_pages(pkt: Any, blocks: Mapping[str, RamBlock], ps: int) -> tuple[RamBlock, str]:
    """The RAM block and compression of a packet that carries pages, checked.

    The block must be known, every page offset inside it and aligned, the
    compression flag one QEMU writes, and an uncompressed payload exactly the
    normal pages.
    """
    hdr = pkt.header
    comp = MULTIFD_COMPRESSION.get(hdr.flags & MULTIFD_FLAG_COMPRESSION_MASK)
    if comp is None:
        raise hdr.error("flags", f"multifd flags {hdr.flags:#x}")
    block = blocks.get(hdr.block_name)
    if block is None:
        raise hdr.error("ramblock", f"multifd packet for unknown RAM block {hdr.block_name!r}")
    normal = hdr.normal_pages
    for a in pkt.offsets[: normal + hdr.zero_pages]:
        if a > block.used_length - ps or a % ps:
            raise FormatError(
                f"multifd page offset {a:#x} is outside block {hdr.block_name!r}", offset=hdr.at
            )
    if normal and comp == "none" and pkt.payload_length != normal * ps:
        raise hdr.error(
            "next_packet_size",
            f"multifd payload of {pkt.payload_length} bytes for {normal} pages",
            expected=f"{normal * ps}",
        )
    return block, comp


def channel_page_size(source: Source) -> int | None:
    """The target page size a multifd channel's packets are sized for.

    None for a postcopy-preempt channel (its records are framed like the main
    stream's) and for a multifd channel without packets.
    """
    if channel_kind(source) != "multifd":
        return None
    r = Reader(source, 0)
    read_handshake(r)
    return None if r.at_end() else packet_page_size(r)


def _apply_multifd(state: RamState, source: Source, src_no: int) -> ChannelSummary:
    r = Reader(source, 0)
    init = read_handshake(r)
    summary = ChannelSummary(source.name, "multifd", init.id, init.uuid.hex())
    if r.at_end():
        return summary
    if state.page_size is None:
        state.set_page_size(packet_page_size(r), r.offset)
    ps: int = state.page_size  # type: ignore[assignment]
    consumer = state.consumer
    inflater: _Inflater | None = None
    epoch = 0
    for pkt in read_packets(r, ps):
        summary.packets += 1
        hdr = pkt.header
        if isinstance(hdr, MultiFDPacketDeviceState):
            r.skip(pkt.payload_length)
            summary.device_state.append(
                {
                    "idstr": hdr.device_name,
                    "instance_id": hdr.instance_id,
                    "bytes": pkt.payload_length,
                }
            )
            continue
        normal, zero = hdr.normal_pages, hdr.zero_pages
        # 7.2 sets the compression flag only on packets with pages.
        if normal or zero:
            block, comp = checked_pages(pkt, state.blocks, ps)
            summary.compression = comp
            offs = pkt.offsets[: normal + zero]
            payload_off = pkt.payload_offset
            if normal and comp == "none":
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
        if hdr.flags & MULTIFD_FLAG_SYNC:
            epoch += 1
            summary.syncs += 1
    return summary
