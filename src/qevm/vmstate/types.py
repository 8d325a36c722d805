"""The registry of VMState field types (QEMU's VMStateInfo, plus struct kinds).

Each :class:`FieldType` knows how one element of its type is laid out on the
wire (decode and encode through the same definition), how it is shown
(text and JSON) and how a user-supplied value is checked for it.  A type QEMU
adds later is one :func:`register` call; a type nobody registered is read as
opaque bytes of the size the description records.
"""

from __future__ import annotations

import struct
import sys
from array import array
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..errors import DescriptionError, FormatError, UsageError
from ..format import VMS_NULLPTR_MARKER
from .desc import FieldDesc
from .values import NULL, GTreeValue, StateNode

if TYPE_CHECKING:
    from ..wire import Writer
    from .codec import Decoder, Encoder


@lru_cache(maxsize=256)
def _array_struct(code: str, n: int) -> struct.Struct:
    return struct.Struct(f">{n}{code}")


class FieldType:
    """How one element of a VMState type is read, written and shown."""

    #: The JSON ``type`` names this entry handles.
    names: tuple[str, ...] = ()
    #: Wire size of one element when fixed, else None.
    width: int | None = None

    def decode(self, dec: Decoder, f: FieldDesc) -> Any:
        """Read one element."""
        raise NotImplementedError

    def decode_many(self, dec: Decoder, f: FieldDesc, n: int) -> list[Any]:
        """Read ``n`` elements of a compressed array."""
        return [self.decode(dec, f) for _ in range(n)]

    def encode(self, enc: Encoder, f: FieldDesc, value: Any) -> None:
        """Write one element."""
        raise NotImplementedError

    def to_json(self, value: Any) -> Any:
        """The element as a JSON value (qevm's native JSON)."""
        return value

    def format(self, value: Any) -> str:
        """The element as text for the tree view."""
        return str(value)

    def parse(self, text: str, f: FieldDesc) -> Any:
        """A user-given value for this type, checked (for ``qevm edit``)."""
        raise UsageError(f"fields of type {f.type!r} cannot be set from text")

    def fits(self, f: FieldDesc) -> bool:
        """Whether this type can read ``f`` (its recorded size agrees)."""
        return self.width is None or f.size == self.width


class IntType(FieldType):
    """Big-endian two's-complement or unsigned integers of 1, 2, 4 or 8 bytes."""

    _codes = {1: "b", 2: "h", 4: "i", 8: "q"}

    def __init__(self, names: tuple[str, ...], width: int, signed: bool) -> None:
        self.names = names
        self.width = width
        self.signed = signed
        code = self._codes[width]
        self.code = code if signed else code.upper()
        self._one = struct.Struct(">" + self.code)

    def decode(self, dec: Decoder, f: FieldDesc) -> int:
        r = dec.r
        r.ensure(self.width)  # type: ignore[arg-type]
        (v,) = self._one.unpack_from(r.buf, r.pos)
        r.pos += self.width  # type: ignore[operator]
        return v

    def decode_many(self, dec: Decoder, f: FieldDesc, n: int) -> array:
        """Many integers, kept compactly as an ``array`` (8 bytes per uint64)."""
        r = dec.r
        size = n * self.width  # type: ignore[operator]
        r.ensure(size)
        vals = array(self.code)
        vals.frombytes(r.buf[r.pos : r.pos + size])
        if _SWAP and self.width > 1:  # type: ignore[operator]
            vals.byteswap()
        r.pos += size
        return vals

    def encode(self, enc: Encoder, f: FieldDesc, value: int) -> None:
        enc.w.bytes(self._one.pack(value))

    def encode_many(self, enc: Encoder, f: FieldDesc, values: Any) -> None:
        enc.w.bytes(array_bytes(self, values))

    def format(self, value: int) -> str:
        if value < 0:
            return f"{value} ({value & ((1 << (8 * self.width)) - 1):#x})"  # type: ignore[operator]
        return f"{value:#x}" if value > 9 else str(value)

    def parse(self, text: str, f: FieldDesc) -> int:
        try:
            v = int(text, 0)
        except ValueError:
            raise UsageError(f"{f.name}: {text!r} is not an integer") from None
        bits = 8 * self.width  # type: ignore[operator]
        lo, hi = (
            (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if self.signed else (0, (1 << bits) - 1)
        )
        if self.signed and hi < v <= (1 << bits) - 1:
            v -= 1 << bits  # accept the unsigned spelling of a negative value
        if not lo <= v <= hi:
            raise UsageError(f"{f.name}: {text} does not fit in {f.type} ({lo}..{hi})")
        return v


def array_bytes(t: IntType, values: Any) -> bytes:
    """The big-endian wire bytes of many integers of type ``t``."""
    vals = values if isinstance(values, array) else array(t.code, values)
    if _SWAP and t.width > 1:  # type: ignore[operator]
        vals = array(t.code, vals)
        vals.byteswap()
    return vals.tobytes()


_SWAP = sys.byteorder == "little"


class BoolType(IntType):
    """A byte; QEMU loads any non-zero value as true (kept as read, for exactness)."""

    def __init__(self) -> None:
        super().__init__(("bool",), 1, False)

    def decode_many(self, dec: Decoder, f: FieldDesc, n: int) -> list[int]:  # type: ignore[override]
        return list(super().decode_many(dec, f, n))

    def to_json(self, value: int) -> bool:
        return value != 0

    def format(self, value: int) -> str:
        return "true" if value == 1 else "false" if value == 0 else f"true ({value:#x})"

    def parse(self, text: str, f: FieldDesc) -> int:
        t = text.strip().lower()
        if t in ("1", "true", "on", "yes"):
            return 1
        if t in ("0", "false", "off", "no"):
            return 0
        raise UsageError(f"{f.name}: {text!r} is not a boolean")


class BytesType(FieldType):
    """Opaque bytes of the size the description records (buffers, device infos)."""

    def __init__(self, names: tuple[str, ...] = ()) -> None:
        self.names = names

    def decode(self, dec: Decoder, f: FieldDesc) -> bytes:
        return dec.r.bytes(f.size)

    def decode_many(self, dec: Decoder, f: FieldDesc, n: int) -> list[bytes]:
        r = dec.r
        size = f.size
        data = r.bytes(size * n)
        return [data[i * size : (i + 1) * size] for i in range(n)]

    def encode(self, enc: Encoder, f: FieldDesc, value: bytes) -> None:
        enc.w.bytes(value)

    def to_json(self, value: bytes) -> str:
        return value.hex()

    def format(self, value: bytes) -> str:
        if len(value) > 32:
            return f"{value[:32].hex()}... ({len(value)} bytes)"
        return value.hex() if value else "(empty)"

    def parse(self, text: str, f: FieldDesc) -> bytes:
        try:
            data = bytes.fromhex(text.replace(" ", "").removeprefix("0x"))
        except ValueError:
            raise UsageError(f"{f.name}: {text!r} is not hex bytes") from None
        return data


class NullPtrType(FieldType):
    """A NULL element of an array of pointers: the single byte ``'0'``."""

    names = ("nullptr", "ptr-marker")
    width = 1

    def decode(self, dec: Decoder, f: FieldDesc) -> object:
        off = dec.r.offset
        b = dec.r.u8()
        if b != VMS_NULLPTR_MARKER:
            raise FormatError(f"NULL pointer marker is {b:#04x}", offset=off, expected="0x30 ('0')")
        return NULL

    def encode(self, enc: Encoder, f: FieldDesc, value: object) -> None:
        enc.w.u8(VMS_NULLPTR_MARKER)

    def to_json(self, value: object) -> None:
        return None

    def format(self, value: object) -> str:
        return "NULL"


class CapabilityType(FieldType):
    """A migration capability name: u8 length + ASCII (configuration section)."""

    names = ("capability",)

    def decode(self, dec: Decoder, f: FieldDesc) -> str:
        return dec.r.counted_str()

    def encode(self, enc: Encoder, f: FieldDesc, value: str) -> None:
        enc.w.counted_str(value)

    def fits(self, f: FieldDesc) -> bool:
        return True


class StructType(FieldType):
    """VMS_STRUCT: the nested VMSD's fields, then its subsections."""

    names = ("struct",)

    def decode(self, dec: Decoder, f: FieldDesc) -> Any:
        if not f.nested:
            raise DescriptionError(f"struct field {f.name!r} has no description")
        return dec.vmsd(f.nested[0])

    def decode_many(self, dec: Decoder, f: FieldDesc, n: int) -> list[Any]:
        if not f.nested:
            raise DescriptionError(f"struct field {f.name!r} has no description")
        if f.nested[0].empty:
            return dec.pointer_array(f, n)
        return dec.vmsd_array(f.nested[0], n)

    def encode(self, enc: Encoder, f: FieldDesc, value: Any) -> None:
        enc.element_node(value)


class InlineVmsdType(FieldType):
    """vstruct and tmp: one nested VMSD written inline into the field object."""

    names = ("vstruct", "tmp")

    def decode(self, dec: Decoder, f: FieldDesc) -> StateNode:
        if not f.nested:
            raise DescriptionError(f"field {f.name!r} ({f.type}) has no nested description")
        return dec.vmsd(f.nested[0])

    def encode(self, enc: Encoder, f: FieldDesc, value: StateNode) -> None:
        enc.node(value)


class ListType(FieldType):
    """QTAILQ / QLIST: repeat {u8 1, element}, then u8 0."""

    names = ("qtailq", "qlist")

    def decode(self, dec: Decoder, f: FieldDesc) -> list[StateNode]:
        r = dec.r
        items: list[StateNode] = []
        while True:
            off = r.offset
            more = r.u8()
            if more == 0:
                return items
            if more != 1:
                raise FormatError(f"list marker {more:#04x}", offset=off, expected="0 or 1")
            items.append(dec.vmsd(_element_desc(f, len(items))))

    def encode(self, enc: Encoder, f: FieldDesc, value: list[StateNode]) -> None:
        for node in value:
            enc.w.u8(1)
            enc.node(node)
        enc.w.u8(0)


class GTreeType(FieldType):
    """GTree: u32 node count, repeat {u8 1, key, value}, then u8 0."""

    names = ("gtree",)

    def decode(self, dec: Decoder, f: FieldDesc) -> GTreeValue:
        r = dec.r
        nnodes = r.u32()
        vmsd_keys = len(f.nested) >= 2 * nnodes > 0
        items: list[tuple[Any, StateNode]] = []
        while True:
            off = r.offset
            more = r.u8()
            if more == 0:
                break
            if more != 1:
                raise FormatError(f"tree marker {more:#04x}", offset=off, expected="0 or 1")
            i = len(items)
            if vmsd_keys:
                key: Any = dec.vmsd(_element_desc(f, 2 * i))
                val = dec.vmsd(_element_desc(f, 2 * i + 1))
            else:
                key = r.u64()
                val = dec.vmsd(_element_desc(f, i))
            items.append((key, val))
        if len(items) != nnodes:
            raise FormatError(
                f"tree has {len(items)} nodes but announced {nnodes}", offset=r.offset
            )
        return GTreeValue(nnodes, items)

    def encode(self, enc: Encoder, f: FieldDesc, value: GTreeValue) -> None:
        w: Writer = enc.w
        w.u32(value.nnodes)
        for key, val in value.items:
            w.u8(1)
            if isinstance(key, StateNode):
                enc.node(key)
            else:
                w.u64(key)
            enc.node(val)
        w.u8(0)


def _element_desc(f: FieldDesc, i: int):
    """The nested description of list element ``i`` (QEMU writes one per element)."""
    if not f.nested:
        raise DescriptionError(
            f"field {f.name!r} ({f.type}) has elements but no nested description"
        )
    return f.nested[i] if i < len(f.nested) else f.nested[-1]


#: type name -> FieldType
REGISTRY: dict[str, FieldType] = {}


def register(ftype: FieldType) -> FieldType:
    """Add a field type under each of its names."""
    for n in ftype.names:
        REGISTRY[n] = ftype
    return ftype


for _names, _w, _s in (
    (("int8",), 1, True),
    (("int16",), 2, True),
    (("int32", "int32 equal", "int32 le"), 4, True),
    (("int64", "timer"), 8, True),
    (("uint8", "uint8 equal"), 1, False),
    (("uint16", "uint16 equal"), 2, False),
    (("uint32", "uint32 equal"), 4, False),
    # "int64 equal" is QEMU's vmstate_info_uint64_equal; float64 and
    # CPU_Double_U carry the IEEE bits of a double as a big-endian u64.
    (("uint64", "int64 equal", "float64", "CPU_Double_U"), 8, False),
):
    register(IntType(_names, _w, _s))
register(BoolType())
register(BytesType(("buffer", "unused_buffer", "bitmap", "unknown")))
register(NullPtrType())
register(CapabilityType())
register(StructType())
register(InlineVmsdType())
register(ListType())
register(GTreeType())

#: What reads a type nobody registered: its recorded size, as bytes.
OPAQUE = BytesType()


def field_type(f: FieldDesc) -> FieldType:
    """The registered type for ``f``, or opaque bytes when unknown or not fitting."""
    t = f.ftype
    if t is None:
        t = REGISTRY.get(f.type)
        if t is None or not t.fits(f):
            t = OPAQUE
        f.ftype = t
    return t
