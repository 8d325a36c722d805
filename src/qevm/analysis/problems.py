"""What ``check`` finds: problems in QEMU's load order, and the verdict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: Kinds of problems, roughly in the order QEMU meets them.
KINDS = (
    "configuration",  # missing/unexpected configuration section
    "machine",  # machine type name
    "page-size",  # target page bits
    "capability",  # validated capabilities
    "uuid",
    "ram-block",  # unknown RAM block
    "ram-size",  # used length (resizeable blocks within their maximum)
    "ram-page-size",  # postcopy host page size of a block
    "section",  # unknown section or instance
    "version",  # a section or subsection version the destination does not load
    "subsection",  # a subsection the destination does not know
    "value",  # a *_EQUAL / POSITIVE_LE field the destination compares
    "layout",  # the destination reads a different number of bytes: section footer
    "device",  # a device's own load-time check (registered per VMSD)
    "unexplained",  # the destination reads a field qevm cannot follow (opaque)
)


@dataclass
class Problem:
    """One reason the destination would refuse the source, or might.

    ``certain`` is False for what qevm cannot decide (an opaque field whose
    size differs, a subsection the destination did not send and no schema
    says it knows): QEMU may or may not stop there.
    """

    kind: str
    message: str
    #: Section idstr (``0000:00:1f.0/ICH9LPC``), RAM block, or ``configuration``.
    section: str | None = None
    instance_id: int | None = None
    #: Field path inside the section (``pm/ich9_pm/memhp/acpi_memory_hotplug/devs``).
    field: str | None = None
    source: Any = None
    destination: Any = None
    #: Where in the source stream QEMU would notice.
    offset: int | None = None
    #: QEMU's own words for it, when it has them.
    qemu: str | None = None
    certain: bool = True
    #: More lines: the first field out of step, hints.
    details: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "section": self.section,
            "field": self.field,
            "message": self.message,
        }
        for key in ("instance_id", "offset", "qemu"):
            v = getattr(self, key)
            if v is not None:
                out[key] = v
        if self.source is not None or self.destination is not None:
            out["source"] = _plain(self.source)
            out["destination"] = _plain(self.destination)
        out["certain"] = self.certain
        if self.details:
            out["details"] = self.details
        return out


def _plain(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, (set, frozenset)):
        return sorted(v)
    return v


@dataclass
class Report:
    """The verdict: problems in load order (the first is where QEMU stops)."""

    source: str
    destination: str
    #: What the destination knowledge came from (stream, description, schema).
    destination_kinds: list[str]
    problems: list[Problem] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: False when the destination is known only partly (a description or a
    #: schema says nothing of its RAM, a schema nothing of its devices): then
    #: finding no problem does not mean it loads.
    complete: bool = True

    @property
    def loads(self) -> bool | None:
        """True: it would load; False: QEMU stops; None: qevm cannot tell."""
        if any(p.certain for p in self.problems):
            return False
        if self.problems or not self.complete:
            return None
        return True

    def first(self) -> Problem | None:
        """Where QEMU stops (the first certain problem), or the first doubt."""
        for p in self.problems:
            if p.certain:
                return p
        return self.problems[0] if self.problems else None

    def warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)

    def to_json(self) -> dict[str, Any]:
        return {
            "loads": self.loads,
            "source": self.source,
            "destination": self.destination,
            "destination_from": self.destination_kinds,
            "problems": [p.to_json() for p in self.problems],
            "warnings": self.warnings,
        }
