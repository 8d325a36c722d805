"""QEMU_VM_COMMAND (0x08) subcommands: ``u16 cmd, u16 len, len bytes``.

The table mirrors ``mig_cmd_args`` in QEMU's savevm.c: name and the fixed
payload length the loader insists on (None = variable).  PACKAGED is special:
its 4-byte payload is the length of a nested stream that follows.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import FormatError
from .format import (
    MIG_CMD_ENABLE_COLO,
    MIG_CMD_OPEN_RETURN_PATH,
    MIG_CMD_PACKAGED,
    MIG_CMD_PING,
    MIG_CMD_POSTCOPY_ADVISE,
    MIG_CMD_POSTCOPY_LISTEN,
    MIG_CMD_POSTCOPY_RAM_DISCARD,
    MIG_CMD_POSTCOPY_RESUME,
    MIG_CMD_POSTCOPY_RUN,
    MIG_CMD_RECV_BITMAP,
    MIG_CMD_SWITCHOVER_START,
)


@dataclass(frozen=True)
class CommandSpec:
    name: str
    length: int | None
    #: Whether it talks to a live destination (return path, postcopy, COLO):
    #: a stream of a stopped VM, loaded from a file, carries none of these.
    live: bool = False


COMMANDS: dict[int, CommandSpec] = {
    MIG_CMD_OPEN_RETURN_PATH: CommandSpec("OPEN_RETURN_PATH", 0, live=True),
    MIG_CMD_PING: CommandSpec("PING", 4, live=True),
    MIG_CMD_POSTCOPY_ADVISE: CommandSpec("POSTCOPY_ADVISE", None, live=True),
    MIG_CMD_POSTCOPY_LISTEN: CommandSpec("POSTCOPY_LISTEN", 0, live=True),
    MIG_CMD_POSTCOPY_RUN: CommandSpec("POSTCOPY_RUN", 0, live=True),
    MIG_CMD_POSTCOPY_RAM_DISCARD: CommandSpec("POSTCOPY_RAM_DISCARD", None, live=True),
    MIG_CMD_PACKAGED: CommandSpec("PACKAGED", 4),
    MIG_CMD_ENABLE_COLO: CommandSpec("ENABLE_COLO", 0, live=True),
    MIG_CMD_POSTCOPY_RESUME: CommandSpec("POSTCOPY_RESUME", 0, live=True),
    MIG_CMD_RECV_BITMAP: CommandSpec("RECV_BITMAP", None, live=True),
    MIG_CMD_SWITCHOVER_START: CommandSpec("SWITCHOVER_START", 0),
}


def command_name(cmd: int) -> str:
    spec = COMMANDS.get(cmd)
    return spec.name if spec else f"MIG_CMD_{cmd:#x}"


def check_command(cmd: int, length: int, offset: int) -> None:
    """Reject what QEMU's loader rejects: unknown ids and wrong fixed lengths."""
    spec = COMMANDS.get(cmd)
    if spec is None:
        raise FormatError(
            f"unknown command {cmd:#x} (len {length:#x})",
            offset=offset,
            section="command",
            expected=f"1..{max(COMMANDS)}",
        )
    if spec.length is not None and spec.length != length:
        raise FormatError(
            f"{spec.name} with payload length {length}",
            offset=offset,
            section="command",
            expected=f"{spec.length}",
        )


def decode_payload(cmd: int, payload: bytes, offset: int) -> dict:
    """The meaning of a command's payload, as a small dict."""
    if cmd == MIG_CMD_PING:
        return {"value": struct.unpack(">I", payload)[0]}
    if cmd == MIG_CMD_PACKAGED:
        return {"length": struct.unpack(">I", payload)[0]}
    if cmd == MIG_CMD_POSTCOPY_ADVISE:
        if len(payload) == 0:
            return {"ram": False}
        if len(payload) != 16:
            raise FormatError(
                f"POSTCOPY_ADVISE with {len(payload)} bytes",
                offset=offset,
                section="command",
                expected="0 or 16",
            )
        summary, tps = struct.unpack(">QQ", payload)
        return {"ram": True, "page_size_summary": summary, "target_page_size": tps}
    if cmd == MIG_CMD_POSTCOPY_RAM_DISCARD:
        return _discard(payload, offset)
    if cmd == MIG_CMD_RECV_BITMAP:
        if not payload or payload[0] + 1 != len(payload):
            raise FormatError(
                "RECV_BITMAP name length does not match the payload",
                offset=offset,
                section="command",
            )
        return {"block": payload[1:].decode("latin-1")}
    return {}


def _discard(payload: bytes, offset: int) -> dict:
    """POSTCOPY_RAM_DISCARD: version 0, counted block name, NUL, (start, length) pairs."""
    if len(payload) < 3 or payload[0] != 0:
        raise FormatError("bad POSTCOPY_RAM_DISCARD header", offset=offset, section="command")
    n = payload[1]
    end = 2 + n
    if end + 1 > len(payload) or payload[end] != 0:
        raise FormatError(
            "POSTCOPY_RAM_DISCARD block name is not NUL-terminated",
            offset=offset,
            section="command",
        )
    rest = payload[end + 1 :]
    if len(rest) % 16:
        raise FormatError(
            "POSTCOPY_RAM_DISCARD ranges are not 16-byte pairs",
            offset=offset,
            section="command",
        )
    ranges = [struct.unpack_from(">QQ", rest, i) for i in range(0, len(rest), 16)]
    return {"block": payload[2:end].decode("latin-1"), "ranges": [list(x) for x in ranges]}
