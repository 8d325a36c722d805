"""A device section's fields as nested, collapsible HTML (from qevm's native JSON form).

Integers show in hex (small ones in decimal), byte buffers as hex, arrays and
structs fold away when long.  Arrays are written compactly and losslessly:
a run of equal integers as ``value×count``, an array of structs as one table
(a column per field) with runs of equal elements as one row ``[i–j]``.
Every name and value is escaped.
"""

from __future__ import annotations

import array
import re
from typing import Any

from .html import esc

#: Arrays shown without folding up to this many elements.
INLINE_ITEMS = 16
#: Hex strings shown inline up to this many characters.
INLINE_HEX = 64
#: Equal integers in a row written once with their count from this many on.
RUN = 4


def int_text(v: int) -> str:
    if -10 < v < 10:
        return f'<span class="n">{v}</span>'
    return f'<span class="n">{"-" if v < 0 else ""}0x{abs(v):x}</span>'


def value_html(v: Any) -> str:
    """One value (any JSON-form value qevm gives) as HTML."""
    if isinstance(v, bool):
        return f'<span class="n">{"true" if v else "false"}</span>'
    if isinstance(v, int):
        return int_text(v)
    if v is None:
        return '<span class="muted">null</span>'
    if isinstance(v, str):
        if len(v) <= INLINE_HEX:
            return f"<code>{esc(v)}</code>"
        if len(v) % 2 == 0 and _HEX.fullmatch(v):  # a buffer, as qevm's JSON writes it
            return _folded(
                f"{len(v) // 2} bytes (hex)", f'<code class="wrap">{_hex_runs(v)}</code>'
            )
        return _folded(f"{len(v)} characters", f'<code class="wrap">{esc(v)}</code>')
    if isinstance(v, (bytes, bytearray)):
        return value_html(bytes(v).hex())
    if isinstance(v, dict):
        return _folded(f"{len(v)} fields", fields_table(v), open_=len(v) <= 4)
    if isinstance(v, (list, tuple, array.array)):
        return _list_html(list(v))
    return f"<code>{esc(v)}</code>"


_HEX = re.compile(r"[0-9a-f]*")
#: Equal bytes in a row written once with their count from this many on.
BYTE_RUN = 16


def _hex_runs(text: str) -> str:
    """Hex bytes in groups of 16, a run of one byte value as ``00×N``."""
    data = bytes.fromhex(text)
    words: list[str] = []
    i = 0
    while i < len(data):
        j = i
        while j < len(data) and data[j] == data[i]:
            j += 1
        if j - i >= BYTE_RUN:
            words.append(f"{data[i]:02x}\u00d7{j - i}")
            i = j
            continue
        # literal bytes up to the next long run
        k = i
        while k < len(data):
            r = k
            while r < len(data) and data[r] == data[k]:
                r += 1
            if r - k >= BYTE_RUN:
                break
            k = r
        chunk = data[i:k].hex()
        words += [chunk[n : n + 32] for n in range(0, len(chunk), 32)]
        i = k
    return " ".join(words)


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, str))


def _runs(items: list[Any]) -> list[tuple[int, int, Any]]:
    """``(first, last, value)`` of each run of equal consecutive items."""
    out: list[tuple[int, int, Any]] = []
    for i, v in enumerate(items):
        if out and out[-1][2] == v:
            out[-1] = (out[-1][0], i, v)
        else:
            out.append((i, i, v))
    return out


def _index(first: int, last: int) -> str:
    return f"[{first}]" if first == last else f"[{first}\u2013{last}]"


def _list_html(items: list[Any]) -> str:
    if all(isinstance(e, int) and not isinstance(e, bool) for e in items):
        return _int_array(items)
    runs = _runs(items)
    if items and all(isinstance(e, dict) for e in items):
        keys = list(items[0])
        if all(list(e) == keys and all(_scalar(x) for x in e.values()) for e in items):
            return _struct_table(keys, runs, len(items))
    rows = "".join(
        f'<tr><th class="idx">{_index(a, b)}</th><td>{value_html(v)}</td></tr>' for a, b, v in runs
    )
    return _folded(
        f"{len(items)} elements", f'<table class="fields">{rows}</table>', open_=len(runs) <= 4
    )


def _int_array(items: list[int]) -> str:
    width = max((len(f"{abs(e):x}") for e in items), default=1)
    words = []
    for first, last, v in _runs(items):
        word = ("-" if v < 0 else "") + f"{abs(v):0{width}x}"
        n = last - first + 1
        words.append(f"{word}\u00d7{n}" if n >= RUN else " ".join([word] * n))
    text = " ".join(words)
    if len(items) <= INLINE_ITEMS:
        return f'<code class="arr">[{esc(text)}]</code>'
    return _folded(f"{len(items)} integers (hex)", f'<code class="arr wrap">{esc(text)}</code>')


def _struct_table(keys: list[str], runs: list[tuple[int, int, Any]], n: int) -> str:
    head = "<tr><th></th>" + "".join(f"<th>{esc(k)}</th>" for k in keys) + "</tr>"
    rows = "".join(
        f'<tr><th class="idx">{_index(a, b)}</th>'
        + "".join(f"<td>{value_html(v[k])}</td>" for k in keys)
        + "</tr>"
        for a, b, v in runs
    )
    table = f'<table class="fields structs"><thead>{head}</thead><tbody>{rows}</tbody></table>'
    return _folded(f"{n} \u00d7 {{{', '.join(keys)}}}", table, open_=len(runs) <= 4)


def _folded(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body}</details>"


def fields_table(fields: dict[str, Any]) -> str:
    """A node's fields, name by name (``subsections`` nested under their names)."""
    rows = []
    for name, v in fields.items():
        if name == "subsections" and isinstance(v, dict):
            for sub, body in v.items():
                inner = dict(body)
                version = inner.pop("version", None)
                title = f"subsection {sub}"
                if version is not None:
                    title += f" (version {version})"
                rows.append(
                    f'<tr><th colspan="2" class="sub">{esc(title)}</th></tr>'
                    f'<tr><td colspan="2">{fields_table(inner)}</td></tr>'
                )
            continue
        rows.append(f"<tr><th>{esc(name)}</th><td>{value_html(v)}</td></tr>")
    return f'<table class="fields">{"".join(rows)}</table>'
