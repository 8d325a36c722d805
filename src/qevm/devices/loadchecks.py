"""The checks QEMU makes while it loads a device's own state, for ``qevm check``.

Registered with :mod:`qevm.analysis.hooks` (which only asks; the knowledge
is here, with the decoders):

* every ``pci config`` field (a PCI device's PCIDevice state) as it is
  loaded: the bytes the destination's device has read-only and the source's
  differ in (``get_pci_config_device: Bad config data``), naming the
  register and field;
* every ``virtio`` field: how many bytes the destination's ``virtio_load()``
  reads of the source's and where it refuses (:mod:`.virtio.load`), plus
  the ring checks it makes in guest RAM after loading (the source's RAM).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from ..analysis import hooks
from ..analysis.problems import Problem
from ..errors import QevmError
from .guestmem import GuestMemory, open_guest_memory
from .pci import bar_sizes, config_refusal
from .virtio import build
from .virtio.load import LoadReading, Refusal, parting, read_as_loaded
from .virtio.loadside import LoadSide, side_from_field
from .virtio.section import transport_of

if TYPE_CHECKING:
    from ..analysis.target import Destination
    from ..migration import Migration

_MEMORY: weakref.WeakKeyDictionary[Any, tuple[GuestMemory | None, str | None]] = (
    weakref.WeakKeyDictionary()
)


def _dest_blocks(dest: Destination | None) -> list[tuple[str, int]]:
    if dest is None or dest.blocks is None:
        return []
    return [(b.name, b.used_length) for b in dest.blocks.values()]


@hooks.register_field_check("pci config")
def check_pci_config(ctx: hooks.FieldContext) -> list[Problem]:
    """``get_pci_config_device()``: read-only config bytes must be the destination's."""
    dst = ctx.destination_value
    size = ctx.read_size or 0
    if not isinstance(dst, (bytes, bytearray)) or len(dst) != size or size > len(ctx.data):
        return []
    path = ctx.section.rsplit("/", 1)[0]
    bad = config_refusal(
        bytes(dst), ctx.data[:size], bar_sizes(path, _dest_blocks(ctx.destination))
    )
    if bad is None:
        return []
    return [
        Problem(
            "device",
            f"PCI config byte {bad.offset:#x} is read-only at the destination and differs: "
            f"{bad.describe()}",
            section=ctx.section,
            instance_id=ctx.instance_id,
            field=f"{ctx.path}[{bad.offset:#x}]",
            source=bad.mismatch.read,
            destination=bad.mismatch.device,
            offset=ctx.offset + bad.offset,
            qemu=bad.qemu_message(),
            certain=bad.certain,
            details=bad.details(),
        )
    ]


@hooks.register_field_reader("virtio")
def read_virtio(ctx: hooks.FieldContext) -> hooks.FieldVerdict | None:
    """How the destination's ``virtio_load()`` reads the source's ``virtio`` field."""
    dval = ctx.destination_value
    if not isinstance(dval, (bytes, bytearray)) or ctx.source_field is None:
        return None  # a destination known only by its description: nothing to compare with
    transport = transport_of(ctx.section)
    if transport == "ccw":
        return None  # the CCW transport's own state is not decoded
    size = ctx.source_field.size
    mig = ctx.source
    src_blocks = [(b.name, b.used_length) for b in mig.ram_blocks] if mig is not None else []
    dest_machine = ctx.destination.machine if ctx.destination is not None else None
    source: LoadSide | None
    try:
        source = side_from_field(
            ctx.data[:size],
            ctx.offset,
            ctx.section,
            ctx.vmsd_name,
            transport,
            src_blocks,
            mig.machine if mig is not None else None,
        )
    except QevmError as e:
        source, unparsed = None, str(e)
    try:
        dest = side_from_field(
            bytes(dval),
            0,
            ctx.section,
            ctx.vmsd_name,
            transport,
            _dest_blocks(ctx.destination),
            dest_machine,
        )
    except QevmError as e:
        return hooks.FieldVerdict(
            None, notes=[f"the destination's own virtio state does not parse: {e}"]
        )
    if source is None:
        # QEMU may still stop before what does not parse: then that is the verdict
        got = read_as_loaded(ctx.data, ctx.offset, dest, None, size)
        if got.stops and not any(r.overrun for r in got.refusals):
            return hooks.FieldVerdict(size, [_problem(ctx, r) for r in got.refusals], got.notes)
        return hooks.FieldVerdict(
            None, notes=[f"the source's virtio state does not parse ({unparsed})"]
        )
    own = read_as_loaded(ctx.data, ctx.offset, source, source, size)
    if not own.fits(size):
        why = own.refusals[0].message if own.refusals else f"{own.size} of {size} bytes"
        return hooks.FieldVerdict(
            None,
            notes=[
                "qevm's reading of virtio_load() does not fit the source's own virtio state "
                f"({why}): how the destination reads it is not known"
            ],
        )
    got = read_as_loaded(ctx.data, ctx.offset, dest, source, size)
    problems = [_problem(ctx, r) for r in got.refusals]
    if not got.stops and got.size != size:
        problems.append(_out_of_step(ctx, own, got, size))
    elif got.stops and got.refusals[-1].qemu == f"Missing section footer for {ctx.section}":
        where = parting(own.steps, got.steps)
        if where:
            problems[-1].details.append(where)
    ring_problems, ring_notes = _rings(ctx, source, mig)
    return hooks.FieldVerdict(size, problems + ring_problems, got.notes + ring_notes)


def _problem(ctx: hooks.FieldContext, r: Refusal) -> Problem:
    return Problem(
        "device",
        r.message,
        section=ctx.section,
        instance_id=ctx.instance_id,
        field=f"{ctx.path}/{r.where}" if r.where else ctx.path,
        source=r.source,
        destination=r.destination,
        offset=r.offset,
        qemu=r.qemu,
        certain=r.certain,
        details=list(r.details),
    )


def _out_of_step(ctx: hooks.FieldContext, own: LoadReading, got: LoadReading, size: int) -> Problem:
    read = got.size or 0
    more = "more" if read > size else "fewer"
    where = parting(own.steps, got.steps)
    return Problem(
        "layout",
        f"the destination's virtio_load() reads {abs(read - size)} bytes {more} of the "
        f"virtio state than the source wrote ({read} of {size})",
        section=ctx.section,
        instance_id=ctx.instance_id,
        field=ctx.path,
        source=size,
        destination=read,
        offset=ctx.offset,
        qemu=f"Missing section footer for {ctx.section}",
        details=[where] if where else [],
    )


def _rings(
    ctx: hooks.FieldContext, source: LoadSide, mig: Migration | None
) -> tuple[list[Problem], list[str]]:
    """The checks ``virtio_load()`` makes last, in guest RAM (the source's rings): a
    request count larger than the ring fails the load, an avail index too far ahead
    marks the device broken."""
    if mig is None:
        return [], []
    mem, why = _memory(mig)
    if mem is None:
        return [], [f"the ring checks QEMU makes in guest RAM were not made: {why}"]
    dev = build(source.blob, ctx.section, ctx.instance_id, ctx.vmsd_name, mem)
    end = ctx.offset + (ctx.source_field.size if ctx.source_field else 0)
    problems, notes = [], []
    for q in dev.queues:
        if not q.ring.problem:
            continue
        if not q.ring.fatal:
            notes.append(
                f"queue {q.index}: QEMU loads it but marks the device broken: {q.ring.problem}"
            )
            continue
        problems.append(
            Problem(
                "device",
                f"queue {q.index}'s ring in guest RAM has more requests in flight than it holds",
                section=ctx.section,
                instance_id=ctx.instance_id,
                field=f"{ctx.path}/vq[{q.index}]",
                offset=end,
                qemu=q.ring.problem,
            )
        )
    return problems, notes


def _memory(mig: Migration) -> tuple[GuestMemory | None, str | None]:
    try:
        found = _MEMORY.get(mig)
    except TypeError:
        found = None
    if found is None:
        indexed = mig.ram is not None and getattr(mig.ram.consumer, "tracks_pages", False)
        found = open_guest_memory(mig) if indexed else (None, "RAM not indexed")
        try:
            _MEMORY[mig] = found
        except TypeError:
            pass
    return found
