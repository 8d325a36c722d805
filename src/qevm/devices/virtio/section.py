"""The decoder for virtio device sections (any transport), registered on the field type."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import QevmError
from ..pci import function_from_config
from ..pci.function import parse_path
from ..registry import Context, register_field
from . import build, wire

if TYPE_CHECKING:
    from ...migration import Device
    from ...vmstate.values import StateNode


def transport_of(name: str) -> str:
    """``pci``, ``mmio`` or ``ccw`` from the section's device path."""
    if parse_path(name) is not None:
        return "pci"
    if "virtio-mmio" in name:
        return "mmio"
    return "ccw"


@register_field("virtio")
def decode_virtio_section(dev: Device, state: StateNode, ctx: Context) -> None:
    for node in state.walk():
        for f in node.fields:
            if f.desc.type != "virtio" or not isinstance(f.value, (bytes, bytearray)):
                continue
            try:
                blob = wire.parse(bytes(f.value), f.offset, dev.name, transport_of(dev.name))
            except QevmError as e:
                ctx.warnings.append(f"{dev.name}: virtio state not decoded: {e}")
                return
            v = build(
                blob,
                dev.name,
                dev.instance_id,
                state.vmsd_name,
                ctx.memory,
                big_endian_target=ctx.big_endian_target,
            )
            if ctx.memory is None and ctx.memory_note:
                v.notes.append(f"guest RAM: {ctx.memory_note}")
            if blob.pci_config is not None:
                msix = (blob.msix_table or b"") + (blob.msix_pba or b"")
                fn = function_from_config(
                    ctx,
                    dev,
                    blob.pci_config,
                    blob.pci_config_offset,
                    blob.irq_state,
                    msix if blob.msix_table is not None else None,
                )
                if fn is not None:
                    ctx.add("pci", fn)
                    v.pci_function = fn
            ctx.add("virtio", v)
            ctx.warnings.extend(v.warnings)
            return
