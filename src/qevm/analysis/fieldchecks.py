"""What a destination checks of a field it loads, beyond the field's layout.

QEMU's own field types compare the value read with the destination's
(``*_EQUAL``: ``get_uint32_equal`` and the like, ``INT32_POSITIVE_LE``:
``get_int32_le``) and stop the load when it differs.  A device's load
function may read an opaque field differently from its declared size, or
refuse bytes in it (PCI config, virtio): the device decoders say how through
:mod:`.hooks`, and the :class:`~.loader.Loader` asks them here with a
:class:`~.hooks.FieldContext` of the field.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from . import hooks
from .steps import Doubt, Frame, Stop

if TYPE_CHECKING:
    from ..vmstate.desc import FieldDesc
    from ..vmstate.values import FieldValue
    from .loader import Loader

#: The ``*_equal`` field types and how QEMU words a difference (migration/vmstate-types.c).
EQUAL_FORMATS = {
    "uint8 equal": "{dst:x} != {src:x}",
    "uint16 equal": "{dst:x} != {src:x}",
    "uint32 equal": "{dst:x} != {src:x}",
    "int32 equal": "{dst} != {src}",
    "int64 equal": "{dst:x} != {src:x}",
}


def compare_with_destination(
    f: FieldDesc, value: Any, dval: FieldValue | None, path: str, off: int
) -> None:
    """The checks of QEMU's ``*_equal`` and ``int32_le`` field types (raises :class:`Stop`)."""
    if f.type not in EQUAL_FORMATS and f.type != "int32 le":
        return
    if dval is None or f.count != 1 or not isinstance(value, int):
        return
    dst = dval.value
    if not isinstance(dst, int):
        return
    if f.type == "int32 le":
        if 0 <= value <= dst:
            return
        msg = f"Invalid value {value} expecting positive value <= {dst}"
    else:
        if value == dst:
            return
        msg = EQUAL_FORMATS[f.type].format(dst=dst, src=value)
    raise Stop("value", msg, off, path, source=value, destination=dst)


def field_context(
    loader: Loader,
    frame: Frame,
    f: FieldDesc,
    peer: FieldDesc | None,
    path: str,
    start: int,
    dval: FieldValue | None,
    read_size: int | None = None,
) -> hooks.FieldContext:
    """What a device's field reader or check is told: the field on both sides, the source's
    bytes from the field to the section's end, the destination's value, both sides' devices."""
    return hooks.FieldContext(
        loader.section,
        loader.instance_id,
        frame.desc.vmsd_name,
        path,
        f,
        peer,
        bytes(loader.data[start - loader.base : loader.end - loader.base]),
        start,
        dval.value if dval is not None else None,
        loader.context.get("destination"),  # type: ignore[arg-type]
        loader.context.get("source"),
        read_size=read_size,
    )


def opaque_as_loaded(
    loader: Loader,
    frame: Frame,
    f: FieldDesc,
    peer: FieldDesc,
    path: str,
    start: int,
    dval: FieldValue | None,
) -> FieldDesc:
    """The field as the destination reads it when the device's load function decides its
    size (an opaque field, or one of another size on each side): its registered reader's
    size, else the source's size with a doubt."""
    reader = hooks.field_reader(f.type)
    verdict = None
    if reader is not None:
        verdict = reader(field_context(loader, frame, f, peer, path, start, dval))
    if verdict is not None:
        loader.notes.extend(verdict.notes)
    if verdict is not None and verdict.size is not None:
        if verdict.problems:
            loader.doubts.append(
                Doubt("device", path, start, "", peer.size, f.size, list(verdict.problems))
            )
        return dataclasses.replace(f, size=verdict.size, ftype=None)
    if peer.size == f.size:
        return f
    loader.doubts.append(
        Doubt(
            "unexplained",
            path,
            start,
            f"{f.type} field {path}: the source wrote {peer.size} bytes, the destination "
            f"{f.size}; how many its load function reads is the device's own code "
            "(not yet explained by qevm)",
            peer.size,
            f.size,
            list(verdict.problems) if verdict is not None else [],
        )
    )
    return dataclasses.replace(f, size=peer.size, ftype=None)


def run_field_checks(
    loader: Loader,
    checks: list[hooks.FieldCheck],
    frame: Frame,
    f: FieldDesc,
    peer: FieldDesc | None,
    path: str,
    start: int,
    dval: FieldValue | None,
) -> None:
    """The checks a device's own get() makes on a field it loaded (PCI config bytes)."""
    ctx = field_context(loader, frame, f, peer, path, start, dval, loader.r.offset - start)
    for fn in checks:
        problems = list(fn(ctx) or ())
        if problems:
            loader.doubts.append(Doubt("device", path, start, "", problems=problems))
