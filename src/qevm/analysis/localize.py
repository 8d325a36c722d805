"""The first field that went out of step.

Two readings of the same section bytes (the source's own description, and
the destination's layout; or one description and the bytes it does not
fit) are lists of :class:`~.loader.Step`.  Where they part — the same
offset read as another field, another array length, another size — is
what QEMU developers otherwise find by hand with two ``-d desc`` dumps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .steps import Step

#: Arrays whose length a destination takes from its own configuration,
#: by (VMSD name, field): what to change to make the two sides agree.
CONFIG_SIZED = {
    ("memory hotplug state", "devs"): "the number of memory hotplug slots (-m ...,slots=N)",
    ("CPU hotplug state", "devs"): "the number of possible CPUs (-smp ...,maxcpus=N)",
    ("cpu_hotplug_state", "devs"): "the number of possible CPUs (-smp ...,maxcpus=N)",
    ("xhci-core", "ports"): "the number of ports (qemu-xhci/nec-usb-xhci p2= and p3=)",
    ("xhci-core", "slots"): "the number of device slots (xhci slots=)",
    ("xhci-core", "intr"): "the number of interrupters (xhci intrs=)",
}


@dataclass
class OutOfStep:
    """Where two readings part, described."""

    path: str
    offset: int
    message: str
    source: Any = None
    destination: Any = None
    hints: list[str] = field(default_factory=list)


def _key(s: Step) -> tuple:
    # A container's size follows from its contents: compare those instead.
    if s.kind == "subsection":
        return (s.path, s.offset, s.value)
    if s.kind in ("field", "element") and s.type in ("struct", "vstruct", "tmp", "qtailq", "qlist"):
        return (s.path, s.offset, s.count)
    return (s.path, s.offset, s.count, s.size)


def out_of_step(
    own: Any, other: list[Step], limit: int | None = None, stopped: bool = False
) -> int | None:
    """Index in ``other`` of the first step that differs from ``own`` (before ``limit``).

    ``stopped``: ``other`` ended because the load stopped there, not because
    its layout had no more fields (then what ``own`` read after is no difference).
    """
    steps = own.steps if hasattr(own, "steps") else own
    for i, s in enumerate(other):
        if limit is not None and s.offset > limit:
            return None
        if i >= len(steps) or _key(steps[i]) != _key(s):
            stopped_in = i < len(steps) and steps[i].path == s.path
            if stopped and i == len(other) - 1 and not s.done and stopped_in:
                return None  # the field it stopped in
            return i
    if len(other) < len(steps) and not stopped:
        nxt = steps[len(other)]
        if limit is None or nxt.offset <= limit:
            return len(other)
    return None


def _amount(s: Step) -> str:
    size = f"{s.size} bytes" if s.done else "not read to its end"
    if s.kind == "subsection":
        return f"subsection {s.path.rsplit('/', 1)[-1]!r} version {s.value} ({size})"
    if s.count != 1:
        return f"{s.count} elements ({size})"
    return size + (f" = {s.value:#x}" if isinstance(s.value, int) else "")


def describe_out_of_step(
    mine: list[Step], theirs: list[Step], limit: int | None = None, stopped: bool = False
) -> OutOfStep | None:
    """Describe the first difference: ``mine`` is the source's own reading."""
    i = out_of_step(mine, theirs, limit, stopped)
    if i is None:
        return None
    a = mine[i] if i < len(mine) else None
    b = theirs[i] if i < len(theirs) else None
    if a is not None and b is not None and a.path == b.path and a.offset == b.offset:
        what = "array length" if a.count != b.count else "size"
        out = OutOfStep(
            a.path,
            a.offset,
            f"first field out of step: {a.path} at {a.offset:#x}: the source wrote "
            f"{_amount(a)}, the destination reads {_amount(b)} ({what} differs)",
            a.count if a.count != b.count else a.size,
            b.count if a.count != b.count else b.size,
        )
        _hint(out, a, "both" if what == "array length" else None)
        return out
    if a is not None and b is not None and a.offset == b.offset:
        # Who went on inside the structure both had been reading has the field
        # the other lacks.
        last = mine[i - 1].path if i else ""
        if _continues(b.path, last) and not _continues(a.path, last):
            a = None
    if a is not None and (b is None or a.offset <= b.offset):
        there = f"; the destination reads {b.path} there instead" if b is not None else ""
        out = OutOfStep(
            a.path,
            a.offset,
            f"first field out of step: {a.path} at {a.offset:#x}: the source wrote "
            f"{_amount(a)} the destination's layout does not have{there}",
            _amount(a),
            None,
        )
        _hint(out, a, "source")
        return out
    assert b is not None
    there = f"; the source wrote {a.path} there" if a is not None else ""
    out = OutOfStep(
        b.path,
        b.offset,
        f"first field out of step: {b.path} at {b.offset:#x}: the destination reads "
        f"{_amount(b)} the source did not write{there}",
        None,
        _amount(b),
    )
    _hint(out, b, "destination")
    return out


def _continues(path: str, last: str) -> bool:
    """Whether ``path`` is a next field of the structure ``last`` was read in."""
    parent = last.rsplit("/", 1)[0] if "/" in last else ""
    return path.startswith(parent + "/") if parent else "/" not in path


def _hint(out: OutOfStep, s: Step, array: str | None) -> None:
    """What sizes the array, when it is known (or that the configuration does)."""
    name = s.path.rsplit("/", 1)[-1]
    why = CONFIG_SIZED.get((s.vmsd or "", name))
    if why is not None:
        out.hints.append(
            f"{s.vmsd!r}.{name} is sized by the destination's configuration: {why} must match "
            "the source's"
        )
    elif array == "both" or (array is not None and s.count != 1):
        out.hints.append(
            f"the length of {name} is not in the stream: each side takes it from its own "
            "configuration (device properties, machine options)"
        )
