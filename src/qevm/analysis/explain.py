"""Where a section went wrong: a description that does not fit its bytes.

A device section is delimited by its footer; decoding it with its
description must end exactly there.  When it does not (bytes left over, or
the decode runs past the footer or stops on a byte that cannot be there),
:func:`explain_section` shows the fields as they were read (offsets,
sizes, values), where the decode ran off, and searches for what would make
it end exactly at the footer: another array length, another field size,
bytes the description does not account for after some VMSD's fields, a
subsection it does not list.  Every suggestion is tried — the section is
read again with it — and only those that fit are offered, earliest first:
the first field that went out of step.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..format import SECTION_FULL
from .loader import Loader
from .steps import Step, Stop

if TYPE_CHECKING:
    from ..migration import Migration
    from ..vmstate.desc import DeviceDesc

#: Field types whose size is data (a length read before), not fixed by QEMU's code.
_RESIZABLE = frozenset({"buffer", "unused_buffer", "bitmap", "virtio", "data"})
#: Most lengths tried per array, and arrays tried, when the decode stopped short.
MAX_SWEEP = 64
SWEPT_ARRAYS = 6
#: Most what-ifs tried per section.
MAX_TRIES = 120
#: Fixes searched for at most (each alone makes the section fit).
MAX_FIXES = 8
#: Fixes printed as text.
MAX_FIXES_SHOWN = 6
#: Most steps shown before the place the decode ran off.
CONTEXT_STEPS = 12


@dataclass
class Fix:
    """A change that makes the description end exactly at the footer."""

    kind: str  # "array-length", "size", "gap", "subsection"
    path: str
    offset: int
    message: str
    #: The new length, size or gap.
    value: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Explanation:
    """One section against its description."""

    section: str
    instance_id: int
    body_offset: int
    footer_offset: int
    fits: bool
    #: Where the decode ended (or stopped).
    read_end: int
    stop: str | None = None
    steps: list[Step] = field(default_factory=list)
    fixes: list[Fix] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "section": self.section,
            "instance_id": self.instance_id,
            "offset": self.body_offset,
            "footer": self.footer_offset,
            "fits": self.fits,
        }
        if not self.fits:
            out["read_end"] = self.read_end
            out["stop"] = self.stop
            out["fields"] = [
                {
                    "path": s.path,
                    "offset": s.offset,
                    "size": s.size,
                    "count": s.count,
                    "type": s.type,
                    "value": s.value.hex() if isinstance(s.value, bytes) else s.value,
                }
                for s in self.steps
            ]
            out["fixes"] = [f.to_json() for f in self.fixes]
        return out

    def format(self) -> list[str]:
        size = self.footer_offset - self.body_offset
        head = f"{self.section}" + (f" #{self.instance_id}" if self.instance_id else "")
        if self.fits:
            return [f"{head}: fits its description ({size} bytes)"]
        where = f"{size} bytes at {self.body_offset:#x}, footer at {self.footer_offset:#x}"
        lines = [f"{head}: {where}"]
        if self.stop:
            lines.append(f"  the decode stopped at {self.read_end:#x}: {self.stop}")
        else:
            d = self.footer_offset - self.read_end
            how = f"{d} bytes before" if d > 0 else f"{-d} bytes past"
            lines.append(f"  the description ends at {self.read_end:#x}, {how} the footer")
        lines.append("  fields as read:")
        shown = self.steps
        cut = _context_start(shown, self.fixes)
        if cut:
            lines.append(f"    ... {cut} fields before")
        for s in shown[cut:]:
            mark = "  <-- out of step" if self.fixes and s.path == self.fixes[0].path else ""
            val = _value(s)
            size = f"{s.size:6}" if s.done else "     ?"
            lines.append(
                f"    {s.offset:#010x} {size} {'  ' * s.depth}{s.path.rsplit('/', 1)[-1]}"
                f"{f'[{s.count}]' if s.count != 1 else ''}  {s.type}{val}{mark}"
            )
        if self.fixes:
            lines.append("  what makes it end exactly at the footer (likeliest first):")
            for f in self.fixes[:MAX_FIXES_SHOWN]:
                lines.append(f"    - {f.message}")
            if len(self.fixes) > MAX_FIXES_SHOWN:
                lines.append(f"    ... {len(self.fixes) - MAX_FIXES_SHOWN} more (--json)")
            if len(self.fixes) > 1:
                lines.append("    (each alone fits: the bytes cannot tell which is right)")
        else:
            lines.append("  no single change of a length, a size or a gap makes it fit")
        return lines


def _value(s: Step) -> str:
    if isinstance(s.value, int) and s.kind != "subsection":
        return f" = {s.value:#x}"
    if s.kind == "subsection":
        return f" version {s.value}"
    if isinstance(s.value, bytes):
        return f" = {s.value[:16].hex()}{'...' if s.size > 16 else ''}"
    return ""


def _context_start(steps: list[Step], fixes: list[Fix]) -> int:
    if len(steps) <= 3 * CONTEXT_STEPS:
        return 0
    anchor = len(steps) - 1
    if fixes:
        for i, s in enumerate(steps):
            if s.path == fixes[0].path:
                anchor = i
                break
    return max(0, anchor - CONTEXT_STEPS)


def explain(mig: Migration, pattern: str | None = None) -> list[Explanation]:
    """Every device section with a description (matching ``pattern``), against it.

    ``mig`` should be opened with ``strict=False`` (and ``decode_devices=False``)
    so that sections that do not fit do not stop the reading.
    """
    from .check import section_data

    desc = mig.description
    out = []
    if desc is None:
        return out
    for rec in mig.section_records():
        e = rec.entry
        if rec.type != SECTION_FULL or e is None or (e.handler and not e.handler.described):
            continue
        if pattern and not fnmatch.fnmatchcase(e.idstr, pattern):
            continue
        d = desc.device(e.idstr, e.instance_id)
        if d is None or not rec.footer:
            continue
        data = section_data(mig, rec)
        if data is None:
            continue
        out.append(explain_section(data, rec.body_offset, rec.body_end, d, e.idstr, e.instance_id))
    return out


def _read(
    data: bytes, base: int, end: int, desc: DeviceDesc, **what_if: Any
) -> tuple[Loader, Stop | None]:
    loader = Loader(data, base, end, strict=True, **what_if)
    try:
        loader.section_body(desc, None, peer=desc)
    except Stop as s:
        return loader, s
    return loader, None


def explain_section(
    data: bytes, base: int, end: int, desc: DeviceDesc, section: str = "", instance_id: int = 0
) -> Explanation:
    """The section's bytes ``data`` (body + footer, from ``base``; footer at ``end``)."""
    loader, stop = _read(data, base, end, desc)
    read_end = stop.offset if stop is not None else loader.r.offset
    fits = stop is None and read_end == end
    ex = Explanation(section, instance_id, base, end, fits, read_end)
    if fits:
        return ex
    ex.stop = stop.message if stop is not None else None
    ex.steps = loader.steps
    ex.fixes = _search(data, base, end, desc, loader, stop)
    return ex


def _search(
    data: bytes, base: int, end: int, desc: DeviceDesc, first: Loader, stop: Stop | None
) -> list[Fix]:
    """What-ifs, each verified by reading the section again."""
    fixes: list[Fix] = []
    if stop is not None and stop.kind == "undescribed":
        fixes.append(
            Fix(
                "subsection",
                stop.path,
                stop.offset,
                f"a subsection {stop.path.rsplit('/', 1)[-1]!r} at {stop.offset:#x} that the "
                "description does not list (the source's QEMU sent one this description's "
                "QEMU did not)",
            )
        )
        return fixes
    deltas = _deltas(data, base, end, first, stop)
    tries = 0
    seen: set[tuple] = set()
    whatifs = [c for delta in deltas for c in _candidates(first, delta)]
    # Nearest the place the decode ran off first: that is where a mismatch shows;
    # when it stopped short, the lengths of the last arrays before it first of all.
    whatifs.sort(key=lambda c: -c[2].offset)
    if stop is not None:
        whatifs[:0] = list(_count_sweep(first, stop))
    for what, kw, fix in whatifs:
        key = (what, fix.path, fix.value)
        if key in seen:
            continue
        seen.add(key)
        tries += 1
        if tries > MAX_TRIES:
            break
        loader, s = _read(data, base, end, desc, **kw)
        if s is None and loader.r.offset == end:
            fixes.append(fix)
            if len(fixes) >= MAX_FIXES:
                break
    fixes.sort(key=lambda f: (_RANK[f.kind], f.offset))
    return fixes


#: Which kind of fix is likelier: an array length the configuration sets, a
#: field the description does not list, then a buffer of another size.
_RANK = {"subsection": 0, "array-length": 1, "gap": 2, "size": 3}


def _deltas(data: bytes, base: int, end: int, first: Loader, stop: Stop | None) -> list[int]:
    """How many bytes the description is off by: at the footer, and at each
    described subsection header found where the reading did not expect it."""
    out: list[int] = []
    if stop is None:
        out.append(end - first.r.offset)
    names = {sub.vmsd_name for _, d, _ in first.field_ends for sub in d.subsections}
    for path, _d, off in first.field_ends:
        expect = [off]
        if stop is not None and stop.path == path:
            expect.append(stop.offset)
        for name in names:
            raw = (name or "").encode("latin-1")
            head = bytes([0x05, len(raw)]) + raw
            at = data.find(head, max(0, off - base - 4096), end - base)
            while at >= 0:
                out.extend(base + at - e for e in expect)
                at = data.find(head, at + 1, end - base)
    return [d for i, d in enumerate(out) if d and d not in out[:i]]


def _count_sweep(first: Loader, stop: Stop):
    """Other lengths of the last arrays read before the decode stopped.

    Past the footer (``overrun``) the description read too much: shorter
    arrays; on a byte that cannot be there, either way.
    """
    arrays = [
        s
        for s in first.steps
        if s.field is not None and s.kind == "field" and (s.field.count > 1 or s.count > 1)
    ]
    for s in reversed(arrays[-SWEPT_ARRAYS:]):
        f = s.field
        assert f is not None
        top = f.count if stop.kind == "overrun" else min(2 * f.count + 8, MAX_SWEEP)
        for n in range(0, top):
            if n == f.count:
                continue
            g = dataclasses.replace(f, count=n, ftype=None)
            yield (
                "array-length",
                {"overrides": {id(f): g}},
                Fix(
                    "array-length",
                    s.path,
                    s.offset,
                    f"{s.path} at {s.offset:#x}: {n} elements instead of {f.count}",
                    n,
                ),
            )


def _candidates(first: Loader, delta: int):
    """(kind, what-if, Fix) for one difference of ``delta`` bytes."""
    for s in first.steps:
        f = s.field
        if f is None or s.kind != "field" or s.offset > first.r.offset:
            continue
        if f.count > 1 or s.count > 1:
            elem = f.size if f.type != "struct" else (s.size // s.count if s.count else f.size)
            if elem and delta % elem == 0 and f.count + delta // elem >= 0:
                n = f.count + delta // elem
                g = dataclasses.replace(f, count=n, ftype=None)
                yield (
                    "array-length",
                    {"overrides": {id(f): g}},
                    Fix(
                        "array-length",
                        s.path,
                        s.offset,
                        f"{s.path} at {s.offset:#x}: {n} elements instead of {f.count} "
                        f"({elem} bytes each)",
                        n,
                    ),
                )
        elif f.type in _RESIZABLE and f.size + delta >= 0:
            g = dataclasses.replace(f, size=f.size + delta, ftype=None)
            yield (
                "size",
                {"overrides": {id(f): g}},
                Fix(
                    "size",
                    s.path,
                    s.offset,
                    f"{s.path} at {s.offset:#x}: {f.size + delta} bytes instead of {f.size}",
                    f.size + delta,
                ),
            )
    if delta > 0:
        for path, d, off in first.field_ends:
            if off > first.r.offset or path.endswith("]"):
                continue  # (array elements share one layout)
            where = path or "the section"
            yield (
                "gap",
                {"extra": {path: delta}},
                Fix(
                    "gap",
                    path,
                    off,
                    f"{delta} more bytes at {off:#x}, after the last field of {where} "
                    f"({d.vmsd_name}): a field or array the description does not list "
                    f"(last: {d.fields[-1].name if d.fields else 'none'})",
                    delta,
                ),
            )
