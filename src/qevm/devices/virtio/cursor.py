"""What reading a ``virtio`` field the way a destination loads it is made of.

A :class:`Cursor` reads the source's bytes as ``qemu_get_*`` does, bounded by
the field; a read past its end, or a value the destination's load rejects,
raises :class:`Stop` with the :class:`Refusal` (where and in QEMU's words);
a :class:`LoadReading` is what the whole load took and said.  The readers of
the transport (:mod:`.load`), of each device's own state (:mod:`.devstate`)
and of the subsections (:mod:`.subsections`) all share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .wire import FieldReader


@dataclass
class Refusal:
    """Where the destination's load fails (``certain``) or may fail."""

    offset: int
    message: str
    qemu: str | None = None
    certain: bool = True
    #: where in the field (``PCIDevice.config[0x9a]``, ``vq[0].num``)
    where: str = ""
    source: Any = None
    destination: Any = None
    details: list[str] = field(default_factory=list)
    #: the load ran past the bytes the source wrote (not a check of a value)
    overrun: bool = False


@dataclass
class LoadReading:
    """How the destination reads the field."""

    #: bytes its load takes (the source's size when it stops inside: the rest is moot)
    size: int | None
    refusals: list[Refusal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the guest features it loaded
    features: int = 0
    #: (what, position in the field) of every read
    steps: list[tuple[str, int]] = field(default_factory=list)

    @property
    def stops(self) -> bool:
        return any(r.certain for r in self.refusals)

    def fits(self, size: int) -> bool:
        """Whether this reading of a field by its own device ends where the field ends, or
        stops at a check of a value (QEMU stops there too, wherever it loads it)."""
        if any(r.overrun for r in self.refusals):
            return False
        return self.stops or (self.size == size and not self.refusals)


class Stop(Exception):
    """The load fails here (the refusal says how)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class Cursor(FieldReader):
    """The source's bytes read as the destination's load reads them: every read is recorded
    (to find where two readings part), a read past the end is a :class:`Stop`."""

    def __init__(self, data: bytes, base: int, section: str, vmsd: str) -> None:
        super().__init__(data, base, section)
        self.vmsd = vmsd
        #: (what, position) of every read, to find where two readings part
        self.steps: list[tuple[str, int]] = []

    def short(self, n: int, what: str) -> Stop:
        return Stop(
            Refusal(
                self.offset,
                f"the destination's virtio_load reads {what} past the end of the section "
                f"({self.pos + n - len(self.data)} bytes more than the source wrote)",
                f"Missing section footer for {self.section}",
                where=what,
                overrun=True,
            )
        )

    def take(self, n: int, what: str) -> bytes:
        self.steps.append((what, self.pos))
        return super().take(n, what)

    def peek(self, n: int) -> bytes:
        return self.data[self.pos : self.pos + n]

    def failed(self, msg: str, where: str, qemu: str | None = None, **kw: Any) -> Stop:
        """A load failure QEMU reports only as ``Failed to load <vmsd>:virtio`` (or ``qemu``)."""
        words = qemu or f"Failed to load {self.vmsd}:virtio"
        return Stop(Refusal(self.offset, msg, words, where=where, **kw))
