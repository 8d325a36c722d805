"""CPUs: every CPU's registers by name (:func:`qevm.views.cpu.cpus`), as ``info registers``
groups them and as a table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .html import esc

if TYPE_CHECKING:
    from .gather import ReportData


def flat_registers(regs: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``(name, value)`` of every register, composite ones as ``cs.base``, arrays as ``[i]``."""
    out: list[tuple[str, Any]] = []
    for k, v in regs.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out += flat_registers(v, name + ".")
        elif isinstance(v, (list, tuple)):
            for i, e in enumerate(v):
                if isinstance(e, dict):
                    out += flat_registers(e, f"{name}[{i}].")
                else:
                    out.append((f"{name}[{i}]", e))
        else:
            out.append((name, v))
    return out


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
            for name, v in flat_registers(cpu.registers)
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
