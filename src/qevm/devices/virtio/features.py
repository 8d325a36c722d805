"""Virtio status and feature bits by name, as QEMU's ``info virtio-status`` prints them.

The tables follow hw/virtio/virtio-qmp.c: one transport map and one map per
device type, each a list of ``(bit, name, description)``.  QEMU walks a map
in order, takes each bit it finds out of the bitmap and prepends its entry
to a list, so the monitor prints a map's names in reverse order; bits no map
names are "unknown-features".  :func:`decode_features` does the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# virtio_config.h: device status
STATUS_MAP = [
    (0x04, "VIRTIO_CONFIG_S_DRIVER_OK", "Driver setup and ready"),
    (0x08, "VIRTIO_CONFIG_S_FEATURES_OK", "Feature negotiation complete"),
    (0x02, "VIRTIO_CONFIG_S_DRIVER", "Guest OS compatible with device"),
    (0x40, "VIRTIO_CONFIG_S_NEEDS_RESET", "Irrecoverable error, device needs reset"),
    (0x80, "VIRTIO_CONFIG_S_FAILED", "Error in guest, device failed"),
    (0x01, "VIRTIO_CONFIG_S_ACKNOWLEDGE", "Valid virtio device found"),
]

F_NOTIFY_ON_EMPTY = 24
F_ANY_LAYOUT = 27
F_RING_INDIRECT_DESC = 28
F_RING_EVENT_IDX = 29
F_BAD_FEATURE = 30
F_VERSION_1 = 32
F_RING_PACKED = 34

TRANSPORT_MAP = [
    (24, "VIRTIO_F_NOTIFY_ON_EMPTY", "Notify when device runs out of avail. descs. on VQ"),
    (27, "VIRTIO_F_ANY_LAYOUT", "Device accepts arbitrary desc. layouts"),
    (32, "VIRTIO_F_VERSION_1", "Device compliant for v1 spec (legacy)"),
    (33, "VIRTIO_F_IOMMU_PLATFORM", "Device can be used on IOMMU platform"),
    (34, "VIRTIO_F_RING_PACKED", "Device supports packed VQ layout"),
    (35, "VIRTIO_F_IN_ORDER", "Device uses buffers in same order as made available by driver"),
    (36, "VIRTIO_F_ORDER_PLATFORM", "Memory accesses ordered by platform"),
    (37, "VIRTIO_F_SR_IOV", "Device supports single root I/O virtualization"),
    (40, "VIRTIO_F_RING_RESET", "Driver can reset a queue individually"),
    (28, "VIRTIO_RING_F_INDIRECT_DESC", "Indirect descriptors supported"),
    (29, "VIRTIO_RING_F_EVENT_IDX", "Used & avail. event fields enabled"),
]

_LOG_ALL = (26, "VHOST_F_LOG_ALL", "Logging write descriptors supported")
_PROTOCOL = (
    30,
    "VHOST_USER_F_PROTOCOL_FEATURES",
    "Vhost-user protocol features negotiation supported",
)

NET_MAP = [
    (0, "VIRTIO_NET_F_CSUM", "Device handling packets with partial checksum supported"),
    (1, "VIRTIO_NET_F_GUEST_CSUM", "Driver handling packets with partial checksum supported"),
    (2, "VIRTIO_NET_F_CTRL_GUEST_OFFLOADS", "Control channel offloading reconfig. supported"),
    (3, "VIRTIO_NET_F_MTU", "Device max MTU reporting supported"),
    (5, "VIRTIO_NET_F_MAC", "Device has given MAC address"),
    (7, "VIRTIO_NET_F_GUEST_TSO4", "Driver can receive TSOv4"),
    (8, "VIRTIO_NET_F_GUEST_TSO6", "Driver can receive TSOv6"),
    (9, "VIRTIO_NET_F_GUEST_ECN", "Driver can receive TSO with ECN"),
    (10, "VIRTIO_NET_F_GUEST_UFO", "Driver can receive UFO"),
    (11, "VIRTIO_NET_F_HOST_TSO4", "Device can receive TSOv4"),
    (12, "VIRTIO_NET_F_HOST_TSO6", "Device can receive TSOv6"),
    (13, "VIRTIO_NET_F_HOST_ECN", "Device can receive TSO with ECN"),
    (14, "VIRTIO_NET_F_HOST_UFO", "Device can receive UFO"),
    (15, "VIRTIO_NET_F_MRG_RXBUF", "Driver can merge receive buffers"),
    (16, "VIRTIO_NET_F_STATUS", "Configuration status field available"),
    (17, "VIRTIO_NET_F_CTRL_VQ", "Control channel available"),
    (18, "VIRTIO_NET_F_CTRL_RX", "Control channel RX mode supported"),
    (19, "VIRTIO_NET_F_CTRL_VLAN", "Control channel VLAN filtering supported"),
    (20, "VIRTIO_NET_F_CTRL_RX_EXTRA", "Extra RX mode control supported"),
    (21, "VIRTIO_NET_F_GUEST_ANNOUNCE", "Driver sending gratuitous packets supported"),
    (22, "VIRTIO_NET_F_MQ", "Multiqueue with automatic receive steering supported"),
    (23, "VIRTIO_NET_F_CTRL_MAC_ADDR", "MAC address set through control channel"),
    (53, "VIRTIO_NET_F_NOTF_COAL", "Device supports coalescing notifications"),
    (54, "VIRTIO_NET_F_GUEST_USO4", "Driver can receive USOv4"),
    (55, "VIRTIO_NET_F_GUEST_USO6", "Driver can receive USOv6"),
    (56, "VIRTIO_NET_F_HOST_USO", "Device can receive USO"),
    (57, "VIRTIO_NET_F_HASH_REPORT", "Hash reporting supported"),
    (60, "VIRTIO_NET_F_RSS", "RSS RX steering supported"),
    (61, "VIRTIO_NET_F_RSC_EXT", "Extended coalescing info supported"),
    (
        62,
        "VIRTIO_NET_F_STANDBY",
        "Device acting as standby for primary device with same MAC addr. supported",
    ),  # noqa: E501
    (63, "VIRTIO_NET_F_SPEED_DUPLEX", "Device set linkspeed and duplex"),
    (6, "VIRTIO_NET_F_GSO", "Handling GSO-type packets supported"),
    (27, "VHOST_NET_F_VIRTIO_NET_HDR", "Virtio-net headers for RX and TX packets supported"),
    _LOG_ALL,
    _PROTOCOL,
]
BLK_MAP = [
    (1, "VIRTIO_BLK_F_SIZE_MAX", "Max segment size is size_max"),
    (2, "VIRTIO_BLK_F_SEG_MAX", "Max segments in a request is seg_max"),
    (4, "VIRTIO_BLK_F_GEOMETRY", "Legacy geometry available"),
    (5, "VIRTIO_BLK_F_RO", "Device is read-only"),
    (6, "VIRTIO_BLK_F_BLK_SIZE", "Block size of disk available"),
    (10, "VIRTIO_BLK_F_TOPOLOGY", "Topology information available"),
    (12, "VIRTIO_BLK_F_MQ", "Multiqueue supported"),
    (13, "VIRTIO_BLK_F_DISCARD", "Discard command supported"),
    (14, "VIRTIO_BLK_F_WRITE_ZEROES", "Write zeroes command supported"),
    (16, "VIRTIO_BLK_F_SECURE_ERASE", "Secure erase supported"),
    (17, "VIRTIO_BLK_F_ZONED", "Zoned block devices"),
    (0, "VIRTIO_BLK_F_BARRIER", "Request barriers supported"),
    (7, "VIRTIO_BLK_F_SCSI", "SCSI packet commands supported"),
    (9, "VIRTIO_BLK_F_FLUSH", "Flush command supported"),
    (11, "VIRTIO_BLK_F_CONFIG_WCE", "Cache writeback and writethrough modes supported"),
    _LOG_ALL,
    _PROTOCOL,
]
SERIAL_MAP = [
    (0, "VIRTIO_CONSOLE_F_SIZE", "Host providing console size"),
    (1, "VIRTIO_CONSOLE_F_MULTIPORT", "Multiple ports for device supported"),
    (2, "VIRTIO_CONSOLE_F_EMERG_WRITE", "Emergency write supported"),
]
GPU_MAP = [
    (0, "VIRTIO_GPU_F_VIRGL", "Virgl 3D mode supported"),
    (1, "VIRTIO_GPU_F_EDID", "EDID metadata supported"),
    (2, "VIRTIO_GPU_F_RESOURCE_UUID", "Resource UUID assigning supported"),
    (3, "VIRTIO_GPU_F_RESOURCE_BLOB", "Size-based blob resources supported"),
    (4, "VIRTIO_GPU_F_CONTEXT_INIT", "Context types and synchronization timelines supported"),
    _LOG_ALL,
    _PROTOCOL,
]
SCSI_MAP = [
    (0, "VIRTIO_SCSI_F_INOUT", "Requests including read and writable data buffers supported"),
    (1, "VIRTIO_SCSI_F_HOTPLUG", "Reporting and handling hot-plug events supported"),
    (2, "VIRTIO_SCSI_F_CHANGE", "Reporting and handling LUN changes supported"),
    (3, "VIRTIO_SCSI_F_T10_PI", "T10 info included in request header"),
    _LOG_ALL,
    _PROTOCOL,
]
BALLOON_MAP = [
    (0, "VIRTIO_BALLOON_F_MUST_TELL_HOST", "Tell host before reclaiming pages"),
    (1, "VIRTIO_BALLOON_F_STATS_VQ", "Guest memory stats VQ available"),
    (2, "VIRTIO_BALLOON_F_DEFLATE_ON_OOM", "Deflate balloon when guest OOM"),
    (3, "VIRTIO_BALLOON_F_FREE_PAGE_HINT", "VQ reporting free pages enabled"),
    (4, "VIRTIO_BALLOON_F_PAGE_POISON", "Guest page poisoning enabled"),
    (5, "VIRTIO_BALLOON_F_REPORTING", "Page reporting VQ enabled"),
]
IOMMU_MAP = [
    (0, "VIRTIO_IOMMU_F_INPUT_RANGE", "Range of available virtual addrs. available"),
    (1, "VIRTIO_IOMMU_F_DOMAIN_RANGE", "Number of supported domains available"),
    (2, "VIRTIO_IOMMU_F_MAP_UNMAP", "Map and unmap requests available"),
    (3, "VIRTIO_IOMMU_F_BYPASS", "Endpoints not attached to domains are in bypass mode"),
    (4, "VIRTIO_IOMMU_F_PROBE", "Probe requests available"),
    (5, "VIRTIO_IOMMU_F_MMIO", "VIRTIO_IOMMU_MAP_F_MMIO flag available"),
    (6, "VIRTIO_IOMMU_F_BYPASS_CONFIG", "Bypass field of IOMMU config available"),
]
MEM_MAP = [
    (1, "VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE", "Unplugged memory cannot be accessed"),
    (
        2,
        "VIRTIO_MEM_F_PERSISTENT_SUSPEND",
        "Plugged memory will remain plugged when suspending+resuming",
    ),  # noqa: E501
]
VHOST_ONLY_MAP = [_LOG_ALL, _PROTOCOL]

#: virtio device id -> QEMU's device name (virtio_id_to_name) and its feature map
DEVICE_TYPES: dict[int, tuple[str, list[tuple[int, str, str]]]] = {
    1: ("virtio-net", NET_MAP),
    2: ("virtio-blk", BLK_MAP),
    3: ("virtio-serial", SERIAL_MAP),
    4: ("virtio-rng", VHOST_ONLY_MAP),
    5: ("virtio-balloon", BALLOON_MAP),
    6: ("virtio-iomem", []),
    7: ("virtio-rpmsg", []),
    8: ("virtio-scsi", SCSI_MAP),
    9: ("virtio-9p", []),
    10: ("virtio-mac-wlan", []),
    11: ("virtio-rproc-serial", []),
    12: ("virtio-caif", []),
    13: ("virtio-mem-balloon", []),
    16: ("virtio-gpu", GPU_MAP),
    17: ("virtio-clk", []),
    18: ("virtio-input", VHOST_ONLY_MAP),
    19: (
        "vhost-vsock",
        [(1, "VIRTIO_VSOCK_F_SEQPACKET", "SOCK_SEQPACKET supported"), _LOG_ALL, _PROTOCOL],
    ),  # noqa: E501
    20: ("virtio-crypto", [_LOG_ALL]),
    21: ("virtio-signal", []),
    22: ("virtio-pstore", []),
    23: ("virtio-iommu", IOMMU_MAP),
    24: ("virtio-mem", MEM_MAP),
    25: ("virtio-sound", []),
    26: ("virtio-user-fs", VHOST_ONLY_MAP),
    27: ("virtio-pmem", []),
    28: ("virtio-rpmb", []),
    29: ("virtio-mac-hwsim", []),
    30: ("virtio-vid-encoder", []),
    31: ("virtio-vid-decoder", []),
    32: ("virtio-scmi", []),
    33: ("virtio-nitro-sec-mod", []),
    34: (
        "vhost-user-i2c",
        [
            (0, "VIRTIO_I2C_F_ZERO_LENGTH_REQUEST", "Zero length requests supported"),
            _LOG_ALL,
            _PROTOCOL,
        ],
    ),  # noqa: E501
    35: ("virtio-watchdog", []),
    36: ("virtio-can", []),
    37: ("virtio-dmabuf", []),
    38: ("virtio-param-serv", []),
    39: ("virtio-audio-pol", []),
    40: ("virtio-bluetooth", []),
    41: (
        "virtio-gpio",
        [(0, "VIRTIO_GPIO_F_IRQ", "Device supports interrupts on GPIO lines"), _PROTOCOL],
    ),  # noqa: E501
}

#: VMSD name of a virtio device section -> virtio device id (transports other than PCI)
VMSD_IDS = {
    "virtio-net": 1,
    "virtio-blk": 2,
    "virtio-console": 3,
    "virtio-serial": 3,
    "virtio-rng": 4,
    "virtio-balloon": 5,
    "virtio-scsi": 8,
    "vhost-scsi": 8,
    "vhost-user-scsi": 8,
    "virtio-9p": 9,
    "virtio-gpu": 16,
    "virtio-input": 18,
    "vhost-vsock": 19,
    "vhost-user-vsock": 19,
    "virtio-crypto": 20,
    "virtio-iommu": 23,
    "virtio-iommu-device": 23,
    "virtio-mem": 24,
    "virtio-sound": 25,
    "vhost-user-fs": 26,
    "virtio-pmem": 27,
}


def device_name(device_id: int) -> str:
    entry = DEVICE_TYPES.get(device_id)
    return entry[0] if entry else f"virtio-{device_id}"


@dataclass
class FeatureList:
    """Decoded feature bits: names in QEMU's print order and the bits no map names."""

    transport: list[str] = field(default_factory=list)
    device: list[str] = field(default_factory=list)
    unknown: int = 0
    descriptions: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return self.transport + self.device


def _convert(table: list[tuple[int, str, str]], bits: int, out: FeatureList) -> tuple[list, int]:
    names: list[str] = []
    for bit, name, desc in table:
        mask = 1 << bit
        if bits & mask:
            names.insert(0, name)  # QEMU prepends
            out.descriptions[name] = desc
            bits ^= mask
    return names, bits


def decode_features(device_id: int | None, bits: int) -> FeatureList:
    """Name the feature bits the way ``qmp_decode_features()`` does."""
    out = FeatureList()
    out.transport, bits = _convert(TRANSPORT_MAP, bits, out)
    table = DEVICE_TYPES.get(device_id, ("", []))[1] if device_id is not None else []
    out.device, bits = _convert(table, bits, out)
    out.unknown = bits
    return out


def decode_status(status: int) -> tuple[list[str], int]:
    """Status names in QEMU's print order, and the bits no name covers."""
    names: list[str] = []
    for bit, name, _ in STATUS_MAP:
        if status & bit:
            names.insert(0, name)
            status ^= bit
    return names, status
