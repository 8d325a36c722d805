"""The whole page: sections in order, navigation, the inline style and script."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

from .. import __version__
from .analysis import render_check, render_diff
from .cpus import render_cpus
from .devices import render_devices
from .html import esc, page
from .map_svg import legend, render_map
from .overview import render_blocks, render_overview

if TYPE_CHECKING:
    from .gather import ReportData


@cache
def asset(name: str) -> str:
    """A file of the page (``report.css``, ``report.js``), shipped as package data."""
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{esc(title)}</h2>{body}</section>'


def render_page(data: ReportData) -> str:
    """The report as one HTML document."""
    sections = []
    if data.check is not None:
        sections.append(("check", "Will it load?", render_check(data)))
    sections.append(("overview", "Overview", render_overview(data)))
    ram = (
        legend(data)
        + '<div class="map-wrap"><div class="map-scroll">'
        + render_map(data)
        + '</div><div id="zoom" class="zoom" hidden></div></div>'
        + '<div id="tip" class="tip" hidden></div>'
        + "<h3>RAM blocks</h3>"
        + render_blocks(data)
    )
    sections.append(("ram", "Guest-physical RAM", ram))
    if data.diff is not None:
        sections.append(("diff", "Differences", render_diff(data)))
    sections.append(("devices", "Devices", render_devices(data)))
    sections.append(("cpus", "CPUs", render_cpus(data)))
    nav = "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title, _ in sections)
    machine = data.mig.machine or "stream"
    body = (
        f'<header><h1>{esc(data.title)} <span class="muted">{esc(machine)}</span></h1>'
        f"<nav>{nav}</nav></header><main>"
        + "".join(_section(*s) for s in sections)
        + f'</main><footer class="muted">qevm {esc(__version__)} report</footer>'
    )
    return page(f"qevm report: {data.title}", asset("report.css"), asset("report.js"), body)
