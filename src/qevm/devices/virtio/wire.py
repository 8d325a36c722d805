"""The bytes ``virtio_save()`` writes (the description's opaque ``virtio`` field).

QEMU describes a virtio device section as one field of type ``virtio``;
inside it ``virtio_save()`` (hw/virtio/virtio.c) writes, in order:

1. the transport's configuration (``save_config``): for PCI
   ``pci_device_save()`` (version, config space, INTx levels), ``msix_save()``
   (vector table, pending bits) and the config vector; nothing for MMIO; a
   nested VMSD for CCW;
2. status (u8), isr (u8), queue_sel (be16), the low 32 guest feature bits
   (be32), config_len (be32) and the device config space;
3. the queue count (be32) and per queue: num (be32), the alignment (be32,
   MMIO only), desc (be64), last_avail_idx (be16) and, from ``save_queue``,
   its MSI-X (PCI) or indicator (CCW) vector (be16);
4. the device's own state (``vdc->save`` or ``vdc->vmsd``, undescribed);
5. ``vmstate_virtio``'s subsections ``virtio/...``: feature bits above 31,
   avail/used ring addresses (virtio 1), default ring sizes, the transport's
   extra state, started/broken/disabled flags, packed ring state.

The device's own state has no description, so the subsections are found by
their markers (0x05, name length, ``virtio/`` name, be32 version) and
checked against the sizes their VMSDs give them.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Any

from ...errors import FormatError
from ..pci import caps as pci_caps

QUEUE_MAX_DEFAULT = 1024  # VIRTIO_QUEUE_MAX since QEMU 2.4
_MARKER = re.compile(rb"\x05([\x08-\x3f])(virtio/[a-z0-9_]+)")


@dataclass
class SavedQueue:
    """One virtqueue as ``virtio_save()`` wrote it."""

    index: int
    num: int
    desc: int
    last_avail_idx: int
    align: int | None = None
    vector: int | None = None
    # from subsections
    avail: int | None = None
    used: int | None = None
    num_default: int | None = None
    packed: dict[str, int] | None = None
    # from the transport's extra state (virtio-pci modern, virtio-mmio)
    transport: dict[str, Any] | None = None


@dataclass
class Subsection:
    name: str
    version: int
    offset: int
    body: bytes


@dataclass
class VirtioBlob:
    """The parts of a ``virtio`` field."""

    transport: str
    size: int
    # PCI transport
    pci_version: int | None = None
    pci_config: bytes | None = None
    pci_config_offset: int | None = None
    irq_state: list[int] | None = None
    msix_table: bytes | None = None
    msix_pba: bytes | None = None
    config_vector: int | None = None
    # common header
    status: int = 0
    isr: int = 0
    queue_sel: int = 0
    guest_features_lo: int = 0
    config: bytes = b""
    queues: list[SavedQueue] = field(default_factory=list)
    #: the device's own state (``vdc->save``/``vdc->vmsd``), undescribed
    device_state: bytes = b""
    device_state_offset: int = 0
    subsections: list[Subsection] = field(default_factory=list)
    #: virtio-pci's modern registers (virtio_pci/modern_state)
    pci_modern: dict[str, int] | None = None
    #: virtio-mmio's transport registers (virtio_mmio_save_config)
    mmio: dict[str, int] | None = None
    notes: list[str] = field(default_factory=list)

    def subsection(self, name: str) -> Subsection | None:
        for s in self.subsections:
            if s.name == name:
                return s
        return None


class _Reader:
    def __init__(self, data: bytes, base: int, section: str) -> None:
        self.data = data
        self.pos = 0
        self.base = base
        self.section = section

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise FormatError(
                f"the virtio state ends inside {what}",
                offset=self.base + self.pos,
                section=self.section,
                field=f"virtio.{what}",
                expected=f"{n} more bytes, {len(self.data) - self.pos} left",
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def be16(self, what: str) -> int:
        return struct.unpack(">H", self.take(2, what))[0]

    def be32(self, what: str) -> int:
        return struct.unpack(">I", self.take(4, what))[0]

    def be64(self, what: str) -> int:
        return struct.unpack(">Q", self.take(8, what))[0]


def parse(data: bytes, base: int, section: str, transport: str) -> VirtioBlob:
    """Split a ``virtio`` field's bytes; ``base`` is their offset in the stream.

    ``transport`` is ``pci``, ``mmio`` or ``ccw`` (from the section's device path).
    Raises :class:`~qevm.errors.FormatError` when the bytes do not follow the layout.
    """
    blob = VirtioBlob(transport, len(data))
    r = _Reader(data, base, section)
    if transport == "pci":
        _pci_config(r, blob)
        _header(r, blob, has_align=False, has_vector=blob.msix_table is not None)
    elif transport == "mmio":
        # virtio_mmio_save_config(): host_features_sel, guest_features_sel, guest_page_shift
        blob.mmio = {
            "host_features_sel": r.be32("host_features_sel"),
            "guest_features_sel": r.be32("guest_features_sel"),
            "guest_page_shift": r.be32("guest_page_shift"),
        }
        _header(r, blob, has_align=True, has_vector=False)
    else:
        r.pos = _locate_header(data, base, section)
        blob.notes.append(
            f"the {transport} transport's own state ({r.pos} bytes) is not decoded; the virtio "
            "state after it was found from the 64-bit feature subsection"
        )
        _header(r, blob, has_align=False, has_vector=True)
    tail = _find_subsections(data, r.pos, base, section)
    blob.device_state = data[r.pos : tail]
    blob.device_state_offset = base + r.pos
    blob.subsections = _split_subsections(data, tail, base, section)
    _apply_subsections(blob)
    return blob


def _pci_config(r: _Reader, blob: VirtioBlob) -> None:
    # pci_device_save(): vmstate_pci_device (version_id, config, irq_state)
    blob.pci_version = struct.unpack(">i", r.take(4, "PCIDevice.version_id"))[0]
    start = r.pos
    head = r.data[start : start + 256]
    if len(head) < 256:
        r.take(256, "PCIDevice.config")
    # a PCI Express device (QEMU_PCI_CAP_EXPRESS, which virtio-pci gives exactly the
    # functions it adds the Express capability to) saves 4 KiB of config space
    size = 4096 if pci_caps.find(head, pci_caps.CAP_EXP) is not None else 256
    cfg = r.data[start : start + size]
    irq = r.data[start + size : start + size + 16]
    if len(irq) == 16 and not all(v in (0, 1) for v in struct.unpack(">4I", irq)):
        raise FormatError(
            "the PCI config space in the virtio state is followed by an invalid INTx state",
            offset=r.base + start + size,
            section=r.section,
            field="virtio.PCIDevice.irq_state",
            expected=f"four be32 values, each 0 or 1, after {size} config bytes",
        )
    blob.pci_config_offset = r.base + start
    blob.pci_config = r.take(size, "PCIDevice.config")
    blob.irq_state = [r.be32("PCIDevice.irq_state") for _ in range(4)]
    # msix_save(): only when the device has the MSI-X capability
    pos = pci_caps.find(cfg, pci_caps.CAP_MSIX)
    if pos is not None:
        n = (struct.unpack_from("<H", cfg, pos + 2)[0] & 0x7FF) + 1
        blob.msix_table = r.take(16 * n, "msix table")
        blob.msix_pba = r.take((n + 7) // 8, "msix pba")
        blob.config_vector = r.be16("config_vector")


def _header(r: _Reader, blob: VirtioBlob, *, has_align: bool, has_vector: bool) -> None:
    blob.status = r.u8("status")
    blob.isr = r.u8("isr")
    blob.queue_sel = r.be16("queue_sel")
    blob.guest_features_lo = r.be32("guest_features")
    config_len = r.be32("config_len")
    blob.config = r.take(config_len, "config")
    nq = r.be32("num_queues")
    if nq > 1024:
        raise FormatError(
            f"Invalid number of virtqueues: {nq:#x}",
            offset=r.base + r.pos - 4,
            section=r.section,
            field="virtio.num_queues",
            expected="at most 1024 (VIRTIO_QUEUE_MAX), as virtio_load() checks",
        )
    for i in range(nq):
        num = r.be32(f"vq[{i}].num")
        align = r.be32(f"vq[{i}].align") if has_align else None
        desc = r.be64(f"vq[{i}].desc")
        last = r.be16(f"vq[{i}].last_avail_idx")
        vector = r.be16(f"vq[{i}].vector") if has_vector else None
        blob.queues.append(SavedQueue(i, num, desc, last, align, vector))


def _find_subsections(data: bytes, start: int, base: int, section: str) -> int:
    """Where ``vmstate_virtio``'s subsections begin (the end of the device state)."""
    for m in _MARKER.finditer(data, start):
        if m.group(1)[0] != len(m.group(2)):
            continue
        try:
            _split_subsections(data, m.start(), base, section)
        except FormatError:
            continue
        return m.start()
    return len(data)


#: body sizes of vmstate_virtio's subsections, per queue (n) or fixed
_SUB_SIZES = {
    "virtio/device_endian": (1, 0),
    "virtio/64bit_features": (8, 0),
    "virtio/128bit_features": (8, 0),
    "virtio/virtqueues": (0, 16),
    "virtio/ringsize": (0, 4),
    "virtio/broken": (1, 0),
    "virtio/started": (1, 0),
    "virtio/disabled": (1, 0),
    "virtio/packed_virtqueues": (0, 10),
}


def _split_subsections(data: bytes, start: int, base: int, section: str) -> list[Subsection]:
    """The chain of ``virtio/`` subsections from ``start`` to the end of the field.

    A subsection of known size ends where its size says; the per-queue ones
    and unknown ones end at the next marker (a per-queue one at a whole
    number of entries).
    """
    out = []
    pos = start
    while pos < len(data):
        m = _MARKER.match(data, pos)
        if m is None or m.group(1)[0] != len(m.group(2)):
            raise FormatError(
                "expected a virtio subsection marker",
                offset=base + pos,
                section=section,
                field="virtio",
            )
        name = m.group(2).decode()
        hdr_end = m.end() + 4
        if hdr_end > len(data):
            raise FormatError("subsection header cut", offset=base + pos, section=section)
        size, per_queue = _SUB_SIZES.get(name, (None, None))
        if size and not per_queue:
            end = hdr_end + size
            if end > len(data):
                raise FormatError(f"{name} cut", offset=base + pos, section=section)
        else:
            end = len(data)
            for nxt in _MARKER.finditer(data, hdr_end):
                if nxt.group(1)[0] != len(nxt.group(2)):
                    continue
                if per_queue and (nxt.start() - hdr_end) % per_queue:
                    continue
                end = nxt.start()
                break
            if per_queue and ((end - hdr_end) % per_queue or end == hdr_end):
                raise FormatError(f"{name} has a partial entry", offset=base + pos, section=section)
        version = struct.unpack_from(">I", data, m.end())[0]
        out.append(Subsection(name, version, base + pos, data[hdr_end:end]))
        pos = end
    return out


def _locate_header(data: bytes, base: int, section: str) -> int:
    """Find the common header after a transport state qevm does not decode (CCW).

    The low 32 guest feature bits in the header equal the low half of the
    ``virtio/64bit_features`` subsection (present for every virtio 1 device);
    the header and queue table must hold values QEMU accepts on load.  The
    first place that fits is taken.
    """
    m = None
    for cand in _MARKER.finditer(data):
        if cand.group(2) == b"virtio/64bit_features" and cand.group(1)[0] == 21:
            m = cand
    if m is None:
        raise FormatError(
            "cannot find the virtio header after the transport's state: no "
            "virtio/64bit_features subsection to anchor it",
            offset=base,
            section=section,
            field="virtio",
        )
    lo = data[m.end() + 4 + 4 : m.end() + 4 + 8]
    for pos in range(0, m.start() - 12):
        if data[pos + 4 : pos + 8] == lo and _plausible_header(data, pos, m.start()):
            return pos
    raise FormatError(
        "cannot place the virtio header after the transport's state",
        offset=base,
        section=section,
        field="virtio",
    )


def _plausible_header(data: bytes, pos: int, limit: int) -> bool:
    """Status, ISR, queue_sel, config and a queue table (with CCW's vector) QEMU would load."""
    status, isr, qsel = data[pos], data[pos + 1], struct.unpack_from(">H", data, pos + 2)[0]
    if status & 0x30 or isr > 3 or qsel >= 1024:
        return False
    clen = struct.unpack_from(">I", data, pos + 8)[0]
    q = pos + 12 + clen
    if clen > 0x1000 or q + 4 > limit:
        return False
    nq = struct.unpack_from(">I", data, q)[0]
    if not 0 < nq <= 1024 or q + 4 + 16 * nq > limit:
        return False
    for i in range(nq):
        num, desc, last = struct.unpack_from(">IQH", data, q + 4 + 16 * i)
        if not 0 < num <= 32768 or desc & 0xF or desc >> 56 or (not desc and last):
            return False
    return True


def _apply_subsections(blob: VirtioBlob) -> None:
    n = len(blob.queues)
    for sub in blob.subsections:
        body = sub.body
        if sub.name == "virtio/virtqueues":
            for q in blob.queues:
                if 16 * q.index + 16 <= len(body):
                    q.avail, q.used = struct.unpack_from(">QQ", body, 16 * q.index)
        elif sub.name == "virtio/ringsize":
            for q in blob.queues:
                if 4 * q.index + 4 <= len(body):
                    q.num_default = struct.unpack_from(">I", body, 4 * q.index)[0]
        elif sub.name == "virtio/packed_virtqueues":
            for q in blob.queues:
                off = 10 * q.index
                if off + 10 <= len(body):
                    last, lwrap, used, uwrap, inuse = struct.unpack_from(">HBHBI", body, off)
                    q.packed = {
                        "last_avail_idx": last,
                        "last_avail_wrap_counter": lwrap,
                        "used_idx": used,
                        "used_wrap_counter": uwrap,
                        "inuse": inuse,
                    }
        elif sub.name == "virtio/extra_state":
            _extra_state(blob, body, n)


_EXTRA = re.compile(rb"\x05([\x08-\x3f])(virtio_(?:pci|mmio)/[a-z_]+)")


def _extra_state(blob: VirtioBlob, body: bytes, n: int) -> None:
    """The transport's extra state: virtio-pci's and virtio-mmio's per-queue registers."""
    m = _EXTRA.search(body)
    if m is None or m.group(1)[0] != len(m.group(2)):
        return
    data = body[m.end() + 4 :]
    name = m.group(2).decode()
    if name == "virtio_pci/modern_state" and len(data) >= 16:
        dfselect, gfselect, gf0, gf1 = struct.unpack_from(">IIII", data, 0)
        blob.pci_modern = {
            "dfselect": dfselect,
            "gfselect": gfselect,
            "guest_features": gf0 | (gf1 << 32),
        }
        # virtio_pci/modern_queue_state: num, an unused byte, enabled, desc/avail/used
        _queue_regs(blob, data, 16, ">HxB6I")
    elif name == "virtio_mmio/state":
        # virtio_mmio/queue_state: num, enabled, desc/avail/used
        _queue_regs(blob, data, 0, ">HB6I")


def _queue_regs(blob: VirtioBlob, data: bytes, start: int, fmt: str) -> None:
    size = struct.calcsize(fmt)
    for q in blob.queues:
        off = start + size * q.index
        if off + size <= len(data):
            num, enabled, d0, d1, a0, a1, u0, u1 = struct.unpack_from(fmt, data, off)
            q.transport = {
                "num": num,
                "enabled": bool(enabled),
                "desc": d0 | (d1 << 32),
                "avail": a0 | (a1 << 32),
                "used": u0 | (u1 << 32),
            }
