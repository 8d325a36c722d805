"""Which configuration-space bits QEMU compares when it loads a PCI device.

On load, ``get_pci_config_device()`` (hw/pci/pci.c) refuses the incoming
config space when, for any byte ``i``::

    (incoming[i] ^ device[i]) & cmask[i] & ~wmask[i] & ~w1cmask[i]

is not zero ("Bad config data: i=0x.. read: .. device: .. cmask: .. wmask: ..
w1cmask:..").  ``device`` is the destination's own config space and the
masks are the destination's: built when the device was realized by
``pci_init_cmask/wmask/w1cmask``, ``pci_init_mask_bridge``,
``pci_register_bar``, ``pci_add_capability``/``pcie_add_capability`` and each
capability's init helper (msi.c, msix.c, pcie.c, pcie_aer.c, shpc.c,
virtio-pci.c).  :func:`qemu_masks` rebuilds them from a config space the
same way.  Two things the config space does not say are marked
``uncertain``: the size of a BAR (its writable address bits) when no RAM
block tells it, and registers a device's own realize function made
writable beyond what the generic helpers do (PM control/status); uncertain
bits count as writable, so a mismatch reported from them is never a false
"will fail".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import caps, express, header
from .header import u16, u32
from .regnames import register_name

# sizes QEMU gives pci_add_capability()
_CAP_SIZES = {
    caps.CAP_PM: 8,  # PCI_PM_SIZEOF
    caps.CAP_MSIX: 12,  # MSIX_CAP_LENGTH
    caps.CAP_SSVID: 8,  # PCI_SSVID_SIZEOF
    caps.CAP_SLOTID: 4,  # PCI_SLOTID_CAP_LEN... (ESR + chassis)
    caps.CAP_SHPC: 8,  # SHPC_CAP_LENGTH
    caps.CAP_SATA: 8,  # SATA_CAP_SIZE
}
# sizes QEMU gives pcie_add_capability()
_EXT_SIZES = {
    express.EXT_AER: 0x48,  # PCI_ERR_SIZEOF
    express.EXT_DSN: 0x0C,  # PCI_EXT_CAP_DSN_SIZEOF
    express.EXT_ACS: 8,  # PCI_ACS_SIZEOF
    express.EXT_ARI: 8,  # PCI_ARI_SIZEOF
    express.EXT_ATS: 8,  # PCI_EXT_CAP_ATS_SIZEOF
    express.EXT_SRIOV: 0x40,  # PCI_EXT_CAP_SRIOV_SIZEOF
    express.EXT_PRI: 0x10,
    express.EXT_PASID: 8,
}

# AER register bits (pcie_regs.h / pci_regs.h)
_AER_UNC_SUPPORTED = 0x03FFF030
_AER_COR_SUPPORTED = 0x0000F1C1
_AER_ROOT_CMD_EN = 0x7
_AER_ROOT_STATUS_REPORT = 0x7F
_AER_CAP_ECRC_GENE_CHKE = 0x140
_AER_CAP_MHRE = 0x400
_AER_CAP_MHRC = 0x200


@dataclass
class ConfigMismatch:
    """The first byte QEMU would refuse, with the values its error message prints."""

    offset: int
    read: int
    device: int
    cmask: int
    wmask: int
    w1cmask: int
    #: the bits of the difference that are compared only if a guess is right
    uncertain: int
    register: str
    #: bits of the printed wmask that are a guess (a BAR of unknown size)
    wmask_guessed: int = 0

    def qemu_message(self) -> str:
        """QEMU's own words (``get_pci_config_device``)."""
        return (
            f"get_pci_config_device: Bad config data: i=0x{self.offset:x} read: {self.read:x} "
            f"device: {self.device:x} cmask: {self.cmask:x} wmask: {self.wmask:x} "
            f"w1cmask:{self.w1cmask:x}"
        )


@dataclass
class ConfigMasks:
    """QEMU's per-byte masks for one config space."""

    cmask: bytearray
    wmask: bytearray
    w1cmask: bytearray
    #: bits whose writability was guessed (see the module docstring)
    uncertain: bytearray
    notes: list[str] = field(default_factory=list)

    def compared(self, i: int) -> int:
        """The bits of byte ``i`` QEMU compares on load."""
        return self.cmask[i] & ~self.wmask[i] & ~self.w1cmask[i] & 0xFF

    def compared_bytes(self) -> bytes:
        return bytes(self.compared(i) for i in range(len(self.cmask)))

    def mismatches(self, device: bytes, incoming: bytes) -> list[ConfigMismatch]:
        """Every byte where ``incoming`` (the source's config) differs from ``device``
        (the destination's) in bits QEMU compares, in QEMU's order (the first one is
        the one its error message names)."""
        out = []
        for i in range(min(len(device), len(incoming), len(self.cmask))):
            diff = (incoming[i] ^ device[i]) & self.compared(i)
            if diff:
                out.append(
                    ConfigMismatch(
                        i,
                        incoming[i],
                        device[i],
                        self.cmask[i],
                        self.wmask[i],
                        self.w1cmask[i],
                        diff & self.uncertain[i],
                        register_name(device, i),
                        self.uncertain[i],
                    )
                )
        return out

    def first_mismatch(self, device: bytes, incoming: bytes) -> ConfigMismatch | None:
        found = self.mismatches(device, incoming)
        return found[0] if found else None


def _set(arr: bytearray, off: int, value: int, width: int) -> None:
    arr[off : off + width] = value.to_bytes(width, "little")


def _or(arr: bytearray, off: int, value: int, width: int) -> None:
    cur = int.from_bytes(arr[off : off + width], "little")
    _set(arr, off, cur | value, width)


def qemu_masks(config: bytes, bar_sizes: dict[int, int] | None = None) -> ConfigMasks:
    """QEMU's cmask, wmask and w1cmask for a device whose config space is ``config``.

    ``bar_sizes`` (BAR index -> size, 6 for the ROM) makes the BAR masks exact.
    """
    size = len(config)
    m = ConfigMasks(bytearray(size), bytearray(size), bytearray(size), bytearray(size))
    bar_sizes = bar_sizes or {}
    _header(config, m)
    if header.header_type(config) == header.HEADER_TYPE_BRIDGE:
        _bridge(m)
    _bars(config, m, bar_sizes)
    for pos, cid in caps.walk(config):
        _capability(config, m, pos, cid)
    if size >= 0x1000:
        for pos, cid, _ver in express.walk_ext(config):
            _ext_capability(config, m, pos, cid)
    return m


def _header(cfg: bytes, m: ConfigMasks) -> None:
    # pci_init_cmask
    _set(m.cmask, header.VENDOR_ID, 0xFFFF, 2)
    _set(m.cmask, header.DEVICE_ID, 0xFFFF, 2)
    m.cmask[header.STATUS] = header.STATUS_CAP_LIST
    m.cmask[header.REVISION_ID] = 0xFF
    m.cmask[header.CLASS_PROG] = 0xFF
    _set(m.cmask, header.CLASS_DEVICE, 0xFFFF, 2)
    m.cmask[header.HEADER_TYPE] = 0xFF
    m.cmask[header.CAPABILITY_LIST] = 0xFF
    # pci_init_wmask: everything past the header is writable until a capability claims it
    m.wmask[header.CACHE_LINE_SIZE] = 0xFF
    m.wmask[header.INTERRUPT_LINE] = 0xFF
    _set(m.wmask, header.COMMAND, 0x0507, 2)  # IO MEMORY MASTER INTX_DISABLE SERR
    for i in range(0x40, len(cfg)):
        m.wmask[i] = 0xFF
    # pci_init_w1cmask: PARITY, SIG/REC TARGET ABORT, REC MASTER ABORT, SIG SERR, DET PARITY
    _set(m.w1cmask, header.STATUS, 0xF900, 2)


def _bridge(m: ConfigMasks) -> None:
    # pci_init_mask_bridge
    for i in range(header.PRIMARY_BUS, header.PRIMARY_BUS + 4):
        m.wmask[i] = 0xFF
    m.wmask[header.IO_BASE] = 0xF0
    m.wmask[header.IO_LIMIT] = 0xF0
    _set(m.wmask, header.MEMORY_BASE, 0xFFF0, 2)
    _set(m.wmask, header.MEMORY_LIMIT, 0xFFF0, 2)
    _set(m.wmask, header.PREF_MEMORY_BASE, 0xFFF0, 2)
    _set(m.wmask, header.PREF_MEMORY_LIMIT, 0xFFF0, 2)
    for i in range(header.PREF_BASE_UPPER32, header.PREF_BASE_UPPER32 + 8):
        m.wmask[i] = 0xFF
    _set(m.wmask, header.BRIDGE_CONTROL, 0x0BFF, 2)  # every control bit but DISCARD_STATUS
    _set(m.w1cmask, header.BRIDGE_CONTROL, 0x0400, 2)  # DISCARD_STATUS
    m.cmask[header.IO_BASE] |= 0x0F
    m.cmask[header.IO_LIMIT] |= 0x0F
    _or(m.cmask, header.PREF_MEMORY_BASE, 0x000F, 2)
    _or(m.cmask, header.PREF_MEMORY_LIMIT, 0x000F, 2)


def _bars(cfg: bytes, m: ConfigMasks, sizes: dict[int, int]) -> None:
    # pci_register_bar: cmask all ones, wmask ~(size - 1) (the ROM's enable bit too)
    for bar in header.bars(cfg):
        off = header.BAR0 + 4 * bar.index
        width = 8 if bar.kind == "mem64" else 4
        _set(m.cmask, off, (1 << (8 * width)) - 1, width)
        low_bits = 0x3 if bar.kind == "io" else 0xF
        size = sizes.get(bar.index)
        if size:
            _set(m.wmask, off, ~(size - 1) & ((1 << (8 * width)) - 1), width)
        else:
            # the address bits are writable from the BAR's size up: without the size,
            # every address bit counts as writable and the low ones are a guess
            _set(m.wmask, off, ~low_bits & ((1 << (8 * width)) - 1), width)
            guess = _lowest_set(bar.address) - 1 if bar.address else (1 << (8 * width)) - 1
            _set(m.uncertain, off, guess & ~low_bits & ((1 << (8 * width)) - 1), width)
            m.notes.append(f"BAR{bar.index}: size unknown, its low address bits are a guess")
    rom_off = header.ROM_ADDRESS1 if header.header_type(cfg) == 1 else header.ROM_ADDRESS
    rom = header.rom_bar(cfg, sizes.get(6))
    if rom is not None:
        _set(m.cmask, rom_off, 0xFFFFFFFF, 4)
        if rom.size:
            _set(m.wmask, rom_off, (~(rom.size - 1) | 1) & 0xFFFFFFFF, 4)
        else:
            _set(m.wmask, rom_off, 0xFFFFF801, 4)
            _set(m.uncertain, rom_off, 0xFFFFF800, 4)
            m.notes.append("expansion ROM: size unknown, its low address bits are a guess")


def _lowest_set(x: int) -> int:
    return x & -x


def _claim(m: ConfigMasks, pos: int, size: int) -> None:
    """pci_add_capability / pcie_add_capability: read-only and compared by default."""
    end = min(pos + size, len(m.cmask))
    for i in range(pos, end):
        m.cmask[i] = 0xFF
        m.wmask[i] = 0
        m.w1cmask[i] = 0


def _capability(cfg: bytes, m: ConfigMasks, pos: int, cid: int) -> None:
    if cid == caps.CAP_MSI:
        flags = u16(cfg, pos + 2)
        is64, maskbit, size = caps.msi_layout(flags)
        _claim(m, pos, size)
        _set(m.wmask, pos + 2, 0x0071, 2)  # QSIZE | ENABLE
        _set(m.wmask, pos + 4, 0xFFFFFFFC, 4)
        if is64:
            _set(m.wmask, pos + 8, 0xFFFFFFFF, 4)
        _set(m.wmask, pos + (0x0C if is64 else 0x08), 0xFFFF, 2)
        if maskbit:
            nr = 1 << ((flags >> 1) & 7)
            _set(m.wmask, pos + (0x10 if is64 else 0x0C), 0xFFFFFFFF >> (32 - nr), 4)
        return
    if cid == caps.CAP_EXP:
        version = u16(cfg, pos + express.EXP_FLAGS) & 0xF
        _claim(m, pos, 0x14 if version == 1 else 0x3C)
        _express(cfg, m, pos, version)
        return
    if cid == caps.CAP_VNDR:
        _claim(m, pos, max(cfg[pos + 2], 2))
        if caps.is_virtio(cfg) and cfg[pos + 3] == 5 and cfg[pos + 2] >= 20:
            # virtio-pci's VIRTIO_PCI_CAP_PCI_CFG window: bar, offset, length, data
            m.wmask[pos + 4] = 0xFF
            _set(m.wmask, pos + 8, 0xFFFFFFFF, 4)
            _set(m.wmask, pos + 12, 0xFFFFFFFF, 4)
            _set(m.wmask, pos + 16, 0xFFFFFFFF, 4)
        return
    size = _CAP_SIZES.get(cid)
    if size is None:
        nxt = cfg[pos + 1] & 0xFC
        size = nxt - pos if nxt > pos else 4
        m.notes.append(f"capability {cid:#04x} at {pos:#x}: size not known, assumed {size}")
    _claim(m, pos, size)
    if cid == caps.CAP_MSIX:
        m.wmask[pos + 3] |= 0xC0  # MSIX_ENABLE_MASK | MSIX_MASKALL_MASK
    elif cid == caps.CAP_PM:
        # the state bits are writable on every QEMU device with PM; PME enable/status
        # when the device signals PME (e1000e, ...): a device's own choice
        _set(m.wmask, pos + 4, 0x0003, 2)
        if u16(cfg, pos + 2) >> 11:
            _or(m.wmask, pos + 4, 0x0100, 2)
            _set(m.w1cmask, pos + 4, 0x8000, 2)
            _or(m.uncertain, pos + 4, 0x8100, 2)
    elif cid == caps.CAP_SHPC:
        m.wmask[pos + 2] = 0xFF  # SHPC_CAP_DWORD_SELECT
        _set(m.wmask, pos + 4, 0xFFFFFFFF, 4)  # SHPC_CAP_DWORD_DATA


def _express(cfg: bytes, m: ConfigMasks, pos: int, version: int) -> None:
    flags = u16(cfg, pos + express.EXP_FLAGS)
    ptype = (flags >> 4) & 0xF
    # pcie_cap_v1_fill: link status is not compared
    _set(m.cmask, pos + express.EXP_LNKSTA, 0, 2)
    # pcie_cap_deverr_init
    _or(m.wmask, pos + express.EXP_DEVCTL, 0x000F, 2)
    _or(m.w1cmask, pos + express.EXP_DEVSTA, 0x000F, 2)
    # pcie_cap_lnkctl_init
    _or(m.wmask, pos + express.EXP_LNKCTL, 0x00C0, 2)
    if u32(cfg, pos + express.EXP_DEVCAP) & 0x10000000:  # pcie_cap_flr_init
        _or(m.wmask, pos + express.EXP_DEVCTL, 0x8000, 2)
    if version >= 2:
        _set(m.wmask, pos + express.EXP_DEVCTL2, 0x8000, 2)  # EETLPPB
        if u32(cfg, pos + express.EXP_DEVCAP2) & 0x20:  # pcie_cap_arifwd_init
            _or(m.wmask, pos + express.EXP_DEVCTL2, 0x0020, 2)
    if flags & express.EXP_FLAGS_SLOT:  # pcie_cap_slot_init
        sltctl = 0x0BF9  # PIC AIC HPIE CCIE PDCE ABPE EIC
        if u32(cfg, pos + express.EXP_SLTCAP) & 0x2:  # power controller present: PCC
            sltctl |= 0x0400
        _or(m.wmask, pos + express.EXP_SLTCTL, sltctl, 2)
        _or(m.w1cmask, pos + express.EXP_SLTSTA, 0x0019, 2)  # ABP PDC CCI
    if ptype == express.TYPE_ROOT_PORT:  # pcie_cap_root_init
        _set(m.wmask, pos + express.EXP_RTCTL, 0x0007, 2)


def _ext_capability(cfg: bytes, m: ConfigMasks, pos: int, cid: int) -> None:
    size = _EXT_SIZES.get(cid)
    if size is None:
        nxt = (u32(cfg, pos) >> 20) & 0xFFC
        size = nxt - pos if nxt > pos else 8
        m.notes.append(f"extended capability {cid:#06x} at {pos:#x}: size assumed {size}")
    _claim(m, pos, size)
    if cid == express.EXT_AER:
        _set(m.w1cmask, pos + express.AER_UNCOR_STATUS, _AER_UNC_SUPPORTED, 4)
        _set(m.wmask, pos + express.AER_UNCOR_MASK, _AER_UNC_SUPPORTED, 4)
        _set(m.wmask, pos + express.AER_UNCOR_SEVER, _AER_UNC_SUPPORTED, 4)
        _set(m.w1cmask, pos + express.AER_COR_STATUS, _AER_COR_SUPPORTED, 4)
        _set(m.wmask, pos + express.AER_COR_MASK, _AER_COR_SUPPORTED, 4)
        capctl = _AER_CAP_ECRC_GENE_CHKE
        if u32(cfg, pos + express.AER_CAP) & _AER_CAP_MHRC:
            capctl |= _AER_CAP_MHRE
        _set(m.wmask, pos + express.AER_CAP, capctl, 4)
        exp = caps.find(cfg, caps.CAP_EXP)
        if exp is not None and express.port_type(cfg, exp) == express.TYPE_ROOT_PORT:
            # pcie_aer_root_init
            _set(m.wmask, pos + express.AER_ROOT_COMMAND, _AER_ROOT_CMD_EN, 4)
            _set(m.w1cmask, pos + express.AER_ROOT_STATUS, _AER_ROOT_STATUS_REPORT, 4)
    elif cid == express.EXT_ATS:
        _set(m.wmask, pos + 6, 0x800F, 2)
    elif cid == express.EXT_ACS:
        _set(m.wmask, pos + 6, u16(cfg, pos + 4), 2)
    elif cid == express.EXT_SRIOV:
        _set(m.wmask, pos + 8, 0x0019, 2)  # VF enable, VF MSE, ARI hierarchy
        _set(m.wmask, pos + 0x10, 0xFFFF, 2)  # NumVFs
        _set(m.wmask, pos + 0x20, 0xFFFFFFFF, 4)  # system page size
        for i in range(6):
            _set(m.wmask, pos + 0x24 + 4 * i, 0xFFFFFFF0, 4)
            _set(m.uncertain, pos + 0x24 + 4 * i, 0xFFFFFFF0, 4)
