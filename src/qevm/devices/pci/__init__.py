"""PCI functions: configuration space, BARs, capabilities, MSI-X, PCI Express.

>>> from qevm.devices import decode
>>> with qevm.open("vm.mig", index_ram=True) as mig:
...     for f in decode(mig).pci:
...         print(f.address, hex(f.vendor_id), hex(f.device_id), [b.address for b in f.bars()])

For checking a stream against a destination (``qevm check``):

>>> from qevm.devices.pci import qemu_masks
>>> masks = qemu_masks(dst_function.config, dst_function.bar_sizes)
>>> bad = masks.first_mismatch(dst_function.config, src_function.config)
>>> bad.qemu_message() if bad else "loads"

:func:`qemu_masks` rebuilds QEMU's cmask/wmask/w1cmask (the bits
``get_pci_config_device()`` compares on load) from a config space;
:func:`~.masks.register_name` names a config offset.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..registry import Context, register_field
from . import caps, express, header, ids
from .function import PciFunction, assign_buses, parse_path, sort_key
from .loadcheck import VRAM_BARS, ConfigRefusal, bar_sizes, config_refusal
from .masks import ConfigMasks, ConfigMismatch, qemu_masks
from .regnames import register_name

if TYPE_CHECKING:
    from ...migration import Device
    from ...vmstate.values import StateNode


def _field(state: StateNode, ftype: str) -> tuple[bytes, int] | None:
    for node in state.walk():
        for f in node.fields:
            if f.desc.type == ftype and isinstance(f.value, (bytes, bytearray)):
                return bytes(f.value), f.offset
    return None


def bar_sizes_from_blocks(ctx: Context, path: str) -> dict[int, int]:
    """BAR sizes the stream's RAM block list tells: the option ROM and VRAM."""
    return bar_sizes(path, ((b.name, b.used_length) for b in ctx.mig.ram_blocks))


def function_from_config(
    ctx: Context,
    dev: Device,
    config: bytes,
    config_offset: int | None,
    irq_state: list[int] | None,
    msix: bytes | None,
) -> PciFunction | None:
    """A :class:`PciFunction` for a section, or None when its name is not a PCI path."""
    path = parse_path(dev.name)
    if path is None:
        ctx.warnings.append(f"{dev.name}: has a PCI config space but no PCI device path")
        return None
    fn = PciFunction(dev.name, dev.instance_id, path, config, config_offset, irq_state)
    fn.bar_sizes = bar_sizes_from_blocks(ctx, str(path))
    if msix is not None:
        pos = caps.find(config, caps.CAP_MSIX)
        if pos is not None:
            n = (header.u16(config, pos + 2) & 0x7FF) + 1
            fn.msix_table = msix[: 16 * n]
            fn.msix_pba = msix[16 * n :]
    return fn


@register_field("pci config")
def decode_pci_section(dev: Device, state: StateNode, ctx: Context) -> None:
    found = _field(state, "pci config")
    if found is None:
        return
    config, offset = found
    irq = _field(state, "pci irq state")
    irq_state = list(struct.unpack(">4I", irq[0])) if irq and len(irq[0]) == 16 else None
    msix = _field(state, "msix state")
    fn = function_from_config(ctx, dev, config, offset, irq_state, msix[0] if msix else None)
    if fn is not None:
        ctx.add("pci", fn)


def finish(functions: list[PciFunction]) -> list[PciFunction]:
    """Bus numbers from the bridges, then lspci's order."""
    assign_buses(functions)
    return sorted(functions, key=sort_key)


__all__ = [
    "VRAM_BARS",
    "ConfigMasks",
    "ConfigRefusal",
    "ConfigMismatch",
    "PciFunction",
    "bar_sizes",
    "caps",
    "config_refusal",
    "express",
    "header",
    "ids",
    "qemu_masks",
    "register_name",
]
