"""One self-contained HTML page about a stream: ``qevm report``.

>>> import qevm
>>> from qevm.analysis import check
>>> from qevm.analysis.diff import diff_opened
>>> from qevm.report import write_report
>>> with qevm.open("a.mig", index_ram=True, track_rounds=True, strict=False) as mig:
...     write_report(mig, "a.html", diff=diff_opened(mig, "b.mig"), check=check(mig, "dst.mig"))

The page has an overview (machine, what the stream says about the QEMU that
wrote it, capabilities, sizes, warnings and errors), the guest-physical RAM
map as inline SVG (element ``ram-map``: blocks at their addresses, holes and
device memory, cells coloured by what their pages are or by the round that
last wrote them, hover and zoom), every RAM block, every device section with
the decoded views of :mod:`qevm.devices` and its fields, every CPU's
registers, and optionally the differences to another input
(:func:`qevm.analysis.diff.diff_opened`) and the verdict of
:func:`qevm.analysis.check`.

Everything is inline (style, script, SVG, data); nothing is fetched, and a
Content-Security-Policy allows only the page's own style and script to run.
Every string from the stream is escaped (:mod:`.html`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .gather import ReportData, gather
from .page import render_page

if TYPE_CHECKING:
    from ..analysis.diff import DiffReport
    from ..analysis.problems import Report as CheckReport
    from ..migration import Migration


def report_html(
    mig: Migration,
    *,
    diff: DiffReport | None = None,
    check: CheckReport | None = None,
    overrides: Any = None,
    title: str | None = None,
) -> str:
    """The report on ``mig`` as one HTML document (``overrides``: ``--map`` text)."""
    return render_page(gather(mig, diff=diff, check=check, overrides=overrides, title=title))


def write_report(mig: Migration, path: str | os.PathLike[str], **kw: Any) -> int:
    """Write :func:`report_html` to ``path``; returns its size in bytes."""
    text = report_html(mig, **kw)
    data = text.encode("utf-8", errors="replace")
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


__all__ = ["ReportData", "gather", "render_page", "report_html", "write_report"]
