"""Messages the destination sends back on the main connection (the return path).

QEMU opens the return path with ``return-path``, ``postcopy-ram`` or
``switchover-ack`` (migration.c, ``migrate_send_rp_message``): each message is
``u16 type, u16 length, length bytes``, big-endian.

=====  ===============  ==========================================================
type   name             payload
=====  ===============  ==========================================================
1      SHUT             u32: 0, or non-zero when the destination failed
2      PONG             u32: the value of the PING it answers
3      REQ_PAGES_ID     u64 start, u32 length, u8 n, n bytes RAMBlock name
4      REQ_PAGES        u64 start, u32 length (same block as the previous request)
5      RECV_BITMAP      u8 n, RAMBlock name; then (postcopy recovery) the bitmap
                        outside the message: u64 size, size bytes, u64 0x0101...
6      RESUME_ACK       u32
7      SWITCHOVER_ACK   none
=====  ===============  ==========================================================
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import FormatError, TruncatedError

SHUT = 1
PONG = 2
REQ_PAGES_ID = 3
REQ_PAGES = 4
RECV_BITMAP = 5
RESUME_ACK = 6
SWITCHOVER_ACK = 7

NAMES = {
    SHUT: "SHUT",
    PONG: "PONG",
    REQ_PAGES_ID: "REQ_PAGES_ID",
    REQ_PAGES: "REQ_PAGES",
    RECV_BITMAP: "RECV_BITMAP",
    RESUME_ACK: "RESUME_ACK",
    SWITCHOVER_ACK: "SWITCHOVER_ACK",
}
#: Fixed payload lengths (QEMU's rp_cmd_args); others are variable.
LENGTHS = {SHUT: 4, PONG: 4, REQ_PAGES: 12, RESUME_ACK: 4, SWITCHOVER_ACK: 0}
#: QEMU's RAMBLOCK_RECV_BITMAP_ENDING, after a received-pages bitmap.
BITMAP_ENDING = 0x0123456789ABCDEF
#: QEMU reads messages into a 512-byte buffer.
MAX_PAYLOAD = 512

_HEAD = struct.Struct(">HH")


@dataclass
class Message:
    """One return-path message."""

    offset: int
    type: int
    payload: bytes
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return NAMES.get(self.type, f"MIG_RP_MSG_{self.type:#x}")

    def to_json(self) -> dict[str, Any]:
        return {"message": self.name, "offset": self.offset, **self.info}


def _decode(msg: Message, last_block: str | None) -> None:
    p, t, info = msg.payload, msg.type, msg.info
    want = LENGTHS.get(t)
    if want is not None and len(p) != want:
        raise FormatError(
            f"return-path {msg.name} with {len(p)} bytes",
            offset=msg.offset + 2,
            field="length",
            expected=f"{want}",
        )
    if t in (SHUT, PONG, RESUME_ACK):
        info["value"] = struct.unpack(">I", p)[0]
    elif t in (REQ_PAGES, REQ_PAGES_ID):
        if len(p) < 12:
            raise FormatError(
                f"return-path {msg.name} with {len(p)} bytes",
                offset=msg.offset + 2,
                expected="at least 12",
            )
        start, length = struct.unpack_from(">QI", p)
        if t == REQ_PAGES_ID:
            n = p[12] if len(p) > 12 else -1
            if len(p) != 13 + n:
                raise FormatError(
                    f"REQ_PAGES_ID of {len(p)} bytes with a {n}-byte block name",
                    offset=msg.offset + 2,
                    expected=f"{13 + max(n, 0)} bytes",
                )
            info["block"] = p[13:].decode("latin-1")
        else:
            info["block"] = last_block
        info["start"] = start
        info["length"] = length
    elif t == RECV_BITMAP:
        if not p or len(p) != 1 + p[0]:
            raise FormatError("RECV_BITMAP without a block name", offset=msg.offset + 4)
        info["block"] = p[1:].decode("latin-1")


class ReturnPathReader:
    """Reads messages from a byte source that returns what it has (``read_some``)."""

    def __init__(self, read_some: Callable[[int], bytes]) -> None:
        self._read_some = read_some
        self._buf = b""
        self._base = 0
        self._last_block: str | None = None

    def _take(self, n: int) -> bytes | None:
        """Exactly ``n`` bytes, or None at a clean end before the first of them."""
        while len(self._buf) < n:
            more = self._read_some(max(n - len(self._buf), 4096))
            if not more:
                if not self._buf:
                    return None
                raise TruncatedError(
                    f"the return path ends {len(self._buf)} bytes into a {n}-byte read",
                    offset=self._base,
                )
            self._buf += more
        out, self._buf = self._buf[:n], self._buf[n:]
        self._base += n
        return out

    def messages(self) -> Iterator[Message]:
        """Every message, as soon as it is complete."""
        while True:
            off = self._base
            head = self._take(_HEAD.size)
            if head is None:
                return
            t, length = _HEAD.unpack(head)
            if t == 0 or length > MAX_PAYLOAD:
                raise FormatError(
                    f"return-path message type {t:#x} of {length} bytes",
                    offset=off,
                    expected=f"a type from 1 and at most {MAX_PAYLOAD} bytes",
                )
            payload = self._take(length) if length else b""
            if payload is None:
                raise TruncatedError("the return path ends inside a message", offset=off)
            msg = Message(off, t, payload)
            _decode(msg, self._last_block)
            if t == REQ_PAGES_ID:
                self._last_block = msg.info["block"]
            elif t == RECV_BITMAP:
                self._bitmap(msg)
            yield msg

    def _bitmap(self, msg: Message) -> None:
        """The received-pages bitmap that follows a RECV_BITMAP message."""
        head = self._take(8)
        if head is None:
            raise TruncatedError("RECV_BITMAP without its bitmap", offset=self._base)
        size = struct.unpack(">Q", head)[0]
        if size > 1 << 40:
            raise FormatError(f"received-pages bitmap of {size} bytes", offset=self._base - 8)
        left = size
        while left:
            step = min(left, 1 << 20)
            if self._take(step) is None:
                raise TruncatedError("the return path ends inside a bitmap", offset=self._base)
            left -= step
        end = self._take(8)
        if end is None or struct.unpack(">Q", end)[0] != BITMAP_ENDING:
            raise FormatError(
                "received-pages bitmap without its end marker",
                offset=self._base - 8,
                expected=f"{BITMAP_ENDING:#x}",
            )
        msg.info["bitmap_bytes"] = size
