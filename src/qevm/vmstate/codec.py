"""Decode and encode VMState data through the description.

This is qevm's counterpart of QEMU's ``vmstate_load_state`` /
``vmstate_save_state``: fields in description order, each element by its
type (:mod:`qevm.vmstate.types`), then the subsections.  The same
definitions drive :class:`Decoder` and :class:`Encoder`, so re-encoding a
decoded node gives back its bytes.
"""

from __future__ import annotations

import struct
from typing import Any

from ..errors import DescriptionError, FormatError, QevmError
from ..format import SUBSECTION, VMS_NULLPTR_MARKER
from ..wire import Reader, Writer
from .desc import MAX_DEPTH, FieldDesc, VmsdDesc
from .types import IntType, field_type
from .values import NULL, FieldValue, StateNode, SubsectionValue

#: Most elements of zero bytes one array may have.
MAX_EMPTY_ELEMENTS = 1 << 20


def described_size(desc: VmsdDesc) -> int:
    """Bytes the description says ``desc`` occupies (uniform arrays assumed)."""
    total = sum(f.size * f.count for f in desc.fields)
    for s in desc.subsections:
        total += subsection_overhead(s) + described_size(s)
    return total


def subsection_overhead(desc: VmsdDesc) -> int:
    """Marker, counted name and version bytes in front of a subsection."""
    return 1 + 1 + len((desc.vmsd_name or "").encode("latin-1")) + 4


def flat_layout(desc: VmsdDesc) -> tuple[struct.Struct, list[int]] | None:
    """One struct format for a VMSD made only of single fixed-width integers."""
    if desc.flat is None:
        codes = []
        widths = []
        ok = not desc.subsections
        for f in desc.fields:
            t = field_type(f)
            if not ok or f.count != 1 or not isinstance(t, IntType):
                ok = False
                break
            codes.append(t.code)
            widths.append(t.width)
        desc.flat = (struct.Struct(">" + "".join(codes)), widths) if ok and codes else False
    return desc.flat or None


class Decoder:
    """Reads VMSD data from a :class:`Reader`.

    ``end`` is the section's end when the framing already knows it (from the
    footer); it is needed only to delimit pre-10.0 pointer arrays whose
    non-NULL elements the description does not describe.
    """

    def __init__(self, reader: Reader, end: int | None = None) -> None:
        self.r = reader
        self.end = end
        # (description, index of the field being read) from the outside in
        self._stack: list[list[Any]] = []

    def vmsd(self, desc: VmsdDesc) -> StateNode:
        """Read one VMSD instance: its fields, then its subsections."""
        r = self.r
        start = r.offset
        if len(self._stack) > MAX_DEPTH:
            raise DescriptionError("VMSDs nested too deeply", offset=start)
        frame: list[Any] = [desc, 0]
        self._stack.append(frame)
        fields = []
        for i, f in enumerate(desc.fields):
            frame[1] = i
            fields.append(self.field(f))
        subs = []
        for j, sd in enumerate(desc.subsections):
            frame[1] = len(desc.fields) + j
            subs.append(self._subsection(sd))
        self._stack.pop()
        return StateNode(desc, start, r.offset - start, fields, subs)

    def vmsd_array(self, desc: VmsdDesc, n: int) -> list[StateNode]:
        """``n`` consecutive instances of ``desc`` (a compressed array of structs)."""
        layout = flat_layout(desc)
        if layout is None:
            return [self.vmsd(desc) for _ in range(n)]
        st, widths = layout
        r = self.r
        size = st.size
        r.ensure(size * n)
        buf, pos, base = r.buf, r.pos, r.base
        fields = desc.fields
        out = []
        unpack = st.unpack_from
        for i in range(n):
            p = pos + i * size
            vals = unpack(buf, p)
            off = base + p
            fvs = []
            for f, w, v in zip(fields, widths, vals):
                fvs.append(FieldValue(f, off, w, v))
                off += w
            out.append(StateNode(desc, base + p, size, fvs, []))
        r.pos = pos + size * n
        return out

    def _subsection(self, sd: VmsdDesc) -> SubsectionValue:
        r = self.r
        off = r.offset
        name = sd.vmsd_name or ""
        try:
            marker = r.u8()
            if marker != SUBSECTION:
                raise FormatError(
                    f"found byte {marker:#04x} where subsection {name!r} should start",
                    offset=off,
                    expected="0x05",
                )
            got = r.counted_str()
            if got != name:
                raise FormatError(f"subsection is {got!r}", offset=off + 1, expected=repr(name))
            version = r.u32()
            node = self.vmsd(sd)
        except QevmError as e:
            raise e.located(field=name) from None
        return SubsectionValue(name, version, off, node)

    def field(self, f: FieldDesc) -> FieldValue:
        """Read one description entry (one element, or a compressed array)."""
        r = self.r
        start = r.offset
        t = field_type(f)
        if f.count > 1:
            self._check_count(f, start)
        try:
            value = t.decode(self, f) if f.count == 1 else t.decode_many(self, f, f.count)
        except QevmError as e:
            raise e.located(field=f.name) from None
        size = r.offset - start
        if f.count == 1:
            if size != f.size:
                raise DescriptionError(
                    f"{f.type} element is {size} bytes on the wire",
                    offset=start,
                    field=f.name,
                    expected=f"{f.size} bytes as the description says",
                )
        elif t.width is not None and size != f.size * f.count:
            raise DescriptionError(
                f"array is {size} bytes on the wire",
                offset=start,
                field=f.name,
                expected=f"{f.count} x {f.size} bytes",
            )
        elif value and isinstance(value[0], StateNode) and value[0].size != f.size:
            raise DescriptionError(
                f"first {f.type} element is {value[0].size} bytes on the wire",
                offset=start,
                field=f.name,
                expected=f"{f.size} bytes as the description says",
            )
        return FieldValue(f, start, size, value)

    def _check_count(self, f: FieldDesc, start: int) -> None:
        """Refuse element counts the rest of the input cannot hold (hostile descriptions).

        Elements of a described size take at least a byte each; empty ones
        (a struct without fields) are allowed in QEMU-like numbers only.
        """
        left = self.end - start if self.end is not None else self.r.source.size
        limit = MAX_EMPTY_ELEMENTS if f.size == 0 else (left if left is not None else f.count)
        if f.count > max(limit, 1):
            raise DescriptionError(
                f"array of {f.count} elements cannot fit in the {left} bytes left",
                offset=start,
                field=f.name,
            )

    # -- QEMU < 10.0 arrays of pointers with NULL elements -------------------
    def pointer_array(self, f: FieldDesc, n: int) -> list[Any]:
        """Read an array of pointers whose description only saw a NULL element.

        Before QEMU 10.0 the description of such an array took the first
        element's shape (``"struct": {}``, size 1) for all ``n`` elements, so
        non-NULL elements are not described.  Their size follows from the
        section's end: ``k`` NULL bytes plus ``m`` equal-sized elements.
        """
        r = self.r
        start = r.offset
        if self.end is None:
            data = r.peek(n)
            if len(data) == n and data == bytes([VMS_NULLPTR_MARKER]) * n:
                r.skip(n)
                return [NULL] * n
            raise DescriptionError(
                "array of pointers mixes NULL and non-NULL elements that the "
                "description does not describe, and the section end is unknown",
                offset=start,
                field=f.name,
            )
        total = self.end - start - self._tail_size()
        if total < n:
            raise DescriptionError(
                f"only {total} bytes left for {n} pointer elements", offset=start, field=f.name
            )
        data = r.peek(total)
        for m in range(0, n + 1):
            if m == 0:
                if total == n and data == bytes([VMS_NULLPTR_MARKER]) * n:
                    r.skip(n)
                    return [NULL] * n
                continue
            if (total - n) % m:
                continue
            elems = _walk_pointers(data, n, m, (total - n) // m + 1)
            if elems is not None:
                r.skip(total)
                return elems
        raise DescriptionError(
            f"cannot split {total} bytes into {n} NULL/non-NULL pointer elements",
            offset=start,
            field=f.name,
        )

    def _tail_size(self) -> int:
        """Bytes the description says follow the current field in this section."""
        tail = 0
        for desc, idx in self._stack:
            nf = len(desc.fields)
            for f in desc.fields[idx + 1 :]:
                tail += f.size * f.count
            first_sub = max(0, idx + 1 - nf)
            for s in desc.subsections[first_sub:]:
                tail += subsection_overhead(s) + described_size(s)
        return tail


def _walk_pointers(data: bytes, n: int, m: int, size: int) -> list[Any] | None:
    """Split ``data`` into ``n`` elements, ``m`` of them ``size``-byte structs."""
    out: list[Any] = []
    pos = 0
    left_nonnull = m
    for i in range(n):
        left = n - i
        if left_nonnull == left or (left_nonnull and data[pos] != VMS_NULLPTR_MARKER):
            if pos + size > len(data):
                return None
            out.append(bytes(data[pos : pos + size]))
            pos += size
            left_nonnull -= 1
        else:
            if data[pos] != VMS_NULLPTR_MARKER:
                return None
            out.append(NULL)
            pos += 1
    return out if pos == len(data) and left_nonnull == 0 else None


class Encoder:
    """Writes decoded VMSD values back to bytes, the inverse of :class:`Decoder`."""

    def __init__(self, writer: Writer) -> None:
        self.w = writer

    def node(self, node: StateNode) -> None:
        """Write a VMSD instance: fields, then subsections."""
        for fv in node.fields:
            self.field(fv)
        for s in node.subsections:
            self.w.u8(SUBSECTION)
            self.w.counted_str(s.name)
            self.w.u32(s.version)
            self.node(s.node)

    def field(self, fv: FieldValue) -> None:
        """Write one description entry."""
        f = fv.desc
        t = field_type(f)
        if f.count == 1:
            t.encode(self, f, fv.value)
        elif isinstance(t, IntType):
            t.encode_many(self, f, fv.value)
        else:
            for v in fv.value:
                t.encode(self, f, v)

    def element_node(self, value: Any) -> None:
        """Write a struct element: a node, a NULL marker or undescribed bytes."""
        if value is NULL:
            self.w.u8(VMS_NULLPTR_MARKER)
        elif isinstance(value, (bytes, bytearray)):
            self.w.bytes(value)
        else:
            self.node(value)
