"""What each connection of a migration is, told by its first bytes.

QEMU opens one TCP connection for the main stream and, depending on the
capabilities, more (migration/socket.c, channel.c):

* the main stream starts with the stream header, ``QEVM`` + version 3; the
  destination answers on the same connection when a return path is open
  (``return-path``, ``postcopy-ram``, ``switchover-ack``);
* each multifd channel starts with MultiFDInit_t, magic 0x11223344;
* the postcopy-preempt channel sends nothing until the destination asks for
  a page, then bare RAM records.  QEMU itself tells it apart only by order (it
  is opened after the main stream and every multifd channel), and so does the
  tap: a connection that stays silent once the main stream is forwarded is
  taken for it.

Before 8.0 the destination takes the first connection it accepts as the main
stream whatever it holds (later ones peek at the magic), so the tap connects
the main stream to the destination before any other.
"""

from __future__ import annotations

import struct

from ..format import MULTIFD_MAGIC

MAIN = "main"
MULTIFD = "multifd"
PREEMPT = "postcopy-preempt"
RETURN_PATH = "return-path"

#: Bytes looked at to tell a connection's role.
HEAD = 4
_STREAM_MAGIC = b"QEVM"
_MULTIFD_MAGIC = struct.pack(">I", MULTIFD_MAGIC)


def classify(head: bytes) -> str:
    """The role of a connection whose first bytes are ``head`` (at least one byte)."""
    if head.startswith(_STREAM_MAGIC):
        return MAIN
    if head.startswith(_MULTIFD_MAGIC):
        return MULTIFD
    return PREEMPT


def recording_name(role: str, channel: int, reply: bool = False) -> str:
    """The file one direction of a connection is recorded to.

    ``channel`` numbers the connections other than the main stream in the
    order the source opened them (from 1); the main stream's reply direction
    is the return path.  Replies on other connections (QEMU sends none) get a
    file of their own should they ever come.
    """
    if role == MAIN:
        base = "main" if channel == 0 else f"main-{channel}"
        if reply:
            return "return-path.bin" if channel == 0 else f"{base}.return-path.bin"
        return f"{base}.mig"
    name = f"channel-{channel}"
    return f"{name}.reply.bin" if reply else f"{name}.bin"
