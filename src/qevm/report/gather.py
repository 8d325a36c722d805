"""What the report shows, asked of qevm's APIs while the stream is open.

Nothing here decodes the stream again: the overview comes from the
:class:`~qevm.migration.Migration`, the layout from
:func:`qevm.views.memmap.layout`, device meanings from
:func:`qevm.devices.decode`, registers from :func:`qevm.views.cpu.cpus`,
page kinds from the page index, and differences and verdicts from
:mod:`qevm.analysis` (computed by the caller and passed in).  A part that
cannot be had (an unknown machine's layout, a stream without CPU state)
becomes a note in its place; the rest of the report is still made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import QevmError
from ..stream import BrokenRecord, DescriptionRecord, TrailingRecord
from ..vmstate.jsontext import QJSON, detect_style
from .ramgrid import MapGrid, Mmio, Piece, build_grid, changed_per_fine_cell

if TYPE_CHECKING:
    from ..analysis.diff import DiffReport
    from ..analysis.problems import Report as CheckReport
    from ..devices import DeviceReport
    from ..migration import Migration
    from ..views.cpu import CpuState
    from ..views.memmap import MemoryMap


@dataclass
class ReportData:
    """Everything one report shows."""

    mig: Migration
    title: str
    overview: dict[str, Any]
    grid: MapGrid
    memmap: MemoryMap | None = None
    #: Why the guest-physical layout is not known (blocks are then drawn by offset).
    memmap_error: str | None = None
    mmio: list[Mmio] = field(default_factory=list)
    devices: DeviceReport | None = None
    #: ``devices.to_json()`` (asked once: it looks names up in pci.ids).
    devices_json: dict[str, Any] = field(default_factory=dict)
    devices_error: str | None = None
    cpus: list[CpuState] = field(default_factory=list)
    cpus_error: str | None = None
    diff: DiffReport | None = None
    check: CheckReport | None = None
    #: Round labels (``START``, ``PART 1``, ..., ``END``) when rounds are RAM records.
    round_labels: list[str] = field(default_factory=list)


def gather(
    mig: Migration,
    *,
    diff: DiffReport | None = None,
    check: CheckReport | None = None,
    overrides: Any = None,
    title: str | None = None,
) -> ReportData:
    """Collect the report's contents from ``mig`` (open it with ``index_ram=True``, and
    ``track_rounds=True`` for the rounds view; without a page index RAM shows as absent)."""
    from ..devices import decode
    from ..views.cpu import cpus as cpu_states
    from ..views.memmap import layout

    memmap = memmap_error = None
    index = _page_index(mig)
    try:
        if index is None:
            raise QevmError("RAM was not indexed (open the stream with index_ram=True)")
        memmap = layout(mig, overrides)
    except QevmError as e:
        memmap_error = str(e)
    devices = devices_error = None
    try:
        devices = decode(mig, memory=index is not None)
    except QevmError as e:
        devices_error = str(e)
    cpus: list[CpuState] = []
    cpus_error = None
    try:
        cpus = cpu_states(mig)
    except QevmError as e:
        cpus_error = str(e)
    devices_json = devices.to_json() if devices is not None else {}
    mmio = mmio_items(devices_json)
    ps = mig.page_size or 4096
    blocks = {b.name: b for b in mig.ram_blocks}
    if memmap is not None:
        pieces = [Piece(r.gpa, r.size, r.block, r.offset, r.kind) for r in memmap.ranges]
        unmapped = [(n, blocks[n].used_length) for n in memmap.unmapped if n in blocks]
    else:
        pieces, mmio = [], []
        unmapped = [(b.name, b.used_length) for b in mig.ram_blocks]
    grid = build_grid(index, blocks, pieces, mmio, unmapped, ps)
    if diff is not None:
        gpa = [(m["gpa"], m["length"]) for m in diff.memory]
        by_block: dict[str, list[tuple[int, int]]] = {}
        for r in diff.ram:
            if r.get("only_in") != "b":
                by_block.setdefault(r["block"], []).append((r["offset"], r["length"]))
        grid.fine_changed = changed_per_fine_cell(grid, gpa, by_block)
    return ReportData(
        mig=mig,
        title=title or mig.source.name,
        overview=overview(mig, memmap),
        grid=grid,
        memmap=memmap,
        memmap_error=memmap_error,
        mmio=mmio,
        devices=devices,
        devices_json=devices_json,
        devices_error=devices_error,
        cpus=cpus,
        cpus_error=cpus_error,
        diff=diff,
        check=check,
        round_labels=round_labels(mig),
    )


def _page_index(mig: Migration) -> Any:
    try:
        return mig.page_index
    except QevmError:
        return None


def round_labels(mig: Migration) -> list[str]:
    """What each round is, when rounds are the RAM section's records (no multifd sync
    points): ``START``, ``PART 1``, ..., ``END``; else an empty list."""
    ram = mig.ram
    if ram is None or ram.multifd_flushes:
        return []
    for entry in mig.entries.values():
        if entry.idstr == "ram" and entry.handler is not None:
            out, parts = [], 0
            for rec in entry.records:
                if rec.type_name == "PART":
                    parts += 1
                    out.append(f"PART {parts}")
                else:
                    out.append(rec.type_name)
            return out
    return []


# -- MMIO ---------------------------------------------------------------------------------


def mmio_items(devices: dict[str, Any]) -> list[Mmio]:
    """Memory the devices decode at guest-physical addresses (from ``DeviceReport.to_json()``):
    PCI memory BARs and enabled expansion ROMs the guest programmed, xAPIC register pages."""
    out: list[Mmio] = []
    for f in devices.get("pci", []):
        where = f"{f.get('bus', 0):02x}:{f.get('slot', 0):02x}.{f.get('function', 0)}"
        name = f.get("section", "").rsplit("/", 1)[-1]
        for bar in f.get("bars") or []:
            if bar.get("kind") in ("mem32", "mem64") and bar.get("mapped"):
                out.append(
                    Mmio(bar["address"], bar.get("size"), f"{where} {name} BAR{bar['index']}")
                )
        rom = f.get("rom")
        if rom and rom.get("enabled") and rom.get("mapped"):
            out.append(Mmio(rom["address"], rom.get("size"), f"{where} {name} expansion ROM"))
    seen: dict[int, list[int]] = {}
    for apic in devices.get("lapic", []):
        if apic.get("enabled") and not apic.get("x2apic") and apic.get("apicbase") is not None:
            # IA32_APIC_BASE bits 12 and up: the 4 KiB xAPIC register page
            seen.setdefault(apic["apicbase"] & ~0xFFF & ((1 << 52) - 1), []).append(apic["cpu"])
    for addr, cpus in seen.items():
        which = ", ".join(str(c) for c in cpus)
        out.append(Mmio(addr, 0x1000, f"local APIC (CPU {which})"))
    return sorted(out, key=lambda m: m.addr)


# -- overview -----------------------------------------------------------------------------

#: Machine types carry the QEMU release that introduced them (``pc-q35-11.1``).
_MACHINE_VERSION = re.compile(r"-(\d+)\.(\d+)$")


def provenance(mig: Migration) -> list[tuple[str, str]]:
    """What the stream says about the QEMU that wrote it: ``(evidence, conclusion)``."""
    out: list[tuple[str, str]] = []
    machine = mig.machine
    if machine:
        m = _MACHINE_VERSION.search(machine)
        if m:
            out.append(
                (
                    f"machine type {machine}",
                    f"QEMU {m[1]}.{m[2]} or later (a QEMU keeps older machine types; "
                    f"{m[1]}.{m[2]} is the release that introduced this one)",
                )
            )
        else:
            out.append((f"machine type {machine}", "an unversioned machine type"))
    else:
        out.append(
            (
                "no configuration section",
                "a machine type of QEMU 2.3 or older, or Xen (QEMU sends one since 2.4)",
            )
        )
    desc = next((r for r in mig.records if isinstance(r, DescriptionRecord)), None)
    if desc is not None and desc.description is not None and desc.description.text:
        style = detect_style(desc.description.text)
        out.append(
            (
                'JSON description as qjson writes it ({ "key" : value })'
                if style == QJSON
                else 'JSON description as json-writer writes it ({"key": value})',
                "QEMU 2.3 to 5.2" if style == QJSON else "QEMU 6.0 or later",
            )
        )
    elif desc is None:
        out.append(
            (
                "no JSON description",
                "postcopy, or a stream QEMU did not finish, or one written before QEMU 2.3",
            )
        )
    live = sorted({e.idstr for e in mig.entries.values() if e.handler is not None})
    if live:
        out.append((f"sections with their own format: {', '.join(live)}", _live_meaning(live)))
    if "mapped-ram" in mig.capabilities:
        out.append(("mapped-ram capability", "QEMU 9.0 or later"))
    if any(b.records.get("zlib") for b in mig.ram_blocks):
        out.append(
            (
                "zlib-compressed pages",
                "QEMU 9.0 or older (multi-threaded compression was removed in 9.1)",
            )
        )
    names = {c.name for c in mig.commands()}
    if "SWITCHOVER_START" in names:
        out.append(("SWITCHOVER_START command", "QEMU 10.0 or later"))
    if names & {"POSTCOPY_ADVISE", "POSTCOPY_LISTEN", "POSTCOPY_RUN", "PACKAGED"}:
        out.append(("postcopy commands", "the migration switched to postcopy (or advised it)"))
    out.append(
        (
            "section footers" if mig.footers else "no section footers",
            "a machine type of 2.4 or later"
            if mig.footers
            else "machine type 2.3 or older, or Xen",
        )
    )
    return out


def _live_meaning(live: list[str]) -> str:
    if "block" in live:
        return "QEMU 9.0 or older: block migration (migrate -b) was removed in 9.1"
    return "registered by QEMU's own handlers, not described by a VMSD"


def overview(mig: Migration, memmap: MemoryMap | None) -> dict[str, Any]:
    """The overview's facts."""
    src = mig.source
    conf = mig.configuration
    desc_rec = next((r for r in mig.records if isinstance(r, DescriptionRecord)), None)
    end = max((r.end for r in mig.records), default=src.start)
    blocks = mig.ram_blocks
    devices = mig.devices()
    out: dict[str, Any] = {
        "file": src.name,
        "container": src.container,
        "container_info": {
            k: v for k, v in (src.info or {}).items() if isinstance(v, (str, int, bool))
        },
        "stream_bytes": end - src.start,
        "machine": mig.machine,
        "family": memmap.family if memmap is not None else None,
        "page_size": mig.page_size,
        "capabilities": sorted(mig.capabilities),
        "footers": mig.footers,
        "configuration": conf is not None,
        "uuid": conf.uuid.hex() if conf is not None and conf.uuid else None,
        "description": None,
        "description_supplied": desc_rec is None and mig.description is not None,
        "provenance": provenance(mig),
        "commands": [(c.offset, c.name, c.info) for c in mig.commands()],
        "ram_bytes": sum(b.used_length for b in blocks),
        "ram_blocks": len(blocks),
        "device_sections": len(devices),
        "device_bytes": sum(d.record.body_size for d in devices),
        "warnings": list(mig.warnings),
        "errors": [(e.offset, e.section, str(e)) for e in mig.errors],
        "unreadable": [
            (r.offset, r.end - r.offset) for r in mig.all_records() if isinstance(r, BrokenRecord)
        ],
        "trailing": [
            (r.offset, r.end - r.offset) for r in mig.records if isinstance(r, TrailingRecord)
        ],
        "sections": _sections(mig),
    }
    if desc_rec is not None:
        out["description"] = (desc_rec.offset, desc_rec.length, desc_rec.error)
    if _page_index(mig) is not None:
        for name, n in mig.missing_pages().items():
            out["warnings"].append(
                f"{n} pages of {name} are in no record of this stream: multifd and "
                "postcopy-preempt channels carry pages (give them with --channel); they "
                "show as absent"
            )
    return out


def _sections(mig: Migration) -> list[dict[str, Any]]:
    rows = []
    for entry in mig.entries.values():
        kinds: dict[str, int] = {}
        for r in entry.records:
            kinds[r.type_name] = kinds.get(r.type_name, 0) + 1
        errors = [str(r.error) for r in entry.records if r.error is not None]
        rows.append(
            {
                "id": entry.section_id,
                "name": entry.idstr,
                "instance_id": entry.instance_id,
                "version": entry.version,
                "kind": entry.handler.title if entry.handler else "device",
                "offset": entry.records[0].offset if entry.records else None,
                "length": sum(r.end - r.offset for r in entry.records),
                "records": " ".join(k if n == 1 else f"{k}\u00d7{n}" for k, n in kinds.items()),
                "error": errors[0] if errors else None,
            }
        )
    return rows
