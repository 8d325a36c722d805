"""CPUs: every CPU's registers by name (:func:`qevm.views.cpu.cpus`), as ``info registers``
groups them and as a table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .html import esc

if TYPE_CHECKING:
    from .gather import ReportData


def register_text(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return f"0x{v:x}" if v >= 0 else f"-0x{-v:x}"
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    return str(v)


def render_cpus(data: ReportData) -> str:
    if data.cpus_error:
        return f'<p class="note">{esc(data.cpus_error)}</p>'
    parts = []
    for n, cpu in enumerate(data.cpus):
        cells = "".join(
            f'<tr data-reg="{esc(name)}"><th>{esc(name)}</th><td><code>{esc(register_text(v))}'
            "</code></td></tr>"
            for name, v in cpu.flat()
        )
        parts.append(
            f'<details class="cpu" id="cpu-{cpu.index}" data-cpu="{cpu.index}"'
            f"{' open' if n < 2 else ''}>"
            f'<summary>CPU {cpu.index} <span class="muted">{esc(cpu.arch)}</span></summary>'
            f'<pre class="regs-text">{esc(chr(10).join(cpu.format()))}</pre>'
            f'<details class="regs-all"><summary>every register by name</summary>'
            f'<table class="fields regs">{cells}</table></details></details>'
        )
    return "".join(parts)
