"""Fixed binary headers, declared once with the C fields of the project that defines them.

A header is a subclass of :class:`CStruct` whose ``fields`` are its C
declaration, with the field names QEMU or libvirt use::

    class MappedRamHeader(CStruct, fields='''
        uint32_t version;
        uint64_t page_size;
        uint64_t bitmap_offset;
        uint64_t pages_offset;
    '''):
        '''The header after each block of a mapped-ram stream (ram.c).'''

That one declaration reads (:meth:`CStruct.unpack`, :meth:`CStruct.read`),
writes (``MappedRamHeader(version=1, ...).pack()``) and locates:
``hdr.offset_of("page_size")`` is the absolute offset of the field in the
input, and ``hdr.error("page_size", ...)`` the error that names the field
there.  Every header read is an instance of its class (one attribute per
field, plus ``at``, where it was read), so containers and the stream report
the same kind of object.

Types: ``uint8_t`` .. ``uint64_t`` and ``int8_t`` .. ``int64_t``; arrays of
``char``, ``unsigned char`` or ``uint8_t`` are ``bytes``, other arrays tuples
of integers.  Structs are packed (no padding), big-endian as QEMU writes its
streams unless a class says ``byte_order="<"`` or a call names the order
(libvirt writes its header in the host's).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from .errors import FormatError, QevmError, TruncatedError

T = TypeVar("T", bound="CStruct")

_SCALARS = {
    "uint8_t": "B",
    "int8_t": "b",
    "uint16_t": "H",
    "int16_t": "h",
    "uint32_t": "I",
    "int32_t": "i",
    "uint64_t": "Q",
    "int64_t": "q",
}
_BYTE_TYPES = ("char", "unsigned char", "uint8_t")
_DECLARATION = re.compile(
    r"(?P<type>(?:unsigned\s+)?\w+)\s+(?P<name>\w+)\s*(?:\[\s*(?P<n>\d+)\s*\])?"
)
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)


@dataclass(frozen=True)
class Field:
    """One member of a declared struct."""

    name: str
    ctype: str
    #: Bytes from the start of the struct.
    offset: int
    size: int
    #: The element count of an array (None for a scalar).
    count: int | None
    #: Its :mod:`struct` format (without byte order).
    code: str

    @property
    def is_bytes(self) -> bool:
        return self.count is not None and self.ctype in _BYTE_TYPES

    @property
    def default(self) -> Any:
        if self.is_bytes:
            return bytes(self.count or 0)
        if self.count is not None:
            return (0,) * self.count
        return 0


def parse_fields(text: str) -> tuple[Field, ...]:
    """The fields of a C struct body (``type name;`` or ``type name[N];`` each)."""
    out: list[Field] = []
    offset = 0
    for decl in _COMMENT.sub(" ", text).split(";"):
        decl = " ".join(decl.split())
        if not decl:
            continue
        m = _DECLARATION.fullmatch(decl)
        if m is None:
            raise ValueError(f"cannot read the C declaration {decl!r}")
        ctype, name, n = m["type"], m["name"], m["n"]
        count = int(n) if n is not None else None
        if count is not None and ctype in _BYTE_TYPES:
            code = f"{count}s"
        elif ctype in _SCALARS:
            code = f"{count}{_SCALARS[ctype]}" if count is not None else _SCALARS[ctype]
        else:
            raise ValueError(f"unknown C type {ctype!r} of field {name!r}")
        size = struct.calcsize(">" + code)
        out.append(Field(name, ctype, offset, size, count, code))
        offset += size
    if len({f.name for f in out}) != len(out):
        raise ValueError("a field name is declared twice")
    return tuple(out)


class CStruct:
    """A fixed binary header; subclasses declare their ``fields`` (see the module)."""

    fields: ClassVar[tuple[Field, ...]] = ()
    #: Bytes the struct takes.
    size: ClassVar[int] = 0
    byte_order: ClassVar[str] = ">"
    #: What :meth:`error` raises by default (containers say ContainerError).
    error_class: ClassVar[type[QevmError]] = FormatError
    _by_name: ClassVar[dict[str, Field]] = {}
    _structs: ClassVar[dict[str, struct.Struct]] = {}

    #: Absolute offset the struct was read from (0 for one built to be written).
    at: int

    def __init_subclass__(cls, *, fields: str | None = None, byte_order: str = ">", **kw: Any):
        super().__init_subclass__(**kw)
        if fields is None:
            return  # a subclass of a declared struct adds behaviour only
        cls.fields = parse_fields(fields)
        cls.byte_order = byte_order
        cls._by_name = {f.name: f for f in cls.fields}
        fmt = "".join(f.code for f in cls.fields)
        cls._structs = {order: struct.Struct(order + fmt) for order in "<>"}
        cls.size = cls._structs[">"].size

    def __init__(self, at: int = 0, **values: Any) -> None:
        unknown = set(values) - set(self._by_name)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(sorted(unknown))}")
        self.at = at
        for f in self.fields:
            setattr(self, f.name, values.get(f.name, f.default))

    # -- reading ------------------------------------------------------------------
    @classmethod
    def unpack(cls: type[T], data: Any, at: int = 0, *, byte_order: str | None = None) -> T:
        """The struct at the start of ``data``, which was read from absolute offset ``at``.

        With ``byte_order`` the struct keeps that order (it packs in it too).
        """
        st = cls._structs[byte_order or cls.byte_order]
        if len(data) < st.size:
            raise TruncatedError(
                f"{cls.__name__} needs {st.size} bytes, {len(data)} present",
                offset=at,
                expected=f"{st.size} bytes",
            )
        flat = st.unpack_from(data)
        obj = cls.__new__(cls)
        obj.at = at
        if byte_order is not None:
            obj.byte_order = byte_order  # type: ignore[misc]
        i = 0
        for f in cls.fields:
            if f.count is not None and not f.is_bytes:
                setattr(obj, f.name, flat[i : i + f.count])
                i += f.count
            else:
                setattr(obj, f.name, flat[i])
                i += 1
        return obj

    @classmethod
    def read(cls: type[T], r: Any, *, byte_order: str | None = None) -> T:
        """The struct at a :class:`~qevm.wire.Reader`'s position (which moves past it)."""
        at = r.offset
        return cls.unpack(r.bytes(cls.size), at, byte_order=byte_order)

    # -- writing ------------------------------------------------------------------
    def pack(self, byte_order: str | None = None) -> bytes:
        """The struct's bytes."""
        flat: list[Any] = []
        for f in self.fields:
            v = getattr(self, f.name)
            if f.count is not None and not f.is_bytes:
                if len(v) != f.count:
                    raise ValueError(f"{f.name} needs {f.count} elements, not {len(v)}")
                flat.extend(v)
            else:
                flat.append(v)
        return self._structs[byte_order or self.byte_order].pack(*flat)

    def replace(self: T, **values: Any) -> T:
        """A copy with some fields changed (at the same offset, in the same byte order)."""
        new = type(self)(self.at, **{**self.to_dict(), **values})
        if "byte_order" in self.__dict__:
            new.byte_order = self.byte_order  # type: ignore[misc]
        return new

    # -- locating -----------------------------------------------------------------
    @classmethod
    def field_offset(cls, name: str) -> int:
        """Bytes from the start of the struct to field ``name``."""
        return cls._by_name[name].offset

    def offset_of(self, name: str) -> int:
        """The absolute offset of field ``name`` in the input this struct was read from."""
        return self.at + self.field_offset(name)

    def error(
        self,
        name: str,
        message: str,
        *,
        expected: str | None = None,
        error: type[QevmError] | None = None,
    ) -> QevmError:
        """An error about field ``name``, naming it and located at its offset."""
        return (error or self.error_class)(
            message,
            offset=self.offset_of(name),
            field=f"{type(self).__name__}.{name}",
            expected=expected,
        )

    # -- plain values ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in self.fields}

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.to_dict() == other.to_dict()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({body}, at={self.at:#x})"
