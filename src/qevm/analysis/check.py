"""Will this stream load there?  QEMU's load-time checks, in QEMU's order.

:func:`check` walks the source stream as ``qemu_loadvm_state`` does and
applies, against a :class:`~.target.Destination`, what the destination's
QEMU checks as it reads:

1. the configuration section (savevm.c): present when expected, subsection
   checks (UUID), then ``configuration_post_load``: machine type, target
   page bits, validated capabilities;
2. each section in stream order (``qemu_loadvm_section_start_full``): a
   handler for the idstr and instance, the version it loads; then
   * RAM (ram.c ``ram_load_precopy``/``parse_ramblock``): every block of
     the MEM_SIZE list known, its length equal or within a resizeable
     block's maximum, postcopy page sizes, x-ignore-shared addresses;
   * device sections: the destination's layout read over the source's bytes
     (:mod:`.loader`), ending exactly at the section footer, then the device
     checks registered per VMSD (:mod:`.hooks`).

Problems come out in that order; the first certain one is where QEMU stops.
Sections after it are still checked, as if QEMU had gone on.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import QevmError
from ..format import SECTION_FULL, SECTION_START
from ..stream import ConfigurationRecord, SectionRecord
from . import hooks
from .loader import Loader
from .localize import out_of_step
from .problems import Problem, Report
from .ramcheck import check_ram_blocks
from .schemacheck import check_against_schema
from .steps import Stop, base_name
from .target import Destination, load_destination

if TYPE_CHECKING:
    from ..migration import Migration
    from ..vmstate.desc import DeviceDesc

#: Capabilities the destination validates against the source's (migration/options.c).
VALIDATED_CAPABILITIES = ("x-ignore-shared", "mapped-ram")


def check(
    source: str | os.PathLike[str] | Migration,
    destination: str | os.PathLike[str] | Destination,
    *,
    schema: str | os.PathLike[str] | None = None,
    source_desc: str | os.PathLike[str] | None = None,
    source_format: str = "auto",
    source_snapshot: str | None = None,
    destination_snapshot: str | None = None,
) -> Report:
    """Check ``source`` against what ``destination`` expects (paths or opened objects)."""
    from .. import open as qopen

    hooks.load_plugins()
    dest = (
        destination
        if isinstance(destination, Destination)
        else load_destination(destination, snapshot=destination_snapshot)
    )
    if schema is not None:
        extra = load_destination(schema)
        if extra.schema is None:
            raise QevmError(f"{os.fspath(schema)} is not -dump-vmstate output")
        dest.add_schema(extra.schema)
    if not isinstance(source, (str, os.PathLike)):
        return check_migration(source, dest)
    from ..source import open_source

    src = open_source(source, format=source_format, snapshot=source_snapshot)
    with qopen(
        src,
        desc=source_desc,
        # the page index lets device checks read guest RAM (virtio rings) as QEMU does
        index_ram=src.seekable,
        decode_devices=False,
        strict=False,  # a section its own description does not fit is still checked
    ) as mig:
        return check_migration(mig, dest, label=os.fspath(source))


def check_migration(mig: Migration, dest: Destination, label: str | None = None) -> Report:
    """The checks, on a source opened with ``decode_devices=False`` (or decoded)."""
    report = Report(label or mig.source.name, dest.label, dest.kinds)
    report.complete = dest.blocks is not None
    for err in getattr(mig, "errors", ()):
        report.warn(f"the source itself does not read cleanly: {err}")
    for w in dest.warnings:
        report.warn(w)
    has_config = any(isinstance(r, ConfigurationRecord) for r in mig.records)
    if dest.configuration is not None and dest.configuration != has_config:
        if dest.configuration:
            report.problems.append(
                Problem(
                    "configuration",
                    "the destination expects a configuration section first; the source has none",
                    section="configuration",
                    qemu="Configuration section missing",
                    offset=8,
                )
            )
        else:
            report.problems.append(
                Problem(
                    "configuration",
                    "the source starts with a configuration section; the destination's machine "
                    "type does not expect one (send-configuration off)",
                    section="configuration",
                    qemu="Unknown savevm section type 7",
                    offset=8,
                )
            )
    if not dest.knows_sections():
        report.warn(
            "the destination is known only from "
            + " and ".join(dest.kinds or ["nothing"])
            + ": which devices and RAM blocks it has is not known, only how it lays them out"
        )
    for rec in mig.all_records():
        if isinstance(rec, ConfigurationRecord) and rec.config is not None:
            _configuration(rec, dest, report)
        elif isinstance(rec, SectionRecord) and rec.type in (SECTION_START, SECTION_FULL):
            _section(mig, rec, dest, report)
    return report


# -- configuration ------------------------------------------------------------------


def _configuration(rec: ConfigurationRecord, dest: Destination, report: Report) -> None:
    conf = rec.config
    assert conf is not None
    off = rec.offset
    if conf.uuid is not None:
        if dest.uuid is not None and dest.uuid != conf.uuid:
            src_u, dst_u = _uuid(conf.uuid), _uuid(dest.uuid)
            report.problems.append(
                Problem(
                    "uuid",
                    f"the source's UUID {src_u} is not the destination's {dst_u}",
                    section="configuration",
                    field="uuid",
                    source=src_u,
                    destination=dst_u,
                    offset=off,
                    qemu=f"UUID received is {src_u} and local is {dst_u}",
                )
            )
        elif dest.uuid is None:
            report.warn(
                "the source sends its UUID (validate-uuid): the destination refuses it unless "
                "its -uuid is the same (or unset)"
            )
    if dest.machine is not None:
        # configuration_post_load compares only as many bytes as were received.
        if not dest.machine.startswith(conf.machine):
            report.problems.append(
                Problem(
                    "machine",
                    f"machine type {conf.machine} cannot load into {dest.machine}",
                    section="configuration",
                    field="machine",
                    source=conf.machine,
                    destination=dest.machine,
                    offset=off,
                    qemu=f"Machine type received is '{conf.machine}' and local is '{dest.machine}'",
                )
            )
    _page_bits(conf, dest, report, off)
    _capabilities(conf, dest, report, off)


def _page_bits(conf: Any, dest: Destination, report: Report, off: int) -> None:
    if dest.page_size is None:
        return
    local = dest.page_size.bit_length() - 1
    if conf.target_page_bits is not None:
        if conf.target_page_bits == local:
            return
        received: int | str = conf.target_page_bits
    elif dest.page_bits_sent:
        # Without the subsection the source was at the target's minimum page
        # size; the destination sends it only when its size is above that.
        received = "the target's minimum"
    else:
        return
    report.problems.append(
        Problem(
            "page-size",
            f"target page bits {received} (source) against {local} (destination)",
            section="configuration",
            field="target-page-bits",
            source=received,
            destination=local,
            offset=off,
            qemu=f"Received TARGET_PAGE_BITS is {received} but local is {local}",
        )
    )


def _capabilities(conf: Any, dest: Destination, report: Report, off: int) -> None:
    src = set(conf.capabilities)
    if dest.capabilities is None:
        if src:
            report.warn(
                f"the source has capabilities {', '.join(sorted(src))} on; the destination "
                "must have the same on (not known from a description or schema)"
            )
        return
    for cap in VALIDATED_CAPABILITIES:
        s, d = cap in src, cap in dest.capabilities
        if s == d:
            continue
        report.problems.append(
            Problem(
                "capability",
                f"capability {cap} is {'on' if s else 'off'} at the source and "
                f"{'on' if d else 'off'} at the destination",
                section="configuration",
                field=cap,
                source=s,
                destination=d,
                offset=off,
                qemu=f"Capability {cap} is {'on' if d else 'off'}, but received capability is "
                f"{'on' if s else 'off'}",
            )
        )
    unknown = src - set(VALIDATED_CAPABILITIES)
    if unknown:
        report.warn(f"the source validates capabilities qevm does not know: {sorted(unknown)}")


def _uuid(b: bytes) -> str:
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# -- sections ---------------------------------------------------------------------------


def _section(mig: Migration, rec: SectionRecord, dest: Destination, report: Report) -> None:
    e = rec.entry
    assert e is not None
    version = rec.version if rec.version is not None else e.version
    ds = dest.section(e.idstr, e.instance_id)
    src_desc = mig.description.device(e.idstr, e.instance_id) if mig.description else None
    # A description lists only what was described: live and old-style sections
    # are judged only against a stream the destination wrote.
    judged = dest.blocks is not None or (e.handler is None and src_desc is not None)
    if dest.knows_sections() and ds is None and judged:
        report.problems.append(
            Problem(
                "section",
                f"the destination has no section {e.idstr!r} instance {e.instance_id}",
                section=e.idstr,
                instance_id=e.instance_id,
                offset=rec.offset,
                qemu=f"Unknown section or instance '{e.idstr}' {e.instance_id}. Make sure that "
                "your current VM setup matches your saved VM setup, including any hotplugged "
                "devices",
            )
        )
        return
    dest_desc = ds.desc if ds is not None else None
    if dest_desc is None and dest.description is not None:
        dest_desc = dest.description.device(e.idstr, e.instance_id)
    vmsd_name = (src_desc or dest_desc).vmsd_name if (src_desc or dest_desc) else None
    if vmsd_name is None and e.handler is None:
        vmsd_name = e.idstr.rsplit("/", 1)[-1]
    sch = dest.vmsd_schema(vmsd_name)
    if sch is not None and not _same_vmsd(sch, dest_desc or src_desc, e.idstr):
        # A schema lists device classes only; a non-device section can share a
        # VMSD name with one (the CPU timers' "timer" and an Arm timer device).
        report.warn(f"{e.idstr}: the schema's VMSD {sch.name!r} has other fields: not used")
        sch = None
    dest_version = _dest_version(ds, dest_desc, sch)
    if dest_version is not None and version > dest_version:
        report.problems.append(
            Problem(
                "version",
                f"the source wrote version {version}, the destination loads up to {dest_version}",
                section=e.idstr,
                instance_id=e.instance_id,
                source=version,
                destination=dest_version,
                offset=rec.offset,
                qemu=f"savevm: unsupported version {version} for '{e.idstr}' v{dest_version}",
            )
        )
        return
    if dest_version is not None and version < dest_version and sch is None:
        report.warn(
            f"{e.idstr}: the source wrote version {version}, the destination's is "
            f"{dest_version}: it loads only if its minimum_version_id is at most {version} "
            "(not in a stream; --schema with its -dump-vmstate says)"
        )
    if e.handler is not None and e.idstr == "ram":
        check_ram_blocks(mig, rec, dest, report)
        return
    if e.handler is not None and not (e.handler.described and dest_desc is not None):
        return
    if dest_desc is None:
        if sch is not None and src_desc is not None:
            report.problems.extend(
                check_against_schema(
                    e.idstr, e.instance_id, src_desc, version, sch, rec.body_offset
                )
            )
        elif dest.knows_sections() or dest.description is not None:
            report.warn(f"{e.idstr}: the destination's layout of this section is not known")
        return
    _device(mig, rec, dest, ds, src_desc, dest_desc, sch, version, dest_version, report)


def _same_vmsd(sch: Any, desc: DeviceDesc | None, idstr: str) -> bool:
    """Whether a schema VMSD is the one a description describes (most field names shared).

    Without a description only a section of a device with a qdev path
    (``0000:00:02.0/e1000``) is surely the device class's VMSD.
    """
    if desc is None:
        return "/" in idstr
    if not desc.fields:
        return True
    names = {f.name for f in sch.fields}
    have = [base_name(f.name) for f in desc.fields]
    return sum(n in names for n in have) * 2 >= len(have)


def _dest_version(ds: Any, dest_desc: DeviceDesc | None, sch: Any) -> int | None:
    if sch is not None:
        return sch.version
    if ds is not None and ds.version is not None:
        return ds.version
    return dest_desc.version if dest_desc is not None else None


def section_data(mig: Migration, rec: SectionRecord) -> bytes | None:
    """The section's body and footer bytes, as the source wrote them (None: gone by)."""
    if rec.raw is None and not mig.source.seekable:
        return None  # a section that did not read from a pipe is not kept
    if rec.raw is not None:
        tail = b""
        if rec.footer:
            tail = b"\x7e" + rec.entry.section_id.to_bytes(4, "big")  # type: ignore[union-attr]
        return bytes(rec.raw) + tail
    return bytes(mig.source.read_at(rec.body_offset, rec.end - rec.body_offset))


def _device(
    mig: Migration,
    rec: SectionRecord,
    dest: Destination,
    ds: Any,
    src_desc: DeviceDesc | None,
    dest_desc: DeviceDesc,
    sch: Any,
    version: int,
    dest_version: int | None,
    report: Report,
) -> None:
    e = rec.entry
    assert e is not None
    data = section_data(mig, rec)
    if data is None:
        report.warn(f"{e.idstr}: its bytes were not kept (read from a pipe): not checked")
        return
    context = {"destination": dest, "source": mig}
    loader = Loader(
        data,
        rec.body_offset,
        rec.body_end,
        section=e.idstr,
        instance_id=e.instance_id,
        context=context,
    )
    stop: Stop | None = None
    loaded = None
    try:
        loaded = loader.section_body(
            dest_desc,
            version,
            peer=src_desc,
            values=ds.state if ds is not None else None,
            schema=sch,
            dest_version=dest_version,
        )
    except Stop as s:
        stop = s
    end = loader.r.offset
    found: list[Problem] = []
    for d in loader.doubts:
        found.extend(_doubt_problems(e.idstr, e.instance_id, d))
    own = _own_reading(data, rec, src_desc, context)
    if stop is None and end != rec.body_end:
        found.append(_layout_problem(e.idstr, e.instance_id, rec, loader, own, end, None))
    elif stop is not None:
        step = out_of_step(own, loader.steps, stop.offset, True) if own is not None else None
        if stop.kind == "overrun" or step is not None:
            found.append(_layout_problem(e.idstr, e.instance_id, rec, loader, own, end, stop))
        else:
            found.append(
                Problem(
                    "subsection" if stop.kind == "undescribed" else stop.kind,
                    stop.message,
                    section=e.idstr,
                    instance_id=e.instance_id,
                    field=stop.path or None,
                    source=stop.details.get("source"),
                    destination=stop.details.get("destination"),
                    offset=stop.offset,
                    qemu=stop.message if stop.kind != "undescribed" else None,
                )
            )
    for note in loader.notes:
        report.warn(f"{e.idstr}: {note}")
    if stop is None:
        ctx = hooks.SectionContext(
            e.idstr,
            e.instance_id,
            dest_desc.vmsd_name,
            loaded,
            own.node if own is not None else None,
            ds.state if ds is not None else None,
            dest_desc,
            dest,
            mig,
            rec.body_offset,
            rec.body_end,
        )
        for fn in hooks.device_checks(dest_desc.vmsd_name):
            found.extend(fn(ctx))
    found.sort(key=lambda p: (p.offset if p.offset is not None else rec.body_end, not p.certain))
    report.problems.extend(found)


class _Reading:
    """The source's own description read over its bytes (for comparison)."""

    def __init__(self, steps: list, node: Any) -> None:
        self.steps = steps
        self.node = node


def _own_reading(
    data: bytes, rec: SectionRecord, src_desc: DeviceDesc | None, context: dict
) -> _Reading | None:
    if src_desc is None:
        return None
    e = rec.entry
    assert e is not None
    own = Loader(data, rec.body_offset, rec.body_end, section=e.idstr, context=context)
    try:
        node = own.section_body(src_desc, None, peer=src_desc)
    except Stop:
        return _Reading(own.steps, None)
    return _Reading(own.steps, node)


def _doubt_problems(idstr: str, instance_id: int, d: Any) -> list[Problem]:
    out = []
    for p in d.problems:
        if p.section is None:
            p.section = idstr
        out.append(p)
    if d.kind == "device":
        return out
    return [
        Problem(
            "unexplained" if d.kind == "unexplained" else "subsection",
            d.message,
            section=idstr,
            instance_id=instance_id,
            field=d.path,
            source=d.source,
            destination=d.destination,
            offset=d.offset,
            certain=False,
        ),
        *out,
    ]


def _layout_problem(
    idstr: str,
    instance_id: int,
    rec: SectionRecord,
    loader: Loader,
    own: _Reading | None,
    end: int,
    stop: Stop | None,
) -> Problem:
    from .localize import describe_out_of_step

    written = rec.body_end - rec.body_offset
    if stop is not None and stop.kind == "overrun":
        how = f"reads past the end of the {written} bytes the source wrote"
    elif stop is not None:
        how = f"goes out of step and then fails: {stop.message}"
    else:
        read = end - rec.body_offset
        more = "more" if read > written else "fewer"
        how = (
            f"reads {abs(read - written)} bytes {more} than the source wrote ({read} of {written})"
        )
    p = Problem(
        "layout",
        f"the destination's layout {how}",
        section=idstr,
        instance_id=instance_id,
        offset=rec.body_offset,
        qemu=f"Missing section footer for {idstr}",
    )
    if own is not None:
        limit = stop.offset if stop else end
        where = describe_out_of_step(own.steps, loader.steps, limit, stop is not None)
        if where is not None:
            p.field = where.path
            p.source = where.source
            p.destination = where.destination
            p.offset = where.offset
            p.details.append(where.message)
            p.details.extend(where.hints)
    return p
