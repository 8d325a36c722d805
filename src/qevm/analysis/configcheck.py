"""The configuration section's checks (migration/savevm.c).

The destination expects the section first exactly when its machine type sends
one (``send-configuration``); ``configuration_post_load`` then compares the
UUID (with validate-uuid), the machine type (as many bytes as were
received), the target page bits and the capabilities it validates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..stream import ConfigurationRecord
from .problems import Problem, Report

if TYPE_CHECKING:
    from ..migration import Migration
    from .target import Destination

#: Capabilities the destination validates against the source's (migration/options.c).
VALIDATED_CAPABILITIES = ("x-ignore-shared", "mapped-ram")


def check_presence(mig: Migration, dest: Destination, report: Report) -> None:
    """A configuration section where the destination expects one (its machine type's
    send-configuration), and none where it does not."""
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


def check_configuration(rec: ConfigurationRecord, dest: Destination, report: Report) -> None:
    """``configuration_post_load``'s checks: the UUID (validate-uuid), the machine type, the
    target page bits, the validated capabilities."""
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
