"""A virtio device as a loading QEMU has it, learned from that QEMU's own stream.

``virtio_load()`` reads much of a device's state the way the *loading*
device is set up, not the way the source wrote it: the PCI config space at
its own size, the MSI-X table with its own number of vectors, per-queue
vectors only if it has MSI-X, virtio-net's queue-pair fields only if it has
more than one pair, virtio-blk's request queue index only with more than one
queue.  It also compares against the loading device: read-only config
bytes, offered features, the backend's vnet header.  :class:`LoadSide`
gathers those from the ``virtio`` field a configuration wrote of itself.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Any

from ..pci import bar_sizes as pci_bar_sizes
from ..pci import caps as pci_caps
from . import devconfig, features, wire
from .features import F_RING_PACKED, F_VERSION_1

#: Features a device type offers whatever its properties and backend (its
#: get_features adds them): virtio-net's MAC; virtio-blk's SEG_MAX, GEOMETRY,
#: TOPOLOGY, BLK_SIZE; virtio-balloon's STATS_VQ.
ALWAYS_OFFERED = {1: 1 << 5, 2: (1 << 2) | (1 << 4) | (1 << 10) | (1 << 6), 5: 1 << 1}
VIRTIO_BLK_F_MQ = 12

#: A machine type names the QEMU release that introduced it: ``pc-q35-10.1`` runs
#: only on QEMU 10.1 or later.
_MACHINE_VERSION = re.compile(r"-(\d+)\.(\d+)$")


@dataclass
class LoadSide:
    """What one side's device is; ``None`` fields are unknown."""

    section: str
    transport: str
    vmsd_name: str | None
    device_id: int | None
    blob: wire.VirtioBlob
    #: its PCI config space (PCI transport)
    pci_config: bytes | None = None
    bar_sizes: dict[int, int] = field(default_factory=dict)
    #: MSI-X vectors (0: no MSI-X capability)
    msix_entries: int = 0
    #: features its stream proves the device offers: those its guest negotiated,
    #: VIRTIO_F_VERSION_1 of a modern virtio-pci device, what its type always offers
    offered: int = 0
    #: ``virtio/...`` subsection name -> body size as this side wrote it
    subsections: dict[str, int] = field(default_factory=dict)
    #: nested subsections of the transport's extra state (``virtio_pci/modern_state``)
    extra_subsections: dict[str, int] = field(default_factory=dict)
    #: the device's own state, decoded where qevm knows its layout
    device: dict[str, Any] = field(default_factory=dict)
    #: the oldest QEMU release that has its machine type, e.g. (10, 1)
    min_qemu: tuple[int, int] | None = None

    @property
    def queue_nums(self) -> list[int]:
        return [q.num for q in self.blob.queues]

    @property
    def num_defaults(self) -> list[int]:
        return [q.num_default if q.num_default is not None else q.num for q in self.blob.queues]

    @property
    def negotiated(self) -> int:
        return features_of(self.blob)


def features_of(blob: wire.VirtioBlob) -> int:
    """The guest features as ``virtio_load()`` ends up with them (subsections included)."""
    out = blob.guest_features_lo
    hi = blob.subsection("virtio/64bit_features")
    if hi is not None and len(hi.body) == 8:
        out = struct.unpack(">Q", hi.body)[0]
    ext = blob.subsection("virtio/128bit_features")
    if ext is not None and len(ext.body) == 8:
        out |= struct.unpack(">Q", ext.body)[0] << 64
    return out


def is_modern_pci(config: bytes | None) -> bool:
    """Whether a virtio-pci function has the virtio 1 interface (the common config cap)."""
    if config is None:
        return False
    for pos, cid in pci_caps.walk(config):
        if cid == pci_caps.CAP_VNDR and pos + 3 < len(config) and config[pos + 3] == 1:
            return True
    return False


def min_qemu_of(machine: str | None) -> tuple[int, int] | None:
    m = _MACHINE_VERSION.search(machine or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def side_from_field(
    data: bytes,
    base: int,
    section: str,
    vmsd_name: str | None,
    transport: str,
    blocks: list[tuple[str, int]],
    machine: str | None,
) -> LoadSide:
    """A side from its own ``virtio`` field bytes (raises FormatError when they do not parse)."""
    from . import _device_id

    blob = wire.parse(data, base, section, transport)
    side = LoadSide(section, transport, vmsd_name, _device_id(blob, vmsd_name), blob)
    side.min_qemu = min_qemu_of(machine)
    if blob.pci_config is not None:
        side.pci_config = blob.pci_config
        side.bar_sizes = pci_bar_sizes(section.rsplit("/", 1)[0], blocks)
        pos = pci_caps.find(blob.pci_config, pci_caps.CAP_MSIX)
        if pos is not None:
            side.msix_entries = (struct.unpack_from("<H", blob.pci_config, pos + 2)[0] & 0x7FF) + 1
    side.offered = features_of(blob)
    if blob.subsection("virtio/packed_virtqueues") is not None:
        side.offered |= 1 << F_RING_PACKED
    if is_modern_pci(side.pci_config):
        side.offered |= 1 << F_VERSION_1
    side.offered |= ALWAYS_OFFERED.get(side.device_id or -1, 0)
    if side.device_id == 2 and len(blob.queues) > 1:
        side.offered |= 1 << VIRTIO_BLK_F_MQ
    for sub in blob.subsections:
        side.subsections[sub.name] = len(sub.body)
    extra = blob.subsection("virtio/extra_state")
    if extra is not None:
        side.extra_subsections = _nested_sizes(extra.body)
    if side.device_id == 1:
        state, _why = devconfig.net_device_state(
            blob.device_state, len(blob.queues), blob.guest_features_lo
        )
        side.device = state
        side.device["max_queue_pairs"] = max((len(blob.queues) - 1) // 2, 1)
    elif side.device_id == 2:
        side.device["num_queues"] = len(blob.queues)
    side.device["state_size"] = len(blob.device_state)
    return side


def _nested_sizes(body: bytes) -> dict[str, int]:
    """Subsection name -> body size inside the transport's extra state (one level)."""
    out: dict[str, int] = {}
    pos = 0
    while pos + 2 < len(body) and body[pos] == 0x05:
        n = body[pos + 1]
        name = body[pos + 2 : pos + 2 + n].decode("latin-1")
        start = pos + 2 + n + 4
        nxt = body.find(b"\x05", start)
        # the extra state holds one subsection per transport; it runs to the end
        end = len(body) if nxt < 0 or not _is_marker(body, nxt) else nxt
        out[name] = end - start
        pos = end
    return out


def _is_marker(body: bytes, pos: int) -> bool:
    n = body[pos + 1] if pos + 1 < len(body) else 0
    name = body[pos + 2 : pos + 2 + n]
    return len(name) == n and name[:7] == b"virtio_" and b"/" in name


def feature_names(device_id: int | None, bits: int) -> list[str]:
    """Names of feature bits (``bit N`` for those no table names)."""
    fl = features.decode_features(device_id, bits)
    out = list(fl.names)
    unknown = fl.unknown
    i = 0
    while unknown:
        if unknown & 1:
            out.append(f"bit {i}")
        unknown >>= 1
        i += 1
    return out
