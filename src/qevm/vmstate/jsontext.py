"""The JSON VM description as QEMU writes its text, for writing it back.

QEMU produced the description with two writers over time:

* ``jsonwriter`` (QEMU 6.0 and later, ``qobject/json-writer.c``, not
  pretty): ``{"key": value, "key": value}``, ``[a, b]``, no other
  whitespace; in strings ``\\"``, ``\\\\``, ``\\b \\f \\n \\r \\t`` and every
  other code point below 0x20 or from 0x7F as ``\\uXXXX`` in upper-case hex
  (a surrogate pair above U+FFFF).
* ``qjson`` (QEMU 2.3 to 5.2, ``migration/qjson.c``): ``{ "key" : value,
  "key" : value }``, ``[ a, b ]`` (an empty container is ``{  }``), strings
  copied without any escaping.

:func:`dump` writes a :class:`~qevm.vmstate.desc.JsonObject` tree (every
key/value pair in order, duplicates included) in either style;
:func:`detect_style` tells them apart from the original text.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import DescriptionError
from .desc import JsonObject

JSONWRITER = "jsonwriter"
QJSON = "qjson"
STYLES = (JSONWRITER, QJSON)

_PLAIN = re.compile(r"[\x20-\x7e]*\Z")
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def detect_style(text: bytes) -> str:
    """The writer that produced ``text`` (``{"`` starts jsonwriter, ``{ `` qjson)."""
    if text.startswith(b"{ "):
        return QJSON
    return JSONWRITER


def _quote_jsonwriter(s: str) -> str:
    if _PLAIN.match(s) and '"' not in s and "\\" not in s:
        return f'"{s}"'
    out = ['"']
    for ch in s:
        esc = _ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
            continue
        cp = ord(ch)
        if cp > 0xFFFF:
            cp -= 0x10000
            out.append(f"\\u{0xD800 + (cp >> 10):04X}\\u{0xDC00 + (cp & 0x3FF):04X}")
        elif cp < 0x20 or cp >= 0x7F:
            out.append(f"\\u{cp:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _quote_qjson(s: str) -> str:
    return f'"{s}"'


def _scalar(v: Any, where: str) -> str:
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        return str(v)
    raise DescriptionError(f"{where}: cannot write a {type(v).__name__} into the description")


class _Style:
    """Punctuation and string quoting of one of QEMU's JSON writers."""

    def __init__(
        self, open_obj: str, close_obj: str, open_arr: str, close_arr: str, key_sep: str, quote: Any
    ) -> None:
        self.open_obj, self.close_obj = open_obj, close_obj
        self.open_arr, self.close_arr = open_arr, close_arr
        self.key_sep = key_sep
        self.quote = quote


_STYLES = {
    JSONWRITER: _Style("{", "}", "[", "]", ": ", _quote_jsonwriter),
    QJSON: _Style("{ ", " }", "[ ", " ]", " : ", _quote_qjson),
}


def dump(obj: JsonObject, style: str = JSONWRITER) -> bytes:
    """The text of ``obj`` exactly as QEMU's writer of ``style`` would produce it."""
    if style not in STYLES:
        raise ValueError(f"unknown JSON style {style!r}")
    out: list[str] = []
    _write(obj, out, _STYLES[style])
    return "".join(out).encode("utf-8")


def _pairs(obj: Any) -> list[tuple[str, Any]]:
    return obj.pairs if isinstance(obj, JsonObject) else list(obj.items())


def _write(v: Any, out: list[str], st: _Style) -> None:
    if isinstance(v, dict):
        out.append(st.open_obj)
        for i, (k, x) in enumerate(_pairs(v)):
            if i:
                out.append(", ")
            out.append(st.quote(k))
            out.append(st.key_sep)
            _write(x, out, st)
        out.append(st.close_obj)
    elif isinstance(v, list):
        out.append(st.open_arr)
        for i, x in enumerate(v):
            if i:
                out.append(", ")
            _write(x, out, st)
        out.append(st.close_arr)
    elif isinstance(v, str):
        out.append(st.quote(v))
    else:
        out.append(_scalar(v, "description"))
