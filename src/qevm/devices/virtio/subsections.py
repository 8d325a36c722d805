"""Subsections inside a virtio field, read as ``vmstate_subsection_load()`` reads them.

Inside ``virtio_load()`` three VMSDs have subsections: ``vmstate_virtio``
(``virtio/...``), the transport's extra state (``virtio_pci/...``,
``virtio_mmio/...``) and some devices' own state (``virtio-net-device/rss``,
``virtio-balloon-device/...``).  The description does not list them, so
their layouts are known here: each by its fixed body size or a reader.
QEMU reads subsections while the next byte is QEMU_VM_SUBSECTION and the
name starts with the VMSD's name; a name the destination does not know
stops the load ("VM subsection '...' in '...' does not exist").

Whether the destination knows a subsection: it does when its own stream
sent it, or when the subsection is older than any QEMU qevm checks, or when
its machine type is of a release that has it (``since``); otherwise qevm
cannot tell, and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...analysis.steps import version_refusal
from .cursor import Cursor, LoadReading, Refusal, Stop

if TYPE_CHECKING:
    from .loadside import LoadSide

SUBSECTION = 0x05
VIRTIO_QUEUE_MAX = 1024


@dataclass(frozen=True)
class Spec:
    """A subsection's layout: a fixed body size, a reader, or a nested VMSD."""

    size: int | None = None
    #: reads a body whose size depends on its data
    reader: Callable[[Cursor], None] | None = None
    #: the VMSD name of a nested state with its own subsections (the transport's)
    nested: bool = False
    #: the first QEMU release that knows it (None: every release qevm checks)
    since: tuple[int, int] | None = None
    version: int = 1


def _rss(cur: Cursor) -> None:
    """``virtio-net-device/rss``: flags, hash types, the key and the indirection table."""
    cur.take(3, "rss.enabled/redirect/populate_hash")
    cur.be32("rss.hash_types")
    n = cur.be16("rss.indirections_len")
    cur.be16("rss.default_queue")
    cur.take(40, "rss.key")  # VIRTIO_NET_RSS_MAX_KEY_SIZE
    cur.take(2 * n, "rss.indirections_table")


VIRTIO_SUBSECTIONS: dict[str, Spec] = {
    "virtio/device_endian": Spec(1),
    "virtio/128bit_features": Spec(8, since=(10, 1)),
    "virtio/64bit_features": Spec(8),
    "virtio/virtqueues": Spec(16 * VIRTIO_QUEUE_MAX),
    "virtio/ringsize": Spec(4 * VIRTIO_QUEUE_MAX),
    "virtio/broken": Spec(1),
    "virtio/extra_state": Spec(nested=True),
    "virtio/started": Spec(1),
    "virtio/packed_virtqueues": Spec(10 * VIRTIO_QUEUE_MAX),
    "virtio/disabled": Spec(1),
}
#: the transport's extra state (``vmstate_virtio_pci``, ``vmstate_virtio_mmio``)
TRANSPORT_SUBSECTIONS: dict[str, dict[str, Spec]] = {
    # dfselect, gfselect, guest_features[2], then per queue: num, a byte, enabled,
    # desc/avail/used as two 32-bit halves each
    "virtio_pci": {"virtio_pci/modern_state": Spec(16 + 28 * VIRTIO_QUEUE_MAX)},
    # per queue: num, enabled, desc/avail/used halves
    "virtio_mmio": {"virtio_mmio/state": Spec(27 * VIRTIO_QUEUE_MAX)},
}
NET_SUBSECTIONS = {"virtio-net-device/rss": Spec(reader=_rss)}
BALLOON_SUBSECTIONS = {
    "virtio-balloon-device/free-page-report": Spec(8),
    "virtio-balloon-device/page-poison": Spec(4),
}


def read_subsections(
    cur: Cursor,
    parent: str,
    specs: dict[str, Spec],
    dest: LoadSide,
    out: LoadReading,
    sent: dict[str, int] | None = None,
) -> dict[str, bytes]:
    """Read the subsections of VMSD ``parent``; name -> body bytes of the fixed-size ones.

    ``sent``: the ones the destination's own stream has (name -> body size);
    by default those of ``vmstate_virtio``.
    """
    sent = dest.subsections if sent is None else sent
    loaded: dict[str, bytes] = {}
    while True:
        head = cur.peek(2 + 255)
        if len(head) < 2 or head[0] != SUBSECTION or head[1] < len(parent) + 1:
            return loaded
        n = head[1]
        raw = head[2 : 2 + n]
        if len(raw) != n or not raw.startswith(parent.encode()):
            return loaded
        name = raw.decode("latin-1")
        at = cur.offset
        spec = specs.get(name)
        if spec is None and name not in sent:
            raise Stop(
                Refusal(
                    at,
                    f"subsection {name}: qevm does not know it; the destination's stream does "
                    "not have it either, so whether it knows it (and how much it reads) "
                    "cannot be told",
                    f"VM subsection '{name}' in '{parent}' does not exist",
                    certain=False,
                    where=name,
                )
            )
        if spec is not None and name not in sent and not _known(spec, dest):
            out.refusals.append(
                Refusal(
                    at,
                    f"subsection {name} exists only from QEMU {spec.since[0]}.{spec.since[1]} "  # type: ignore[index]
                    "on; the destination's stream does not show that it knows it",
                    f"VM subsection '{name}' in '{parent}' does not exist",
                    certain=False,
                    where=name,
                )
            )
        cur.take(2 + n, f"{name} header")
        version = cur.be32(f"{name} version")
        local = spec.version if spec is not None else None
        refused = version_refusal(name, version, local, None)
        if refused is not None:
            raise Stop(
                Refusal(
                    at,
                    f"subsection {name} version {version}, qevm knows version {local}",
                    refused[0],
                    certain=name in sent,
                    where=name,
                )
            )
        if spec is None:
            size = sent[name]
            out.notes.append(
                f"{name}: qevm does not know its layout; read as the {size} bytes the "
                "destination's own stream has"
            )
            loaded[name] = cur.take(size, name)
        elif spec.nested:
            tparent = "virtio_mmio" if dest.transport == "mmio" else "virtio_pci"
            read_subsections(
                cur,
                tparent,
                TRANSPORT_SUBSECTIONS.get(tparent, {}),
                dest,
                out,
                sent=dest.extra_subsections,
            )
        elif spec.reader is not None:
            spec.reader(cur)
        else:
            loaded[name] = cur.take(spec.size or 0, name)


def _known(spec: Spec, dest: LoadSide) -> bool:
    if spec.since is None:
        return True
    return dest.min_qemu is not None and dest.min_qemu >= spec.since


def sent_in(state: bytes, parent: str) -> dict[str, int]:
    """Subsections of ``parent`` found in a device's own state bytes (name -> body size)."""
    out: dict[str, int] = {}
    key = bytes([SUBSECTION])
    pos = state.find(key)
    while pos >= 0 and pos + 2 < len(state):
        n = state[pos + 1]
        name = state[pos + 2 : pos + 2 + n]
        if len(name) == n and name.startswith(parent.encode() + b"/"):
            start = pos + 2 + n + 4
            nxt = state.find(key, start)
            out[name.decode("latin-1")] = (nxt if nxt >= 0 else len(state)) - start
        pos = state.find(key, pos + 1)
    return out
