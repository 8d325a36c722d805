"""Changing decoded device state, so that the writer encodes the change.

A field is named ``NAME#INSTANCE:field``: ``NAME`` is the section name
(``cpu``, ``0000:00:02.0/e1000``), ``#INSTANCE`` its instance id (default
0), ``field`` the description's field names with ``[i]`` for an element of
an array (elements of entries QEMU split by ``index`` or into NULL runs are
counted together) and ``/`` to step into a struct element or a subsection,
e.g. ``cpu#0:env.regs[0]`` or ``cpu:cpu/async_pf_msr/env.async_pf_en_msr``.

Values are parsed and checked by the field's type (:meth:`FieldType.parse`:
integer width and sign, booleans, hex bytes).  A buffer given a different
length changes the sizes the JSON description records — of the field and of
every struct or list around it — and the description is written anew.

Only buffers whose length QEMU reads from another field may change length
(``VMSTATE_VBUFFER*``: the size is a 32-bit integer of the same structure,
loaded before the buffer); the description does not say which field that is,
so a buffer counts as variable when such an integer held its length, and the
edit must set that integer to the new length too (:func:`check_sizes`, run
before a stream is written).  Fixed buffers (``VMSTATE_BUFFER``,
``VMSTATE_BUFFER_POINTER_UNSAFE``...) keep their length: QEMU would read its
own.  (A fixed buffer whose length an unrelated integer happens to equal
passes only if that integer is changed too.)  An old-style section's data is
the whole section and may change.
"""

from __future__ import annotations

import difflib
import re
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .stream import DescriptionRecord
from .vmstate.codec import Encoder
from .vmstate.desc import DeviceDesc, FieldDesc
from .vmstate.types import BytesType, GTreeValue, IntType, ListType, field_type
from .vmstate.values import FieldValue, StateNode
from .wire import Writer

if TYPE_CHECKING:
    from .migration import Device, Migration

_INDEX = re.compile(r"\[(\d+)\]\Z")
#: Types whose length varies with the device's state (VMSTATE_VBUFFER and friends).
RESIZABLE = frozenset({"buffer"})


@dataclass
class Step:
    """One field on the way to the target: the entry, and which element of it."""

    fv: FieldValue
    #: Index into ``fv.value`` when the entry holds several elements (or a list).
    item: int | None


@dataclass
class FieldRef:
    """Where a path leads: the device, the fields stepped through, the last one."""

    device: Device
    path: str
    #: The part of ``path`` after the device.
    field: str
    steps: list[Step]

    @property
    def label(self) -> str:
        """``NAME#INSTANCE:field``."""
        return f"{self.device.name}#{self.device.instance_id}:{self.field}"

    @property
    def target(self) -> Step:
        return self.steps[-1]

    @property
    def value(self) -> Any:
        """The current value of the element."""
        t = self.target
        return t.fv.value if t.item is None else t.fv.value[t.item]


# -- paths --------------------------------------------------------------------------


def split_path(mig: Migration, path: str) -> tuple[list[Device], str]:
    """The device sections a path names, and the field part of it."""
    names: dict[tuple[str, int], list[Device]] = {}
    for d in mig.devices():
        names.setdefault((d.name, d.instance_id), []).append(d)
    for i in [m.start() for m in re.finditer(":", path)][::-1]:
        name, field = path[:i], path[i + 1 :]
        instance = 0
        head, sep, num = name.rpartition("#")
        if sep and num.isdigit():
            name, instance = head, int(num)
        found = names.get((name, instance))
        if found:
            if not field:
                raise UsageError(f"{path!r}: name a field after {name!r}:")
            return found, field
    if ":" not in path:
        raise UsageError(f"{path!r}: write NAME[#INSTANCE]:FIELD, e.g. cpu#0:env.regs[0]")
    label = path.rpartition(":")[0]
    labels = sorted({f"{n}#{i}" if i else n for n, i in names})
    near = difflib.get_close_matches(label, labels, n=5, cutoff=0.4)
    hint = f"; close: {', '.join(near)}" if near else f"; devices: {', '.join(labels[:20])}"
    raise UsageError(f"no device section {label!r} in the stream{hint}")


def resolve(mig: Migration, path: str) -> list[FieldRef]:
    """Every element ``path`` names (one per matching device section)."""
    devices, field_path = split_path(mig, path)
    out = []
    for dev in devices:
        state = dev.state
        if state is None:
            raise UsageError(
                f"{dev.name!r} has no decoded state (the stream has no description for it; "
                "give one with --desc)"
            )
        steps = _walk(state, field_path.split("/"), path)
        out.append(FieldRef(dev, path, field_path, steps))
    return out


def _walk(node: StateNode, segs: list[str], path: str) -> list[Step]:
    """Follow ``segs`` from ``node`` to one element."""
    # Subsection names contain "/" themselves: the longest full name wins, then
    # a field, then a subsection by the last part of its name.
    for k in range(len(segs), 0, -1):
        name = "/".join(segs[:k])
        for s in node.subsections:
            if s.name == name:
                return _subsection(s.node, segs, k, path)
    seg = segs[0]
    if not any(f.desc.name == seg or _INDEX.sub("", seg) == f.desc.name for f in node.fields):
        for s in node.subsections:
            if s.name.rsplit("/", 1)[-1] == seg:
                return _subsection(s.node, segs, 1, path)
    name, index = seg, None
    if not any(f.desc.name == seg for f in node.fields):
        m = _INDEX.search(seg)
        if m:
            name, index = seg[: m.start()], int(m.group(1))
    entries = [f for f in node.fields if f.desc.name == name]
    if not entries:
        raise UsageError(f"{path!r}: no field {seg!r} in {node.vmsd_name!r}{_near(node, name)}")
    step, element = _element(entries, index, name, path)
    rest = segs[1:]
    if not rest:
        if isinstance(element, (StateNode, list, GTreeValue)):
            raise UsageError(f"{path!r}: {seg!r} is a {entries[0].desc.type}; name a field in it")
        return [step]
    if isinstance(element, StateNode):
        return [step, *_walk(element, rest, path)]
    raise UsageError(f"{path!r}: {seg!r} is a {entries[0].desc.type}, not a struct")


def _subsection(node: StateNode, segs: list[str], k: int, path: str) -> list[Step]:
    if k == len(segs):
        raise UsageError(f"{path!r}: {'/'.join(segs)!r} is a subsection; name a field in it")
    return _walk(node, segs[k:], path)


def _element(
    entries: list[FieldValue], index: int | None, name: str, path: str
) -> tuple[Step, Any]:
    """The entry and element ``index`` selects among a field's entries."""
    first = entries[0]
    t = field_type(first.desc)
    if len(entries) == 1 and first.desc.count == 1:
        value = first.value
        if isinstance(t, ListType) or isinstance(value, GTreeValue):
            items = value.items if isinstance(value, GTreeValue) else value
            if index is None:
                raise UsageError(f"{path!r}: {name!r} is a {first.desc.type}; give an element [i]")
            if index >= len(items):
                raise UsageError(f"{path!r}: {name!r} has {len(items)} elements")
            item = items[index]
            return Step(first, index), item[1] if isinstance(item, tuple) else item
        if index not in (None, 0):
            raise UsageError(f"{path!r}: {name!r} is not an array")
        return Step(first, None), value
    total = sum(f.desc.count for f in entries)
    if index is None:
        raise UsageError(f"{path!r}: {name!r} is an array of {total}; give an element [i]")
    if index >= total:
        raise UsageError(f"{path!r}: {name!r} has {total} elements (0..{total - 1})")
    for f in entries:
        if index < f.desc.count:
            if f.desc.count == 1:
                return Step(f, None), f.value
            return Step(f, index), f.value[index]
        index -= f.desc.count
    raise AssertionError("unreachable")


def _near(node: StateNode, name: str) -> str:
    names = list(dict.fromkeys(f.desc.name for f in node.fields))
    names += [s.name for s in node.subsections]
    near = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    return f"; close: {', '.join(near)}" if near else f"; it has: {', '.join(names[:30])}"


# -- setting values ---------------------------------------------------------------------


class _Count:
    """A sink that only counts bytes."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: Any) -> None:
        self.n += len(data)


def encoded_size(fv: FieldValue) -> int:
    """Bytes ``fv`` takes on the wire."""
    c = _Count()
    Encoder(Writer(c)).field(fv)  # type: ignore[arg-type]
    return c.n


def node_size(node: StateNode) -> int:
    """Bytes ``node`` takes on the wire."""
    c = _Count()
    Encoder(Writer(c)).node(node)  # type: ignore[arg-type]
    return c.n


def _uses(node: StateNode, desc: FieldDesc) -> int:
    """How many field entries below ``node`` are described by ``desc``."""
    n = 0
    for fv in node.fields:
        if fv.desc is desc:
            n += 1
        for v in _children(fv):
            n += _uses(v, desc)
    for s in node.subsections:
        n += _uses(s.node, desc)
    return n


def _children(fv: FieldValue) -> Iterator[StateNode]:
    v = fv.value
    if isinstance(v, StateNode):
        yield v
    elif isinstance(v, GTreeValue):
        for key, val in v.items:
            if isinstance(key, StateNode):
                yield key
            yield val
    elif isinstance(v, list):
        for e in v:
            if isinstance(e, StateNode):
                yield e


def set_field(mig: Migration, path: str, text: str) -> list[tuple[FieldRef, Any, Any]]:
    """Set the element ``path`` names to ``text`` (parsed by its type).

    Returns ``(ref, old, new)`` for every section changed.
    """
    refs = resolve(mig, path)
    done = []
    for ref in refs:
        t = ref.target
        f = t.fv.desc
        ftype = field_type(f)
        value = ftype.parse(text, f)
        old = ref.value
        if isinstance(ftype, BytesType) and len(value) != len(old):
            if f.type not in RESIZABLE:
                raise UsageError(
                    f"{path!r}: {f.name!r} ({f.type}) is {len(old)} bytes; give {len(old)} bytes"
                )
            _check_resizable(mig, ref, len(value))
        log = _EDITS.setdefault(mig, _EditLog())
        log.originals.setdefault((id(t.fv), t.item), old)
        if isinstance(ftype, BytesType) and len(value) != len(old):
            log.resized.setdefault(
                (id(t.fv), t.item), (ref, len(log.originals[(id(t.fv), t.item)]))
            )
        _assign(t, value)
        if isinstance(ftype, BytesType) and len(value) != len(old):
            _update_sizes(mig, ref)
        done.append((ref, old, value))
    return done


@dataclass
class _EditLog:
    """What :func:`set_field` changed in one stream."""

    #: (id of the field entry, element) -> its value before the first edit
    originals: dict[tuple[int, int | None], Any]
    #: buffers whose length changed: -> (where, original length)
    resized: dict[tuple[int, int | None], tuple[FieldRef, int]]

    def __init__(self) -> None:
        self.originals = {}
        self.resized = {}


_EDITS: weakref.WeakKeyDictionary[Any, _EditLog] = weakref.WeakKeyDictionary()


def check_sizes(mig: Migration) -> None:
    """Refuse buffers whose new length QEMU would not read (see the module's docstring).

    A buffer that changed length needs a 32-bit integer of its structure
    (before it, or in the structure a subsection belongs to) that held its
    original length and now holds the new one.
    """
    log = _EDITS.get(mig)
    if log is None:
        return
    for ref, was in log.resized.values():
        now = len(ref.value)
        if now == was or _whole_section(ref):
            continue
        holders = _size_fields(ref, was, log)
        name = ref.target.fv.desc.name
        if not holders:
            raise UsageError(
                f"{ref.label}: {name!r} is a fixed-size buffer of {was} bytes (no field of its "
                f"structure holds its length, so QEMU reads {was} bytes); give {was} bytes"
            )
        if not any(fv.value == now for fv in holders):
            names = " or ".join(repr(fv.desc.name) for fv in holders)
            raise UsageError(
                f"{ref.label}: {name!r} can change length only with the field QEMU reads its "
                f"length from ({names}, now {was}): set it to {now} too, or give {was} bytes"
            )


def _whole_section(ref: FieldRef) -> bool:
    """The data of an old-style section (its loader reads the section its own way)."""
    root = ref.device.state
    desc = root.desc if root is not None else None
    return isinstance(desc, DeviceDesc) and desc.legacy and len(ref.steps) == 1


def _size_fields(ref: FieldRef, length: int, log: _EditLog) -> list[FieldValue]:
    """32-bit integers that can hold the buffer's length and held ``length``."""
    root = ref.device.state
    assert root is not None
    target = ref.target.fv
    chain = _chain(root, target)
    out = []
    for depth, (node, via_subsection) in enumerate(reversed(chain)):
        for fv in node.fields:
            if depth == 0 and fv is target:
                break  # only fields loaded before the buffer
            t = field_type(fv.desc)
            if not (isinstance(t, IntType) and t.width == 4 and fv.desc.count == 1):
                continue
            if log.originals.get((id(fv), None), fv.value) == length:
                out.append(fv)
        if not via_subsection:
            break  # a struct element has its own fields; a subsection shares its parent's
    return out


def _chain(root: StateNode, target: FieldValue) -> list[tuple[StateNode, bool]]:
    """The nodes from ``root`` to the one holding ``target``, each with whether it
    was entered as a subsection of the previous one."""

    def walk(node: StateNode, sub: bool) -> list[tuple[StateNode, bool]] | None:
        for fv in node.fields:
            if fv is target:
                return [(node, sub)]
            for child in _children(fv):
                found = walk(child, False)
                if found is not None:
                    return [(node, sub), *found]
        for s in node.subsections:
            found = walk(s.node, True)
            if found is not None:
                return [(node, sub), *found]
        return None

    return walk(root, False) or []


def _assign(step: Step, value: Any) -> None:
    if step.item is None:
        step.fv.value = value
    else:
        step.fv.value[step.item] = value


def _check_resizable(mig: Migration, ref: FieldRef, new: int) -> None:
    """Refuse size changes the description cannot express."""
    own = [r.description for r in mig.records if isinstance(r, DescriptionRecord)]
    if own and own[0] is not mig.description:
        raise UsageError(
            f"{ref.path!r}: a new size must go into the stream's own description, but the "
            "state was decoded with another one (--desc); edit without it"
        )
    root = ref.device.state
    assert root is not None
    f = ref.target.fv.desc
    if f.count != 1:
        raise UsageError(
            f"{ref.path!r}: the elements of {f.name!r} share one size in the description "
            f"({f.size} bytes); give {f.size} bytes"
        )
    for step in ref.steps:
        d = step.fv.desc
        if d.count != 1 or _uses(root, d) != 1 or d.raw is None:
            raise UsageError(
                f"{ref.path!r}: {d.name!r} is described once for several elements, which "
                f"must then all have its size; give {len(ref.value)} bytes"
            )


def _update_sizes(mig: Migration, ref: FieldRef) -> None:
    """Record the new sizes in the description: the field's and its containers'."""
    for step in reversed(ref.steps):
        d = step.fv.desc
        size = encoded_size(step.fv)
        if d.size != size:
            d.size = size
            assert d.raw is not None
            d.raw.set("size", size)
        step.fv.size = size
    root = ref.device.state
    assert root is not None
    desc = root.desc
    if isinstance(desc, DeviceDesc) and desc.legacy and desc.raw is not None:
        total = node_size(root)
        desc.legacy_size = total
        desc.raw.set("size", total)
    root.size = node_size(root)
    if mig.description is not None:
        mig.description.modified = True
