"""Safe HTML building: every string from a stream is hostile until escaped here.

Text and attribute values go through :func:`esc` (``& < > " '``), data for
the page's script through :func:`json_island` (a ``<script
type="application/json">`` whose text cannot end the element or open a
comment), and the page itself is sealed with a Content-Security-Policy that
lets only the report's own style and script run (by hash), so even markup
that slipped through could neither run script nor fetch anything.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from typing import Any

_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;", "\0": "\ufffd"}
)


def esc(value: Any) -> str:
    """``value`` as text safe in HTML content and in quoted attribute values."""
    return str(value).translate(_ESCAPES)


def attrs(**kw: Any) -> str:
    """`` name="value"`` pairs (``class_`` for ``class``, ``data_x`` for ``data-x``); None
    values are left out, True gives the bare name."""
    out = []
    for key, value in kw.items():
        if value is None or value is False:
            continue
        name = key.rstrip("_").replace("_", "-")
        out.append(f" {name}" if value is True else f' {name}="{esc(value)}"')
    return "".join(out)


def tag(name: str, body: str = "", **kw: Any) -> str:
    """``<name attrs>body</name>``; ``body`` must already be HTML."""
    return f"<{name}{attrs(**kw)}>{body}</{name}>"


def hexa(value: int | None, digits: int = 0) -> str:
    """An address or size as ``0x...`` (``digits`` pads the hex digits)."""
    if value is None:
        return "?"
    return f"0x{value:0{digits}x}"


def size_text(n: int) -> str:
    """A byte count as hex with its binary-prefixed size: ``0x20000000 (512 MiB)``."""
    return f"{hexa(n)} ({human(n)})"


def human(n: float) -> str:
    """``n`` bytes with a binary prefix: ``512 MiB``, ``4 KiB``, ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            if unit == "B":
                return f"{int(n)} B"
            return f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024
    raise AssertionError


def table(head: Iterable[str], rows: Iterable[Iterable[str]], **kw: Any) -> str:
    """A table; cells are HTML already (escape what came from the stream)."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table{attrs(**kw)}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def json_island(element_id: str, data: Any) -> str:
    """``data`` as JSON in an inert script element the page's script reads."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    # '<' '>' '&' as \\u escapes: the text can neither close the element nor open a comment.
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{esc(element_id)}">{text}</script>'


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def csp_hash(text: str) -> str:
    """The CSP source expression allowing exactly this inline script or style."""
    return "'sha256-" + b64(hashlib.sha256(text.encode()).digest()) + "'"


def page(title: str, css: str, js: str, body: str) -> str:
    """The whole document: one file, nothing fetched, only its own style and script run."""
    policy = (
        f"default-src 'none'; style-src {csp_hash(css)}; script-src {csp_hash(js)}; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(policy)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{esc(title)}</title><style>{css}</style></head>\n"
        f"<body>{body}\n<script>{js}</script></body></html>\n"
    )
