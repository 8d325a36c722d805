"""A streaming JSON writer producing exactly what ``json.dumps(obj, indent=N)`` does.

Python's json module falls back to its pure-Python encoder whenever
``indent`` is set, which is slow on device states with large arrays (a
pseries guest has hundreds of thousands of TCE entries), and it builds the
whole text in memory.  This writer emits the same text — same indentation,
ASCII-only escaping — with C-level string escaping, fast paths for flat lists
and ``array.array``, and output flushed as it goes.  Objects with a
``json_chunks(sep)`` method write themselves as a list: each chunk is
already-encoded items joined by ``sep``.
"""

from __future__ import annotations

import json.encoder
from array import array
from collections.abc import Callable
from typing import Any, TextIO

_esc: Callable[[str], str] = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]

#: Flush to the output once this many characters are pending.
_FLUSH = 1 << 16
#: Items formatted at a time for big arrays.
_CHUNK = 4096


def _scalar(v: Any) -> str:
    if isinstance(v, str):
        return _esc(v)
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        return int.__repr__(v)
    if isinstance(v, float):
        return float.__repr__(v)
    raise TypeError(f"cannot write {type(v).__name__} as JSON")


class _Out:
    __slots__ = ("parts", "size", "write")

    def __init__(self, write: Callable[[str], Any]) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.write = write

    def add(self, s: str) -> None:
        self.parts.append(s)
        self.size += len(s)
        if self.size >= _FLUSH:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.write("".join(self.parts))
            self.parts.clear()
            self.size = 0


def dumps(obj: Any, indent: int = 4) -> str:
    """``json.dumps(obj, indent=indent, separators=(",", ": "))``, faster."""
    pieces: list[str] = []
    out = _Out(pieces.append)
    _write(obj, out, 0, indent)
    out.flush()
    return "".join(pieces)


def dump(obj: Any, stream: TextIO, indent: int = 4) -> None:
    """Write ``obj`` to ``stream`` and a newline, like ``print(json.dumps(...))``."""
    out = _Out(stream.write)
    _write(obj, out, 0, indent)
    out.add("\n")
    out.flush()


def _items(chunks: Callable[[str], Any], out: _Out, level: int, step: int) -> None:
    """A list whose items come as chunks of encoded JSON text joined by ``sep``."""
    inner = "\n" + " " * (level + step)
    sep = "," + inner
    first = True
    for chunk in chunks(sep):
        if not chunk:
            continue
        out.add(("[" if first else ",") + inner + chunk)
        first = False
    out.add("[]" if first else "\n" + " " * level + "]")


def _int_chunks(values: Any) -> Callable[[str], Any]:
    def gen(sep: str) -> Any:
        for i in range(0, len(values), _CHUNK):
            yield sep.join(map(int.__repr__, values[i : i + _CHUNK]))

    return gen


def _encoded(items: list[str]) -> Callable[[str], Any]:
    return lambda sep: (sep.join(items),)


def _write(obj: Any, out: _Out, level: int, step: int) -> None:
    if isinstance(obj, dict):
        if not obj:
            out.add("{}")
            return
        inner = "\n" + " " * (level + step)
        first = True
        for k, v in obj.items():
            out.add(
                ("{" if first else ",")
                + inner
                + (_esc(k) if isinstance(k, str) else _esc(_scalar(k)))
                + ": "
            )
            first = False
            if isinstance(v, (dict, list, tuple, array)) or hasattr(v, "json_chunks"):
                _write(v, out, level + step, step)
            else:
                out.add(_scalar(v))
        out.add("\n" + " " * level + "}")
    elif isinstance(obj, array):
        _items(_int_chunks(obj), out, level, step)
    elif hasattr(obj, "json_chunks"):
        _items(obj.json_chunks, out, level, step)
    elif isinstance(obj, (list, tuple)):
        if not obj:
            out.add("[]")
            return
        types = set(map(type, obj))
        if types == {str}:
            _items(_encoded(list(map(_esc, obj))), out, level, step)
            return
        if types == {int}:
            _items(_int_chunks(obj), out, level, step)
            return
        inner = "\n" + " " * (level + step)
        first = True
        for v in obj:
            out.add(("[" if first else ",") + inner)
            first = False
            if isinstance(v, (dict, list, tuple, array)) or hasattr(v, "json_chunks"):
                _write(v, out, level + step, step)
            else:
                out.add(_scalar(v))
        out.add("\n" + " " * level + "]")
    else:
        out.add(_scalar(obj))
