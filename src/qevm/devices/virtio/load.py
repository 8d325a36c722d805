"""A source's ``virtio`` field read the way the destination's ``virtio_load()`` reads it.

``virtio_load()`` (hw/virtio/virtio.c) takes, in order: the transport's
config (for PCI ``pci_device_load()`` — where ``get_pci_config_device()``
refuses read-only config bytes that differ — then ``msix_load()`` with the
destination's vector count and the config vector), status, ISR, queue_sel,
the low guest features, the config space (any length: the excess is
skipped), the queue table (per-queue vector only with MSI-X), the device's
own state (:mod:`.devstate`), then ``vmstate_virtio``'s subsections, then
checks the guest features against what the device offers ("Features 0x..
unsupported").  :func:`read_as_loaded` follows that over the source's bytes
with a :class:`~.loadside.LoadSide` for the destination and says how many
bytes it takes and where it refuses, in QEMU's words.

Offered features are not migrated; the destination's stream proves only
those its own guest negotiated, so an unproven feature is a doubt, never a
certain refusal.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from ..pci import config_refusal
from . import devstate
from .features import F_RING_PACKED
from .loadside import LoadSide, feature_names, is_modern_pci
from .subsections import VIRTIO_SUBSECTIONS, read_subsections

VIRTIO_QUEUE_MAX = 1024
VIRTIO_NO_VECTOR = 0xFFFF


@dataclass
class Refusal:
    """Where the destination's load fails (``certain``) or may fail."""

    offset: int
    message: str
    qemu: str | None = None
    certain: bool = True
    #: where in the field (``PCIDevice.config[0x9a]``, ``vq[0].num``)
    where: str = ""
    source: Any = None
    destination: Any = None
    details: list[str] = field(default_factory=list)
    #: the load ran past the bytes the source wrote (not a check of a value)
    overrun: bool = False


@dataclass
class LoadReading:
    """How the destination reads the field."""

    #: bytes its load takes (the source's size when it stops inside: the rest is moot)
    size: int | None
    refusals: list[Refusal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the guest features it loaded
    features: int = 0
    #: (what, position in the field) of every read
    steps: list[tuple[str, int]] = field(default_factory=list)

    @property
    def stops(self) -> bool:
        return any(r.certain for r in self.refusals)

    def fits(self, size: int) -> bool:
        """Whether this reading of a field by its own device ends where the field ends, or
        stops at a check of a value (QEMU stops there too, wherever it loads it)."""
        if any(r.overrun for r in self.refusals):
            return False
        return self.stops or (self.size == size and not self.refusals)


class Stop(Exception):
    """The load fails here (the refusal says how)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class Cursor:
    """Bounded big-endian reads over the source's bytes, as ``qemu_get_*`` makes them."""

    def __init__(self, data: bytes, base: int, section: str, vmsd: str) -> None:
        self.data = data
        self.pos = 0
        self.base = base
        self.section = section
        self.vmsd = vmsd
        #: (what, position) of every read, to find where two readings part
        self.steps: list[tuple[str, int]] = []

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def take(self, n: int, what: str) -> bytes:
        self.steps.append((what, self.pos))
        if n < 0 or self.pos + n > len(self.data):
            raise Stop(
                Refusal(
                    self.offset,
                    f"the destination's virtio_load reads {what} past the end of the section "
                    f"({self.pos + n - len(self.data)} bytes more than the source wrote)",
                    f"Missing section footer for {self.section}",
                    where=what,
                    overrun=True,
                )
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def peek(self, n: int) -> bytes:
        return self.data[self.pos : self.pos + n]

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def be16(self, what: str) -> int:
        return struct.unpack(">H", self.take(2, what))[0]

    def be32(self, what: str) -> int:
        return struct.unpack(">I", self.take(4, what))[0]

    def be64(self, what: str) -> int:
        return struct.unpack(">Q", self.take(8, what))[0]

    def failed(self, msg: str, where: str, qemu: str | None = None, **kw: Any) -> Stop:
        """A load failure QEMU reports only as ``Failed to load <vmsd>:virtio`` (or ``qemu``)."""
        words = qemu or f"Failed to load {self.vmsd}:virtio"
        return Stop(Refusal(self.offset, msg, words, where=where, **kw))


def read_as_loaded(
    data: bytes, base: int, dest: LoadSide, source: LoadSide | None, source_size: int
) -> LoadReading:
    """Read ``data`` (the source's bytes from the field to the section's end, at stream
    offset ``base``) as ``dest``'s ``virtio_load()`` would.  ``source`` is the source's own
    device (from the same bytes; None when they do not parse), ``source_size`` the field's
    size as the source wrote it."""
    cur = Cursor(data, base, dest.section, dest.vmsd_name or "virtio")
    out = LoadReading(None)
    out.steps = cur.steps
    try:
        _load(cur, dest, source, out)
    except Stop as s:
        out.refusals.append(s.refusal)
        out.size = source_size
        return out
    out.size = cur.pos
    _ring_sizes(dest, source, out)
    return out


def _load(cur: Cursor, dest: LoadSide, source: LoadSide | None, out: LoadReading) -> None:
    if dest.transport == "pci":
        _pci_config(cur, dest, source)
    elif dest.transport == "mmio":
        for what in ("host_features_sel", "guest_features_sel", "guest_page_shift"):
            cur.be32(what)
    cur.u8("status")
    cur.u8("isr")
    sel = cur.be16("queue_sel")
    if sel >= VIRTIO_QUEUE_MAX:
        raise cur.failed(f"queue_sel {sel} is not below {VIRTIO_QUEUE_MAX}", "queue_sel")
    features_lo = cur.be32("guest_features")
    config_len = cur.be32("config_len")
    cur.take(config_len, "config")
    num = cur.be32("num_queues")
    if num > VIRTIO_QUEUE_MAX:
        raise Stop(
            Refusal(cur.offset - 4, f"{num} virtqueues", f"Invalid number of virtqueues: {num:#x}")
        )
    vectors = dest.msix_entries
    for i in range(num):
        cur.be32(f"vq[{i}].num")
        if dest.transport == "mmio":
            cur.be32(f"vq[{i}].align")
        desc = cur.be64(f"vq[{i}].desc")
        last = cur.be16(f"vq[{i}].last_avail_idx")
        if not desc and last:
            raise Stop(
                Refusal(
                    cur.offset - 2,
                    f"queue {i} has no ring but a last_avail_idx of {last}",
                    f"VQ {i} address 0x0 inconsistent with Host index {last:#x}",
                    where=f"vq[{i}]",
                )
            )
        if dest.transport == "ccw" or vectors:
            vector = cur.be16(f"vq[{i}].vector")
            if vectors and vector != VIRTIO_NO_VECTOR and vector >= vectors:
                raise cur.failed(
                    f"queue {i} uses MSI-X vector {vector}; the destination has {vectors}",
                    f"vq[{i}].vector",
                    source=vector,
                    destination=vectors,
                )
    devstate.read_device_state(cur, dest, source, features_lo, out)
    loaded = read_subsections(cur, "virtio", VIRTIO_SUBSECTIONS, dest, out)
    out.features = features_lo
    hi = loaded.get("virtio/64bit_features")
    if hi is not None:
        out.features = int.from_bytes(hi, "big")
    ext = loaded.get("virtio/128bit_features")
    if ext is not None:
        out.features |= int.from_bytes(ext, "big") << 64
    _features(cur, dest, out, wide=hi is not None or is_modern_pci(dest.pci_config))


def _pci_config(cur: Cursor, dest: LoadSide, source: LoadSide | None) -> None:
    """``pci_device_load()``, ``msix_load()`` and the config vector (virtio_pci_load_config)."""
    version = struct.unpack(">i", cur.take(4, "PCIDevice.version_id"))[0]
    local = dest.blob.pci_version
    if local is not None and not 0 <= version <= local:
        raise Stop(
            Refusal(
                cur.offset - 4,
                f"PCIDevice version {version}, the destination loads up to {local}",
                f"Invalid value {version} expecting positive value <= {local}",
                where="PCIDevice.version_id",
                source=version,
                destination=local,
            )
        )
    cfg = dest.pci_config
    if cfg is None:
        raise cur.failed("the destination's PCI config space is not known", "PCIDevice.config")
    start = cur.offset
    incoming = cur.take(len(cfg), "PCIDevice.config")
    bad = config_refusal(cfg, incoming, dest.bar_sizes)
    if bad is not None:
        raise Stop(
            Refusal(
                start + bad.offset,
                f"PCI config byte {bad.offset:#x} is read-only at the destination and differs: "
                f"{bad.describe()}",
                bad.qemu_message(),
                certain=bad.certain,
                where=f"PCIDevice.config[{bad.offset:#x}]",
                source=bad.mismatch.read,
                destination=bad.mismatch.device,
                details=bad.details(),
            )
        )
    for pin in range(4):
        level = struct.unpack(">i", cur.take(4, f"PCIDevice.irq_state[{pin}]"))[0]
        if level not in (0, 1):
            raise Stop(
                Refusal(
                    cur.offset - 4,
                    f"INTx pin {pin} level {level}",
                    f"irq state {level}: must be 0 or 1.",
                    where="PCIDevice.irq_state",
                )
            )
    n = dest.msix_entries
    if n:
        cur.take(16 * n, "msix table")
        cur.take((n + 7) // 8, "msix pba")
        vector = cur.be16("config_vector")
        if vector != VIRTIO_NO_VECTOR and vector >= n:
            raise cur.failed(
                f"the config vector is {vector}; the destination has {n} MSI-X vectors",
                "config_vector",
                source=vector,
                destination=n,
            )


def _features(cur: Cursor, dest: LoadSide, out: LoadReading, *, wide: bool) -> None:
    """``virtio_set_features_nocheck()``: every loaded feature must be offered."""
    unproven = out.features & ~dest.offered
    if not unproven:
        return
    names = feature_names(dest.device_id, unproven)
    shown = f"0x{out.features:x}" if wide else f"0x{out.features & 0xFFFFFFFF:x}"
    if dest.negotiated:
        known = "its own guest negotiated only " + ", ".join(
            feature_names(dest.device_id, dest.negotiated)
        )
    else:
        known = "its own guest had negotiated nothing"
    out.refusals.append(
        Refusal(
            cur.offset,
            f"the source's guest uses {', '.join(names)}; the destination's stream does not "
            f"show that its device offers {'it' if len(names) == 1 else 'them'} (offered "
            f"features are not migrated; {known}): if it does not, QEMU refuses the load",
            f"Features {shown} unsupported. Allowed features: ...",
            certain=False,
            where="guest features",
            source=out.features,
            destination=dest.offered,
            details=[
                "the destination offers a feature unless a property turns it off (e.g. "
                "mrg_rxbuf=off, indirect_desc=off, event_idx=off) or its backend lacks it; "
                "`info virtio-status` on the destination lists what it offers"
            ],
        )
    )


def _ring_sizes(dest: LoadSide, source: LoadSide | None, out: LoadReading) -> None:
    """QEMU takes each ring's size from the stream and does not compare it with the
    destination's configured size (``num_default``): say where they differ."""
    if source is None or "virtio/ringsize" in source.subsections:
        return  # the source sends its num_default: the destination takes it too
    dest_defaults = dest.num_defaults
    packed = bool(out.features >> F_RING_PACKED & 1)
    for i, num in enumerate(source.queue_nums):
        if i >= len(dest_defaults):
            out.notes.append(
                f"queue {i}: the source has it ({num} entries), the destination's device does "
                "not: QEMU loads it anyway, and nothing serves it there"
            )
            continue
        d = dest_defaults[i]
        if num > d:
            more = (
                "; with a packed ring QEMU's in-flight array has only "
                f"{d} entries, which a full ring overruns"
                if packed
                else ""
            )
            out.notes.append(
                f"queue {i}: the source's ring has {num} entries, the destination's device is "
                f"configured for {d} (rx_queue_size, tx_queue_size, queue-size): QEMU takes "
                f"the size from the stream without checking it{more}"
            )


def parting(own: list[tuple[str, int]], other: list[tuple[str, int]]) -> str | None:
    """Where a destination's reading of the field (``other``) leaves the source's own
    (``own``): ``"at +0x1e2 the source wrote max_queue_pairs; the destination reads
    curr_guest_offloads there"``."""
    for (w1, p1), (w2, p2) in zip(own, other):
        if w1 != w2 or p1 != p2:
            if p1 == p2:
                return f"at +{p1:#x} the source wrote {w1}; the destination reads {w2} there"
            return f"the source wrote {w1} at +{p1:#x}, the destination reads {w2} at +{p2:#x}"
    if len(own) > len(other):
        w, p = own[len(other)]
        return f"the destination's load ends before +{p:#x}, where the source wrote {w}"
    if len(other) > len(own):
        w, p = other[len(own)]
        return f"the destination reads {w} at +{p:#x}, past what the source wrote"
    return None
