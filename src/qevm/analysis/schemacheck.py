"""A source section against a destination known only by its ``-dump-vmstate``.

What a schema can tell (the rest needs a stream the destination wrote):
the section version against the VMSD's version and minimum version; the
fields the destination loads at the incoming version, by name and order,
against those the source wrote; element sizes of scalars and lengths of
fixed arrays (``num``); subsections it knows and their versions.  Array
lengths taken from the configuration and wire sizes of nested structures
are not in a schema.
"""

from __future__ import annotations

from ..vmstate.desc import VmsdDesc
from ..vmstate.types import IntType, field_type
from .problems import Problem
from .schema import SchemaVmsd, schema_index


def check_against_schema(
    idstr: str,
    instance_id: int,
    src: VmsdDesc,
    version: int,
    sch: SchemaVmsd,
    offset: int,
) -> list[Problem]:
    """Problems of ``src`` (the source's description) for a destination with ``sch``."""
    out: list[Problem] = []
    _vmsd(idstr, instance_id, src, version, sch, "", out, offset)
    return out


def _problem(idstr: str, inst: int, kind: str, path: str, msg: str, off: int, **kw) -> Problem:
    return Problem(kind, msg, section=idstr, instance_id=inst, field=path or None, offset=off, **kw)


def _vmsd(
    idstr: str,
    inst: int,
    src: VmsdDesc,
    version: int | None,
    sch: SchemaVmsd,
    path: str,
    out: list[Problem],
    off: int,
) -> None:
    name = sch.name
    if version is not None:
        if version > sch.version:
            out.append(
                _problem(
                    idstr,
                    inst,
                    "version",
                    path,
                    f"{name}: incoming version_id {version} is too new for local "
                    f"version_id {sch.version}",
                    off,
                    source=version,
                    destination=sch.version,
                    qemu=f"{name}: incoming version_id {version} is too new for "
                    f"local version_id {sch.version}",
                )
            )
            return
        if version < sch.minimum_version:
            out.append(
                _problem(
                    idstr,
                    inst,
                    "version",
                    path,
                    f"{name}: incoming version_id {version} is too old for local "
                    f"minimum version_id {sch.minimum_version}",
                    off,
                    source=version,
                    destination=sch.minimum_version,
                    qemu=f"{name}: incoming version_id {version} is too old for "
                    f"local minimum version_id {sch.minimum_version}",
                )
            )
            return
    gate = version if version is not None else sch.version
    sfields = sch.fields
    pos = 0
    doubtful: list[str] = []
    i = 0
    have = src.fields
    while i < len(have):
        f = have[i]
        # QEMU describes some arrays as one entry per element (same name).
        count = f.count
        while i + 1 < len(have) and have[i + 1].name == f.name:
            i += 1
            count += have[i].count
        i += 1
        fpath = f"{path}/{f.name}" if path else f.name
        k = schema_index(sfields, f.name, pos)
        renamed = k is None
        if k is None:
            k = _renamed(sfields, pos, gate, f, count)
            if k is None:
                out.append(
                    _problem(
                        idstr,
                        inst,
                        "layout",
                        fpath,
                        f"the source wrote {f.name} ({f.size} bytes), which the "
                        "destination's schema does not have here (a renamed field "
                        "of another size, or a layout change)",
                        off,
                        certain=False,
                    )
                )
                return
        if sfields[k].version > gate:
            out.append(
                _problem(
                    idstr,
                    inst,
                    "layout",
                    fpath,
                    f"the source wrote {f.name}, which the destination loads only "
                    f"from version {sfields[k].version} (incoming {gate})",
                    off,
                    qemu=f"Missing section footer for {idstr}",
                )
            )
            return
        # Fields skipped over: absent on the source side for a test, a later
        # version, or an empty variable-length array; only the last is a doubt.
        doubtful += _maybe_missing(sfields[pos:k], gate)
        sf = sfields[k]
        pos = k + 1
        if renamed:
            continue  # the same bytes under another name (checked by _renamed)
        if sf.num is not None and count != sf.num:
            out.append(
                _problem(
                    idstr,
                    inst,
                    "layout",
                    fpath,
                    f"{f.name}: the source wrote {count} elements, the destination loads {sf.num}",
                    off,
                    source=count,
                    destination=sf.num,
                    qemu=f"Missing section footer for {idstr}",
                )
            )
            return
        if isinstance(field_type(f), IntType) and sf.vmsd is None and sf.size != f.size:
            out.append(
                _problem(
                    idstr,
                    inst,
                    "layout",
                    fpath,
                    f"{f.name}: the source wrote {f.size}-byte elements, the "
                    f"destination's are {sf.size} bytes",
                    off,
                    source=f.size,
                    destination=sf.size,
                    qemu=f"Missing section footer for {idstr}",
                )
            )
            return
        if sf.vmsd is not None and f.nested and not f.nested[0].empty:
            _vmsd(idstr, inst, f.nested[0], None, sf.vmsd, fpath, out, off)
            if out and out[-1].certain:
                return
    doubtful += _maybe_missing(sfields[pos:], gate)
    if doubtful:
        out.append(
            _problem(
                idstr,
                inst,
                "layout",
                path,
                f"{name}: the destination loads {', '.join(doubtful)}, which the "
                "source did not write (unless each is an empty variable-length "
                "array: a schema does not say)",
                off,
                certain=False,
            )
        )
    for sub in src.subsections:
        spath = f"{path}/{sub.vmsd_name}" if path else sub.vmsd_name or ""
        known = sch.subsection(sub.vmsd_name or "")
        if known is None:
            msg = f"VM subsection '{sub.vmsd_name}' in '{name}' does not exist"
            out.append(_problem(idstr, inst, "subsection", spath, msg, off, qemu=msg))
            return
        _vmsd(idstr, inst, sub, sub.version, known, spath, out, off)
        if out and out[-1].certain:
            return


def _renamed(sfields: list, pos: int, gate: int, f, count: int) -> int | None:
    """The next loadable schema field, when it can be ``f`` under another name.

    Fields get renamed (``num_timers`` -> ``num_timers_save``) or replaced by
    ``VMSTATE_UNUSED`` of the same size without a change on the wire.
    """
    for k in range(pos, len(sfields)):
        sf = sfields[k]
        if sf.version > gate or sf.tested:
            continue
        if sf.vmsd is not None:
            return k if f.nested else None
        scalar = isinstance(field_type(f), IntType) or f.type in ("unused_buffer", "buffer")
        return k if scalar and sf.size * (sf.num or 1) == f.size * count else None
    return None


def _maybe_missing(skipped: list, gate: int) -> list[str]:
    """Schema fields the source did not write that may matter.

    Left out: fields with a test (absent alike on both sides), later
    versions, and arrays of structs without a fixed length (a variable array
    sized by the configuration, empty at the source: a schema cannot say
    the destination's length, a stream it wrote can).
    """
    return [
        s.name
        for s in skipped
        if not s.tested and s.version <= gate and not (s.vmsd is not None and s.num is None)
    ]
