"""Will a destination's PCI device take the source's config space?  And what differs.

QEMU loads a PCI device's config space with ``get_pci_config_device()``
(hw/pci/pci.c), which refuses bytes that differ in bits the destination's
device has read-only (:mod:`.masks`).  :func:`config_refusal` makes that
comparison and names what differs the way a developer would look for it:
the register and, inside it, the field (``MSI-X capability at 0x98:
Message Control, Table Size: 3 at the source, 4 at the destination``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from . import caps, express, header
from .masks import ConfigMismatch, qemu_masks

#: Bit fields of registers whose values say more than their bytes: register offset
#: (from its capability, or in the header) -> (width, [(mask, name, value formatter)])
_Fmt = Callable[[int], str] | None
_BITS: dict[int | None, dict[int, tuple[int, list[tuple[int, str, _Fmt]]]]] = {
    None: {  # the header
        header.VENDOR_ID: (2, [(0xFFFF, "Vendor ID", hex)]),
        header.DEVICE_ID: (2, [(0xFFFF, "Device ID", hex)]),
        header.STATUS: (2, [(header.STATUS_CAP_LIST, "Capabilities List", None)]),
        header.REVISION_ID: (1, [(0xFF, "Revision ID", hex)]),
        header.CLASS_PROG: (1, [(0xFF, "Programming Interface", hex)]),
        header.CLASS_DEVICE: (2, [(0xFFFF, "Class", hex)]),
        header.HEADER_TYPE: (1, [(0x7F, "Header Type", hex), (0x80, "Multi-Function", None)]),
        header.CAPABILITY_LIST: (1, [(0xFF, "Capabilities Pointer", hex)]),
        header.SUBSYSTEM_VENDOR_ID: (2, [(0xFFFF, "Subsystem Vendor ID", hex)]),
        header.SUBSYSTEM_ID: (2, [(0xFFFF, "Subsystem ID", hex)]),
        header.INTERRUPT_PIN: (1, [(0xFF, "Interrupt Pin", None)]),
    },
    caps.CAP_MSIX: {
        2: (
            2,
            [
                (0x07FF, "Table Size", lambda v: f"{v + 1} vectors"),
                (0x4000, "Function Mask", None),
                (0x8000, "MSI-X Enable", None),
            ],
        ),
        4: (4, [(0x7, "Table BIR", None), (0xFFFFFFF8, "Table Offset", hex)]),
        8: (4, [(0x7, "PBA BIR", None), (0xFFFFFFF8, "PBA Offset", hex)]),
    },
    caps.CAP_MSI: {
        2: (
            2,
            [
                (0x0001, "MSI Enable", None),
                (0x000E, "Multiple Message Capable", lambda v: f"{1 << v} vectors"),
                (0x0070, "Multiple Message Enable", lambda v: f"{1 << v} vectors"),
                (0x0080, "64-bit Address Capable", None),
                (0x0100, "Per-Vector Masking Capable", None),
            ],
        ),
    },
    caps.CAP_PM: {
        2: (
            2,
            [
                (0x0007, "Version", None),
                (0x0008, "PME Clock", None),
                (0x0020, "Device Specific Initialization", None),
                (0x01C0, "Aux Current", None),
                (0x0200, "D1 Support", None),
                (0x0400, "D2 Support", None),
                (0xF800, "PME Support", hex),
            ],
        ),
    },
    caps.CAP_EXP: {
        express.EXP_FLAGS: (
            2,
            [
                (0x000F, "Capability Version", None),
                (0x00F0, "Device/Port Type", lambda v: express.PORT_TYPES.get(v, str(v))),
                (0x0100, "Slot Implemented", None),
                (0x3E00, "Interrupt Message Number", None),
            ],
        ),
        express.EXP_DEVCAP: (
            4,
            [
                (0x00000007, "Max Payload Size Supported", lambda v: f"{128 << v} bytes"),
                (0x00008000, "Role-Based Error Reporting", None),
                (0x10000000, "Function Level Reset Capability", None),
            ],
        ),
        express.EXP_LNKCAP: (
            4,
            [
                (0x0000000F, "Max Link Speed", None),
                (0x000003F0, "Max Link Width", lambda v: f"x{v}"),
                (0x00000C00, "ASPM Support", None),
                (0x00100000, "Data Link Layer Link Active Reporting", None),
                (0xFF000000, "Port Number", None),
            ],
        ),
        express.EXP_SLTCAP: (
            4,
            [
                (0x00000001, "Attention Button Present", None),
                (0x00000002, "Power Controller Present", None),
                (0x00000004, "MRL Sensor Present", None),
                (0x00000008, "Attention Indicator Present", None),
                (0x00000010, "Power Indicator Present", None),
                (0x00000020, "Hot-Plug Surprise", None),
                (0x00000040, "Hot-Plug Capable", None),
                (0x00040000, "No Command Completed Support", None),
                (0xFFF80000, "Physical Slot Number", None),
            ],
        ),
    },
}


@dataclass
class ConfigRefusal:
    """The byte QEMU refuses first, with what it is and both sides' values."""

    mismatch: ConfigMismatch
    #: ``MSI-X capability at 0x98: Message Control (byte 0)``
    register: str
    #: the fields of the register that differ: ``Table Size: 3 vectors (source), 4 vectors
    #: (destination)``
    fields: list[str] = field(default_factory=list)
    #: False when the refusal rests on a guessed mask bit (a BAR size qevm does not know)
    certain: bool = True
    #: every further byte QEMU would refuse (it stops at the first)
    more: int = 0

    @property
    def offset(self) -> int:
        return self.mismatch.offset

    def qemu_message(self) -> str:
        """QEMU's words; when the destination's wmask for the byte rests on a BAR size
        qevm does not know, only up to it (``... wmask: ...``)."""
        text = self.mismatch.qemu_message()
        if self.mismatch.wmask_guessed:
            text = text[: text.index(" wmask: ") + len(" wmask: ")] + "..."
        return text

    def details(self) -> list[str]:
        """What else to know: further refused bytes, guesses, where a value comes from."""
        out = []
        if self.more:
            out.append(f"{self.more} more config byte(s) differ in bits the destination checks")
        if not self.certain:
            out.append("the differing bits are compared only if a BAR is as small as qevm guessed")
        if any(f.startswith("Table Size") for f in self.fields):
            out.append(
                "the MSI-X table size comes from the device's configuration (virtio-pci: "
                "vectors=, by default from its queue count: virtio-net 2 x queue pairs + 2, "
                "virtio-blk num-queues + 1)"
            )
        if self.mismatch.wmask_guessed:
            out.append(
                "QEMU's message also prints the byte's wmask, which depends on the BAR's size "
                "(no RAM block tells it)"
            )
        return out

    def describe(self) -> str:
        """``MSI-X capability at 0x98: Message Control, Table Size: 3 vectors at the source,
        4 vectors at the destination``."""
        if self.fields:
            return f"{self.register.split(' (byte')[0]}: {'; '.join(self.fields)}"
        m = self.mismatch
        return f"{self.register}: {m.read:#04x} at the source, {m.device:#04x} at the destination"


def config_refusal(
    destination: bytes, source: bytes, bar_sizes: dict[int, int] | None = None
) -> ConfigRefusal | None:
    """The first config byte QEMU refuses when ``source`` is loaded into a device whose
    config space is ``destination``, or None when it takes it."""
    masks = qemu_masks(destination, bar_sizes)
    found = masks.mismatches(destination, source)
    if not found:
        return None
    first = found[0]
    out = ConfigRefusal(first, first.register, more=len(found) - 1)
    out.fields = _differing_fields(destination, source, first.offset, masks.compared(first.offset))
    lone = _lone_capability(destination, source, first.offset)
    if lone:
        out.fields.insert(0, lone)
    diff = (first.read ^ first.device) & masks.compared(first.offset)
    out.certain = bool(diff & ~first.uncertain)
    return out


def _differing_fields(dst: bytes, src: bytes, i: int, compared: int) -> list[str]:
    found = _register_at(dst, i)
    if found is None:
        return []
    start, width, bits = found
    dv = int.from_bytes(dst[start : start + width], "little")
    sv = int.from_bytes(src[start : start + width], "little")
    shift = 8 * (i - start)
    diff = (dv ^ sv) & (compared << shift)
    out = []
    for mask, name, fmt in bits:
        if not diff & mask:
            continue
        low = (mask & -mask).bit_length() - 1
        s, d = (sv & mask) >> low, (dv & mask) >> low
        show = fmt or (lambda v: str(v))
        out.append(f"{name} {show(s)} at the source, {show(d)} at the destination")
    return out


def _capabilities(cfg: bytes) -> dict[int, int]:
    """Capability position -> id, standard and extended."""
    out = dict(caps.walk(cfg))
    if len(cfg) >= 0x1000:
        out.update((pos, cid) for pos, cid, _ in express.walk_ext(cfg))
    return out


def _lone_capability(dst: bytes, src: bytes, i: int) -> str | None:
    """``the destination has an Advanced Error Reporting capability at 0x100, the source
    none`` when byte ``i`` is in a capability only one side has there."""
    mine, theirs = _capabilities(dst), _capabilities(src)
    for side, here, there in (("destination", mine, theirs), ("source", theirs, mine)):
        starts = [pos for pos in here if pos <= i]
        if not starts:
            continue
        pos = max(starts)
        cid = here[pos]
        if there.get(pos) == cid or pos + 0x48 < i:
            continue
        names = express.EXT_NAMES if pos >= 0x100 else caps.CAP_NAMES
        other = there.get(pos)
        name = names.get(cid, f"{cid:#x}")
        other_text = f"has {names.get(other, hex(other))}" if other is not None else "has none"
        return (
            f"the {side} has {'an' if name[0] in 'AEIOU' else 'a'} {name} capability at "
            f"{pos:#x}, the {'source' if side == 'destination' else 'destination'} {other_text}"
        )
    return None


def _register_at(cfg: bytes, i: int) -> tuple[int, int, list[tuple[int, str, _Fmt]]] | None:
    """``(start, width, bit fields)`` of the register holding byte ``i`` (destination's view)."""
    if i < 0x40:
        table, base = _BITS[None], 0
    else:
        best = None
        for pos, cid in caps.walk(cfg):
            if pos <= i and (best is None or pos > best[0]):
                best = (pos, cid)
        if best is None or best[1] not in _BITS:
            return None
        base, table = best[0], _BITS[best[1]]
    for off, (width, bits) in table.items():
        if base + off <= i < base + off + width:
            return base + off, width, bits
    return None


def bar_sizes(path: str, blocks: Iterable[tuple[str, int]]) -> dict[int, int]:
    """BAR sizes a device's RAM blocks tell (``path`` its device path, ``blocks`` every
    ``(name, used_length)``): the option ROM (``<path>/*.rom``) and VRAM."""
    out: dict[int, int] = {}
    for name, used in blocks:
        if not name.startswith(path + "/"):
            continue
        leaf = name[len(path) + 1 :]
        size = 1 << max(used - 1, 0).bit_length()
        if leaf.endswith(".rom") and "/" not in leaf:
            out[6] = size
        elif leaf in VRAM_BARS:
            out[VRAM_BARS[leaf]] = size
    return out


#: RAM blocks a PCI device maps through a BAR: block name -> BAR index
#: (QEMU's std VGA, secondary-vga, bochs-display and cirrus put VRAM in BAR 0)
VRAM_BARS = {"vga.vram": 0, "cirrus_vga.vram": 0, "qxl.vgavram": 0, "vmsvga.vram": 1}
