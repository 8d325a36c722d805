"""A device section's fields as nested, collapsible HTML (from qevm's native JSON form).

Integers show in hex with their decimal value, byte buffers as hex, arrays
and structs fold away when long; every name and value is escaped.
"""

from __future__ import annotations

import array
from typing import Any

from .html import esc

#: Integer arrays shown inline up to this many elements; longer ones fold.
INLINE_ITEMS = 16
#: Hex strings shown inline up to this many characters.
INLINE_HEX = 64


def int_text(v: int) -> str:
    if -10 < v < 10:
        return f'<span class="n">{v}</span>'
    sign = "-" if v < 0 else ""
    return f'<span class="n">{sign}0x{abs(v):x}</span> <span class="muted">{v}</span>'


def value_html(v: Any) -> str:
    """One value (any JSON-form value qevm gives) as HTML."""
    if isinstance(v, bool):
        return f'<span class="n">{"true" if v else "false"}</span>'
    if isinstance(v, int):
        return int_text(v)
    if v is None:
        return '<span class="muted">null</span>'
    if isinstance(v, str):
        if len(v) > INLINE_HEX:
            return (
                f"<details><summary>{len(v)} characters</summary>"
                f'<code class="wrap">{esc(v)}</code></details>'
            )
        return f"<code>{esc(v)}</code>"
    if isinstance(v, (bytes, bytearray)):
        return value_html(bytes(v).hex())
    if isinstance(v, dict):
        return _folded(f"{len(v)} fields", fields_table(v), open_=len(v) <= 4)
    if isinstance(v, (list, tuple, array.array)):
        return _list_html(v)
    return f"<code>{esc(v)}</code>"


def _list_html(v: Any) -> str:
    items = list(v)
    if all(isinstance(e, int) and not isinstance(e, bool) for e in items):
        width = max((len(f"{abs(e):x}") for e in items), default=1)
        text = " ".join(("-" if e < 0 else "") + f"{abs(e):0{width}x}" for e in items)
        if len(items) <= INLINE_ITEMS:
            return f'<code class="arr">[{esc(text)}]</code>'
        return _folded(f"{len(items)} integers (hex)", f'<code class="arr wrap">{esc(text)}</code>')
    rows = "".join(
        f'<tr><th class="idx">[{i}]</th><td>{value_html(e)}</td></tr>' for i, e in enumerate(items)
    )
    return _folded(f"{len(items)} elements", f'<table class="fields">{rows}</table>')


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
                title = f"subsection {sub}" + (
                    f" (version {version})" if version is not None else ""
                )
                rows.append(
                    f'<tr><th colspan="2" class="sub">{esc(title)}</th></tr>'
                    f'<tr><td colspan="2">{fields_table(inner)}</td></tr>'
                )
            continue
        rows.append(f"<tr><th>{esc(name)}</th><td>{value_html(v)}</td></tr>")
    return f'<table class="fields">{"".join(rows)}</table>'
