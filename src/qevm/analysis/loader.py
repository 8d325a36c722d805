"""Reading a device section the way a destination's QEMU reads it.

:class:`Loader` follows ``vmstate_load_state`` (migration/vmstate.c) over the
source's bytes with the *destination's* description of the section:

* the section version against the destination's (``savevm: unsupported
  version``), subsection versions against theirs (``too new``) and, with a
  schema, against minimum versions (``too old``);
* at a lower incoming version, fields the destination loads only from a
  later version are skipped (with a schema: by their ``version_id``; without
  one: the destination's fields the source's description does not have);
* fields in the destination's order, of the destination's sizes and array
  lengths, except where the length is data the stream carries (a count
  field read just before, ``VARRAY``/``VBUFFER``): then the source's;
  nested structs at the destination's own version;
* subsections as ``vmstate_subsection_load`` finds them: while the next byte
  is 0x05 and the name starts with the VMSD's name, looked up by name in
  any order; one the destination does not know stops the load;
* ``*_EQUAL`` fields compared with the destination's own values,
  ``INT32_POSITIVE_LE`` against its maximum.

Every field read is recorded as a :class:`Step` (path, offset, size), so two
readings of the same bytes can be compared to find where they went out of
step (:mod:`.localize`).  An opaque field with a registered field reader
(:mod:`.hooks`) is read as the reader says the destination's load function
reads it; without one, or when it cannot tell, a size difference is reported
as not yet explained and the load continues with the source's size.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..errors import QevmError
from ..source.memory import MemorySource
from ..vmstate.codec import SUBSECTION, Decoder
from ..vmstate.desc import FieldDesc, VmsdDesc
from ..vmstate.types import OPAQUE, BytesType, IntType, field_type
from ..vmstate.values import FieldValue, StateNode, SubsectionValue
from ..wire import Reader
from . import hooks
from .pairing import (
    dest_value,
    element_value,
    find_vmsd,
    nested_desc,
    peer_field,
    schema_field,
    schema_versions,
    sized_by_data,
)
from .steps import Doubt, Frame, Step, Stop, base_name, join

if TYPE_CHECKING:
    from .schema import SchemaVmsd

#: Field types whose size the stream's data sets (a length read before them).
_BUFFERS = frozenset({"buffer", "unused_buffer", "bitmap"})
_STRUCTS = frozenset({"struct", "vstruct", "tmp"})
_LISTS = frozenset({"qtailq", "qlist"})
_EQUAL_FMT = {
    "uint8 equal": "{dst:x} != {src:x}",
    "uint16 equal": "{dst:x} != {src:x}",
    "uint32 equal": "{dst:x} != {src:x}",
    "int32 equal": "{dst} != {src}",
    "int64 equal": "{dst:x} != {src:x}",
}


class Loader(Decoder):
    """Reads one section's source bytes with a destination description.

    ``data`` are the section's body and footer bytes, ``base`` the absolute
    offset of ``data[0]``, ``end`` where the footer starts.  ``overrides``
    (``id(FieldDesc)`` -> the field read instead) and ``extra`` (VMSD path ->
    bytes after its fields) let :mod:`.explain` try what would make a
    description fit.
    """

    def __init__(
        self,
        data: bytes,
        base: int,
        end: int,
        *,
        section: str = "",
        instance_id: int = 0,
        context: dict[str, Any] | None = None,
        overrides: dict[int, FieldDesc] | None = None,
        extra: dict[str, int] | None = None,
        strict: bool = False,
    ) -> None:
        super().__init__(Reader(MemorySource(data, base), base), end)
        self.data = data
        self.base = base
        self.section = section
        self.instance_id = instance_id
        self.context = context or {}
        self.overrides = overrides or {}
        #: Require exactly the described subsections, in order (a stream read with
        #: its own description), not QEMU's any-known-subsection loop.
        self.strict = strict
        #: path of a VMSD -> bytes the description does not account for after
        #: its fields (what-if gaps for :mod:`.explain`)
        self.extra = extra or {}
        #: (VMSD path, description, offset) where each VMSD's fields ended
        self.field_ends: list[tuple[str, VmsdDesc, int]] = []
        self.steps: list[Step] = []
        self.doubts: list[Doubt] = []
        self.notes: list[str] = []
        self._depth = 0

    # -- entry point ------------------------------------------------------
    def section_body(
        self,
        desc: VmsdDesc,
        version: int | None,
        *,
        peer: VmsdDesc | None = None,
        values: StateNode | None = None,
        schema: SchemaVmsd | None = None,
        dest_version: int | None = None,
    ) -> StateNode:
        """Read the section's fields and subsections (raises :class:`Stop`)."""
        frame = Frame(desc, peer, values, schema, "", dest_version)
        try:
            return self._vmsd(frame, version)
        except Stop:
            raise
        except QevmError as e:
            off = e.offset if e.offset is not None else self.r.offset
            raise Stop("overrun", str(e.message), off, e.field or "") from None

    # -- VMSDs --------------------------------------------------------------
    def vmsd(self, desc: VmsdDesc) -> StateNode:
        """A nested VMSD reached through a field type (GTree elements)."""
        return self._vmsd(Frame(desc, None, None, None, "", desc.version), None)

    def _vmsd(self, frame: Frame, version: int | None) -> StateNode:
        desc = frame.desc
        name = desc.vmsd_name or self.section
        r = self.r
        if version is not None:
            if frame.version is not None and version > frame.version:
                raise Stop(
                    "version",
                    f"{name}: incoming version_id {version} is too new for local version_id "
                    f"{frame.version}",
                    r.offset,
                    frame.path,
                    source=version,
                    destination=frame.version,
                )
            sch = frame.schema
            if sch is not None and version < sch.minimum_version:
                raise Stop(
                    "version",
                    f"{name}: incoming version_id {version} is too old for local minimum "
                    f"version_id {sch.minimum_version}",
                    r.offset,
                    frame.path,
                    source=version,
                    destination=sch.minimum_version,
                )
        start = r.offset
        if len(self._stack) > 64:
            raise Stop("overrun", "VMSDs nested too deeply", start, frame.path)
        stack_frame: list[Any] = [desc, 0]
        self._stack.append(stack_frame)
        fields = self._fields_to_read(frame, version)
        out: list[FieldValue] = []
        for i, f in fields:
            stack_frame[1] = i
            fv = self._field(frame, i, f)
            out.append(fv)
            frame.loaded.append(fv)
        self.field_ends.append((frame.path, desc, r.offset))
        gap = self.extra.get(frame.path)
        if gap:
            self.steps.append(Step(join(frame.path, "(gap)"), r.offset, gap, "gap", done=True))
            r.skip(gap)
        subs = self._subsections(frame)
        self._stack.pop()
        return StateNode(desc, start, r.offset - start, out, subs)

    def _fields_to_read(self, frame: Frame, version: int | None) -> list[tuple[int, FieldDesc]]:
        """The destination's fields it loads at the incoming ``version``."""
        fields = list(enumerate(frame.desc.fields))
        dv = frame.version
        if version is None or dv is None or version >= dv:
            return fields
        sch = frame.schema
        if sch is not None:
            gate = schema_versions(frame.desc.fields, sch.fields)
            return [(i, f) for i, f in fields if gate[i] is None or gate[i] <= version]
        if frame.peer is None:
            return fields
        have = {base_name(f.name) for f in frame.peer.fields}
        kept = [(i, f) for i, f in fields if base_name(f.name) in have]
        dropped = [f.name for _, f in fields if base_name(f.name) not in have]
        if dropped:
            self.notes.append(
                f"{frame.desc.vmsd_name}: incoming version {version} < {dv}: assumed the "
                f"destination loads {', '.join(dropped)} only from a later version (the "
                "source does not send them; a -dump-vmstate schema would say)"
            )
        return kept

    # -- fields ---------------------------------------------------------------
    def _field(self, frame: Frame, i: int, f: FieldDesc) -> FieldValue:
        r = self.r
        start = r.offset
        path = join(frame.path, f.name)
        peer = peer_field(frame, f, i)
        dval = dest_value(frame, i, f)
        eff = self._effective(frame, f, peer, path, start, dval)
        step = Step(
            path, start, 0, "field", f.type, eff.count, None, self._depth, frame.desc.vmsd_name
        )
        step.field = f
        self.steps.append(step)
        self._depth += 1
        try:
            value = self._read(frame, eff, peer, dval, path)
        finally:
            self._depth -= 1
        step.size = r.offset - start
        step.done = True
        if f.type in _EQUAL_FMT or f.type == "int32 le":
            self._compare(f, value, dval, path, start)
        checks = hooks.field_checks(f.type)
        if checks:
            self._field_checks(checks, frame, f, peer, path, start, dval)
        if eff.count == 1 and isinstance(value, int):
            step.value = value
        elif isinstance(value, (bytes, bytearray)):
            step.value = bytes(value[:32])
        return FieldValue(eff, start, r.offset - start, value)

    def _effective(
        self,
        frame: Frame,
        f: FieldDesc,
        peer: FieldDesc | None,
        path: str,
        start: int,
        dval: FieldValue | None,
    ) -> FieldDesc:
        """The field as the destination reads it (count and size decided)."""
        over = self.overrides.get(id(f))
        if over is not None:
            return over
        if peer is not None and f.count == 1 == peer.count and hooks.field_reader(f.type):
            # the device's own load function decides, whatever the two sizes
            return self._opaque(frame, f, peer, path, start, dval)
        if peer is None or (peer.count == f.count and peer.size == f.size):
            return f
        eff = f
        if peer.count != f.count and sized_by_data(frame, peer.count, f.count):
            eff = dataclasses.replace(f, count=peer.count, ftype=None)
        if peer.size != f.size and f.type not in _STRUCTS | _LISTS and f.type != "gtree":
            t = field_type(f)
            legacy = frame.desc.vmsd_name is None
            if t is OPAQUE or legacy or not isinstance(t, (BytesType, IntType)):
                return self._opaque(frame, eff, peer, path, start, dval)
            if f.type in _BUFFERS and sized_by_data(frame, peer.size, f.size):
                eff = dataclasses.replace(eff, size=peer.size, ftype=None)
        return eff

    def _opaque(
        self,
        frame: Frame,
        f: FieldDesc,
        peer: FieldDesc,
        path: str,
        start: int,
        dval: FieldValue | None,
    ) -> FieldDesc:
        """An opaque field of another size on each side: ask its reader, else doubt."""
        reader = hooks.field_reader(f.type)
        verdict = None
        if reader is not None:
            ctx = hooks.FieldContext(
                self.section,
                self.instance_id,
                frame.desc.vmsd_name,
                path,
                f,
                peer,
                bytes(self.data[start - self.base : self.end - self.base]),
                start,
                dval.value if dval is not None else None,
                self.context.get("destination"),  # type: ignore[arg-type]
                self.context.get("source"),
            )
            verdict = reader(ctx)
        if verdict is not None:
            self.notes.extend(verdict.notes)
        if verdict is not None and verdict.size is not None:
            if verdict.problems:
                self.doubts.append(
                    Doubt("device", path, start, "", peer.size, f.size, list(verdict.problems))
                )
            return dataclasses.replace(f, size=verdict.size, ftype=None)
        if peer.size == f.size:
            return f
        self.doubts.append(
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

    def _field_checks(
        self,
        checks: list,
        frame: Frame,
        f: FieldDesc,
        peer: FieldDesc | None,
        path: str,
        start: int,
        dval: FieldValue | None,
    ) -> None:
        """The checks a device's own get() makes on a field it loads (PCI config bytes)."""
        ctx = hooks.FieldContext(
            self.section,
            self.instance_id,
            frame.desc.vmsd_name,
            path,
            f,
            peer,
            bytes(self.data[start - self.base : self.end - self.base]),
            start,
            dval.value if dval is not None else None,
            self.context.get("destination"),  # type: ignore[arg-type]
            self.context.get("source"),
            read_size=self.r.offset - start,
        )
        for fn in checks:
            problems = list(fn(ctx) or ())
            if problems:
                self.doubts.append(Doubt("device", path, start, "", problems=problems))

    def _read(
        self, frame: Frame, f: FieldDesc, peer: FieldDesc | None, dval: FieldValue | None, path: str
    ) -> Any:
        kind = f.type
        if f.count == 0:
            return []
        if kind in _STRUCTS:
            nested = nested_desc(f, peer, 0)
            if nested is None:
                raise Stop("overrun", f"no description of struct field {path}", self.r.offset, path)
            if kind == "struct" and f.count > 1:
                if nested.empty:
                    return self.pointer_array(f, f.count)
                self._check_count(f, self.r.offset)
                return [
                    self._element(frame, f, peer, dval, nested, k, path) for k in range(f.count)
                ]
            return self._nested_vmsd(frame, f, peer, element_value(dval, None), nested, path)
        if kind in _LISTS:
            return self._list(frame, f, peer, dval, path)
        if kind == "gtree":
            return field_type(f).decode(self, f)
        t = field_type(f)
        if f.count > 1:
            self._check_count(f, self.r.offset)
            return t.decode_many(self, f, f.count)
        return t.decode(self, f)

    def _element(
        self,
        frame: Frame,
        f: FieldDesc,
        peer: FieldDesc | None,
        dval: FieldValue | None,
        nested: VmsdDesc,
        k: int,
        path: str,
    ) -> StateNode:
        epath = f"{path}[{k}]"
        self.steps.append(Step(epath, self.r.offset, 0, "element", f.type, 1, None, self._depth))
        step = self.steps[-1]
        node = self._nested_vmsd(frame, f, peer, element_value(dval, k), nested, epath)
        step.size = node.size
        step.done = True
        return node

    def _nested_vmsd(
        self,
        frame: Frame,
        f: FieldDesc,
        peer: FieldDesc | None,
        values: Any,
        nested: VmsdDesc,
        path: str,
    ) -> StateNode:
        sch = schema_field(frame, f)
        child = Frame(
            nested,
            nested_desc(peer, None, 0) if peer is not None else None,
            values if isinstance(values, StateNode) else None,
            sch.vmsd if sch is not None else None,
            path,
            nested.version,
        )
        return self._vmsd(child, None)

    def _list(
        self, frame: Frame, f: FieldDesc, peer: FieldDesc | None, dval: FieldValue | None, path: str
    ) -> list[StateNode]:
        """QTAILQ/QLIST as QEMU's get_qtailq reads it: any non-zero byte is one more element."""
        r = self.r
        items: list[StateNode] = []
        while r.u8():
            k = len(items)
            desc = nested_desc(f, peer, k)
            if desc is None:
                raise Stop(
                    "overrun",
                    f"list {path} has elements but neither side describes them",
                    r.offset,
                    path,
                )
            items.append(self._element(frame, f, peer, dval, desc, k, path))
        return items

    def _compare(
        self, f: FieldDesc, value: Any, dval: FieldValue | None, path: str, off: int
    ) -> None:
        """The checks of QEMU's ``*_equal`` and ``int32_le`` field types."""
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
            msg = _EQUAL_FMT[f.type].format(dst=dst, src=value)
        raise Stop("value", msg, off, path, source=value, destination=dst)

    # -- subsections -------------------------------------------------------------
    def _subsections(self, frame: Frame) -> list[SubsectionValue]:
        r = self.r
        desc = frame.desc
        parent = desc.vmsd_name or ""
        out: list[SubsectionValue] = []
        while True:
            head = r.peek(2 + 255)
            if len(head) < 2 or head[0] != SUBSECTION:
                break
            n = head[1]
            name_b = head[2 : 2 + n]
            if n < len(parent) + 1 or len(name_b) != n:
                break
            name = name_b.decode("latin-1")
            if not name.startswith(parent):
                break
            off = r.offset
            path = join(frame.path, name)
            sub = find_vmsd(desc.subsections, name)
            peer_sub = find_vmsd(frame.peer.subsections, name) if frame.peer is not None else None
            sch_sub = frame.schema.subsection(name) if frame.schema is not None else None
            dest_version = sub.version if sub is not None else None
            if sub is None:
                if frame.schema is not None and sch_sub is None:
                    raise Stop(
                        "subsection",
                        f"VM subsection '{name}' in '{parent}' does not exist",
                        off,
                        path,
                    )
                if sch_sub is not None:
                    dest_version = sch_sub.version
                else:
                    # QEMU's contract: a subsection is sent only when needed, and a
                    # destination of the same or a later version knows it.
                    self.notes.append(
                        f"subsection {name}: the destination did not send it; assumed it "
                        "knows it (a destination older than the source may not: give its "
                        "-dump-vmstate with --schema to be sure)"
                    )
                sub = peer_sub
                if sub is None:
                    raise Stop(
                        "undescribed",
                        f"subsection {name}: neither the destination's description nor the "
                        "source's lists it",
                        off,
                        path,
                    )
            r.skip(2 + n)
            version = r.u32()
            self.steps.append(
                Step(path, off, 0, "subsection", "subsection", 1, version, self._depth)
            )
            step = self.steps[-1]
            values = frame.values.subsection(name) if frame.values is not None else None
            child = Frame(sub, peer_sub, values, sch_sub, path, dest_version)
            self._depth += 1
            try:
                node = self._vmsd(child, version)
            finally:
                self._depth -= 1
            step.size = r.offset - off
            step.done = True
            out.append(SubsectionValue(name, version, off, node))
        if self.strict:
            want = [d.vmsd_name for d in desc.subsections]
            got = [sv.name for sv in out]
            if got != want:
                missing = next((w for w in want if w not in got), None)
                what = f"subsection {missing} is not there" if missing else "subsections differ"
                raise Stop(
                    "strict",
                    f"{what} (found {', '.join(got) or 'none'} at {r.offset:#x})",
                    r.offset,
                    frame.path,
                )
        return out
