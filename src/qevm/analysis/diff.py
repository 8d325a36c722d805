"""Two migration streams compared: what changed between them.

:func:`diff` opens any two inputs (streams, libvirt images, two snapshots
of one qcow2, compressed files, pipes) and compares

* the configuration (machine type, page size, capabilities, UUID);
* the descriptions: sections added or removed, versions, fields and
  subsections added, removed or changed;
* device state field by field, sections matched by idstr and instance id
  (and by order where one appears more than once);
* RAM: pages whose final contents differ, per block and as guest-physical
  ranges (:func:`~qevm.views.memmap.layout` of the first input), compared
  by 64-bit digests (:mod:`.pages`), so multi-GiB guests take a few MiB;
* CPU registers by name (:func:`~qevm.views.cpu.cpus`).

``a_channels``/``b_channels`` are the recorded extra connections of a live
migration (multifd, postcopy-preempt) whose pages complete that side's RAM;
pages no record gave are compared as zeros, and a warning says how many.

``ignore`` globs drop what they match: a section (``timer``), a field
(``cpu#0:env.tsc``, ``*:*timer*``), a RAM block (``pc.ram``), a register
(``cpu:rip``, ``cpu#1:*``), a configuration item (``configuration:uuid``).
"""

from __future__ import annotations

import fnmatch
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import QevmError
from .fields import compare_nodes, compare_values, compare_vmsd
from .pagecmp import IndexPages, Pages, block_sizes, differing
from .pages import PageDigests

if TYPE_CHECKING:
    from ..migration import Migration


@dataclass
class DiffReport:
    """Everything that differs between ``a`` and ``b`` (lists of JSON-ready entries)."""

    a: str
    b: str
    configuration: list[dict[str, Any]] = field(default_factory=list)
    description: list[dict[str, Any]] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)
    ram: list[dict[str, Any]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    cpus: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Pages compared (per side, over all blocks) and pages that differ.
    pages: int = 0
    pages_differing: int = 0

    @property
    def equal(self) -> bool:
        return not (
            self.configuration
            or self.description
            or self.devices
            or self.ram
            or self.memory
            or self.cpus
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "equal": self.equal,
            "configuration": self.configuration,
            "description": self.description,
            "devices": self.devices,
            "ram": self.ram,
            "memory": self.memory,
            "cpus": self.cpus,
            "pages": {"compared": self.pages, "differing": self.pages_differing},
            "warnings": self.warnings,
        }


class _Ignore:
    def __init__(self, globs: list[str] | tuple[str, ...]) -> None:
        self.globs = list(globs)

    def __call__(self, *names: str) -> bool:
        return any(fnmatch.fnmatchcase(n, g) for n in names for g in self.globs)


@dataclass
class _Side:
    mig: Migration
    pages: Pages | None


def _open(path: Any, snapshot: str | None, fmt: str, channels: Sequence[Any] = ()) -> _Side:
    """Open one input with one digest per RAM page."""
    from .. import open as qopen
    from ..source import open_source

    src = open_source(path, format=fmt, snapshot=snapshot)
    if src.seekable or channels:
        # pages of several connections are put in order through the page index,
        # which reads them back: an input read once is then copied to a file first
        mig = qopen(src, index_ram=True, strict=False, channels=list(channels), spool=True)
        return _Side(mig, IndexPages(mig) if mig.ram is not None else None)
    sink: list[PageDigests] = []

    def consumer(ctx: Any, ps: int) -> PageDigests:
        sink.append(PageDigests(ps))
        return sink[0]

    mig = qopen(src, ram_consumer=consumer, strict=False)
    return _Side(mig, sink[0].finish() if sink else None)


def diff(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    ignore: list[str] | tuple[str, ...] = (),
    a_snapshot: str | None = None,
    b_snapshot: str | None = None,
    a_format: str = "auto",
    b_format: str = "auto",
    a_channels: Sequence[str | os.PathLike[str]] = (),
    b_channels: Sequence[str | os.PathLike[str]] = (),
) -> DiffReport:
    """Compare inputs ``a`` and ``b``."""
    side_a = _open(a, a_snapshot, a_format, a_channels)
    try:
        side_b = _open(b, b_snapshot, b_format, b_channels)
        try:
            return diff_migrations(side_a, side_b, os.fspath(a), os.fspath(b), _Ignore(ignore))
        finally:
            side_b.mig.close()
    finally:
        side_a.mig.close()


def diff_opened(
    a: Migration,
    b: str | os.PathLike[str],
    *,
    ignore: list[str] | tuple[str, ...] = (),
    b_snapshot: str | None = None,
    b_format: str = "auto",
    a_label: str | None = None,
    b_channels: Sequence[str | os.PathLike[str]] = (),
) -> DiffReport:
    """Compare ``a``, already open (with ``index_ram=True`` to compare RAM), with input ``b``."""
    pages = IndexPages(a) if a.ram is not None and _indexed(a) else None
    side_b = _open(b, b_snapshot, b_format, b_channels)
    try:
        return diff_migrations(
            _Side(a, pages), side_b, a_label or a.source.name, os.fspath(b), _Ignore(ignore)
        )
    finally:
        side_b.mig.close()


def _indexed(mig: Migration) -> bool:
    try:
        return mig.page_index is not None
    except QevmError:
        return False


def diff_migrations(a: _Side, b: _Side, la: str, lb: str, ignore: _Ignore) -> DiffReport:
    rep = DiffReport(la, lb)
    for side, label in ((a, "a"), (b, "b")):
        for err in side.mig.errors:
            rep.warnings.append(f"{label} does not read cleanly: {err}")
    _configuration(a.mig, b.mig, rep, ignore)
    _descriptions(a.mig, b.mig, rep, ignore)
    _devices(a.mig, b.mig, rep, ignore)
    _ram(a, b, rep, ignore)
    _cpus(a.mig, b.mig, rep, ignore)
    return rep


def _configuration(a: Migration, b: Migration, rep: DiffReport, ignore: _Ignore) -> None:
    ca, cb = a.configuration, b.configuration
    items = {
        "machine": (a.machine, b.machine),
        "page_size": (a.page_size, b.page_size),
        "capabilities": (sorted(a.capabilities), sorted(b.capabilities)),
        "uuid": (
            ca.uuid.hex() if ca is not None and ca.uuid else None,
            cb.uuid.hex() if cb is not None and cb.uuid else None,
        ),
        "section_footers": (a.footers, b.footers),
        "description": (a.has_description, b.has_description),
    }
    for name, (va, vb) in items.items():
        if va != vb and not ignore(f"configuration:{name}"):
            rep.configuration.append({"field": name, "a": va, "b": vb})


def _descriptions(a: Migration, b: Migration, rep: DiffReport, ignore: _Ignore) -> None:
    da, db = a.description, b.description
    if da is None or db is None:
        if (da is None) != (db is None):
            rep.warnings.append("only one input has a description: descriptions not compared")
        return
    ka = {(d.name, d.instance_id): d for d in da.devices}
    kb = {(d.name, d.instance_id): d for d in db.devices}
    for key, d in ka.items():
        if ignore(key[0]):
            continue
        e = kb.get(key)
        entry = {"name": key[0], "instance_id": key[1]}
        if e is None:
            rep.description.append(
                {**entry, "change": "section removed", "path": None, "a": d.vmsd_name, "b": None}
            )
            continue
        for ch in compare_vmsd(d, e):
            if ch.get("path") and ignore(f"{key[0]}:{ch['path']}"):
                continue
            rep.description.append({**entry, **ch})
    for key, e in kb.items():
        if key not in ka and not ignore(key[0]):
            rep.description.append(
                {
                    "name": key[0],
                    "instance_id": key[1],
                    "change": "section added",
                    "path": None,
                    "a": None,
                    "b": e.vmsd_name,
                }
            )


def _devices(a: Migration, b: Migration, rep: DiffReport, ignore: _Ignore) -> None:
    ga: dict[tuple[str, int], list] = defaultdict(list)
    gb: dict[tuple[str, int], list] = defaultdict(list)
    for d in a.devices():
        ga[(d.name, d.instance_id)].append(d)
    for d in b.devices():
        gb[(d.name, d.instance_id)].append(d)
    for key in [*ga, *(k for k in gb if k not in ga)]:
        name, inst = key
        if ignore(name, f"{name}#{inst}"):
            continue
        la, lb = ga.get(key, []), gb.get(key, [])
        for n in range(max(len(la), len(lb))):
            da = la[n] if n < len(la) else None
            db = lb[n] if n < len(lb) else None
            if da is None or db is None:
                continue  # reported with the descriptions
            sa, sb = da.state, db.state
            if sa is None or sb is None:
                if da.record.body_size != db.record.body_size or _raw(a, da) != _raw(b, db):
                    for ch in compare_values("(undecoded bytes)", _raw(a, da), _raw(b, db)):
                        rep.devices.append({"name": name, "instance_id": inst, **ch})
                continue
            for ch in compare_nodes(sa, sb):
                f = ch["field"]
                if ignore(f"{name}:{f}", f"{name}#{inst}:{f}"):
                    continue
                rep.devices.append({"name": name, "instance_id": inst, **ch})


def _raw(mig: Migration, dev: Any) -> bytes:
    rec = dev.record
    if rec.raw is not None:
        return bytes(rec.raw)
    return bytes(mig.source.read_at(rec.body_offset, rec.body_size))


def _ram(a: _Side, b: _Side, rep: DiffReport, ignore: _Ignore) -> None:
    pa, pb = a.pages, b.pages
    if pa is None or pb is None:
        if a.mig.ram_blocks or b.mig.ram_blocks:
            rep.warnings.append("RAM was not compared (an input has no RAM section)")
        return
    if pa.page_size != pb.page_size:
        rep.warnings.append("the inputs have different page sizes: RAM not compared")
        return
    ps = pa.page_size
    sa, sb = block_sizes(pa), block_sizes(pb)
    for name in [*sa, *(n for n in sb if n not in sa)]:
        if ignore(name):
            continue
        if name not in sa or name not in sb:
            only = "b" if name not in sa else "a"
            npages = sb[name] if name not in sa else sa[name]
            rep.ram.append({"block": name, "offset": 0, "length": npages * ps, "only_in": only})
            continue
        n = max(sa[name], sb[name])
        rep.pages += n
        for first, count in differing(pa, name, 0, pb, name, 0, n):
            rep.ram.append({"block": name, "offset": first * ps, "length": count * ps})
            rep.pages_differing += count
        if sa[name] != sb[name]:
            rep.warnings.append(
                f"RAM block {name} is {sa[name] * ps:#x} bytes in a and {sb[name] * ps:#x} in b"
            )
    for pages, label in ((pa, "a"), (pb, "b")):
        absent = {n: k for n, k in pages.absent.items() if k}
        if absent:
            rep.warnings.append(
                f"{label}: pages no record gave (read as zeros): "
                + ", ".join(f"{n} {k}" for n, k in absent.items())
                + " (a migration's extra connections carry such pages: give that side's"
                " multifd and postcopy-preempt channels)"
            )
    rep.memory = _guest_physical(a, b, ps, rep, ignore)
    if a.mig.machine != b.mig.machine:
        rep.warnings.append("the inputs are of different machine types")


def _guest_physical(
    a: _Side, b: _Side, ps: int, rep: DiffReport, ignore: _Ignore
) -> list[dict[str, Any]]:
    """Guest-physical ranges whose contents differ, each input seen through its own layout.

    The same address can be backed by another block on each side (the BIOS
    area once firmware shadowed it: PAM), so addresses compare page against
    page, wherever each side's bytes come from.
    """
    from ..views.memmap import layout

    assert a.pages is not None and b.pages is not None
    try:
        la = layout(a.mig, read=a.pages.read).ranges
        lb = layout(b.mig, read=b.pages.read).ranges
    except QevmError as e:
        rep.warnings.append(f"guest-physical ranges not given: {e}")
        return []
    spans: list[tuple[int, int]] = []
    for gpa, n, ra, rb in _overlaps(la, lb):
        if ra is None or rb is None:
            only = ra or rb
            if only is not None and not ignore(only.block):
                spans.append((gpa, n))
                rep.warnings.append(
                    f"{gpa:#x}+{n:#x} is memory only in {'a' if ra else 'b'} ({only.block})"
                )
            continue
        if ignore(ra.block) or ignore(rb.block):
            continue
        offa, offb = ra.offset + gpa - ra.gpa, rb.offset + gpa - rb.gpa
        npages = -(-n // ps)
        for first, count in differing(
            a.pages, ra.block, offa // ps, b.pages, rb.block, offb // ps, npages
        ):
            spans.append((gpa + first * ps, min(count * ps, n - first * ps)))
    spans.sort()
    merged: list[list[int]] = []
    for g, n in spans:
        if merged and merged[-1][0] + merged[-1][1] == g:
            merged[-1][1] += n
        else:
            merged.append([g, n])
    return [{"gpa": g, "length": n} for g, n in merged]


def _overlaps(la: list, lb: list) -> list[tuple[int, int, Any, Any]]:
    """``(gpa, size, range of a or None, range of b or None)`` over both layouts."""
    points = sorted({p for r in (*la, *lb) for p in (r.gpa, r.gpa + r.size)})
    out = []
    for lo, hi in zip(points, points[1:]):
        ra = next((r for r in la if r.gpa <= lo and hi <= r.gpa + r.size), None)
        rb = next((r for r in lb if r.gpa <= lo and hi <= r.gpa + r.size), None)
        if ra is not None or rb is not None:
            out.append((lo, hi - lo, ra, rb))
    return out


def _cpus(a: Migration, b: Migration, rep: DiffReport, ignore: _Ignore) -> None:
    from ..views.cpu import cpus

    try:
        ca = {c.index: c for c in cpus(a)}
        cb = {c.index: c for c in cpus(b)}
    except QevmError as e:
        rep.warnings.append(f"CPU registers not compared: {e}")
        return
    for idx in sorted(set(ca) | set(cb)):
        if idx not in ca or idx not in cb:
            rep.cpus.append({"index": idx, "register": None, "a": idx in ca, "b": idx in cb})
            continue
        ra = dict(ca[idx].flat())
        rb = dict(cb[idx].flat())
        for reg in [*ra, *(r for r in rb if r not in ra)]:
            va, vb = ra.get(reg), rb.get(reg)
            if va == vb or ignore(f"cpu:{reg}", f"cpu#{idx}:{reg}"):
                continue
            if isinstance(va, (bytes, bytearray)):
                va = bytes(va).hex()
            if isinstance(vb, (bytes, bytearray)):
                vb = bytes(vb).hex()
            rep.cpus.append({"index": idx, "register": reg, "a": va, "b": vb})
