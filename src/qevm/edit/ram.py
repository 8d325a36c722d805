"""New contents for guest RAM, written when the stream is written back.

:class:`RamPatch` holds new contents for ranges of RAM blocks.  For a stream
of records, the *last* record of every changed page (whatever its kind) is
written as a PAGE record with the new content, and pages the stream never
sent get PAGE records before the final EOS, so a loading QEMU ends with the
new bytes and sees each page no more often than before (postcopy refuses a
page placed twice).  For mapped-ram, the page's slot gets the content and
its bitmap bit is set.  The RAM section's writer
(:class:`qevm.sections.ram.write.RamWriter`) does the writing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from ..migration import Migration
    from ..sections.ram.blocks import RamBlock


@dataclass
class RamWrite:
    """``length`` new bytes at ``offset`` of block ``block``; ``read(pos, n)``
    returns ``n`` of them from ``pos`` (relative to ``offset``)."""

    block: str
    offset: int
    length: int
    read: Callable[[int, int], bytes]


def bytes_reader(data: bytes) -> Callable[[int, int], bytes]:
    """A :attr:`RamWrite.read` over bytes in memory."""
    return lambda pos, n: data[pos : pos + n]


def file_reader(path: str | os.PathLike[str]) -> tuple[Callable[[int, int], bytes], int]:
    """A :attr:`RamWrite.read` over a file (read when written), and its size."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise UsageError(f"{os.fspath(path)}: {e.strerror}") from None
    size = os.fstat(fd).st_size

    def read(pos: int, n: int) -> bytes:
        data = os.pread(fd, n, pos)
        if len(data) != n:
            raise UsageError(f"{os.fspath(path)} changed while it was being written")
        return data

    return read, size


class RamPatch:
    """New contents for ranges of guest RAM blocks, applied when the stream is written."""

    def __init__(self, mig: Migration) -> None:
        ram = mig.ram
        if ram is None or mig.page_size is None:
            raise UsageError("the stream has no RAM section to write pages into")
        self.mig = mig
        self.page_size = mig.page_size
        self.blocks: dict[str, RamBlock] = ram.blocks
        self.writes: list[RamWrite] = []
        #: block name -> page number -> the writes touching it, in order given
        self.pages: dict[str, dict[int, list[RamWrite]]] = {}
        self._checked = False

    def _check_stream(self) -> None:
        """Refuse streams whose RAM pages are not all in this one file."""
        if self._checked:
            return
        self._checked = True
        mig = self.mig
        if mig.channels:
            raise UsageError(
                "RAM pages of this stream also travel on extra channels; convert it to a "
                "single stream first (qevm convert --channel ...) and write RAM into that"
            )
        ram = mig.ram
        assert ram is not None
        plain = [b for b in ram.blocks.values() if b.mapped is None and b.in_stream]
        # Multifd before QEMU 8.1 writes no MULTIFD_FLUSH: its main channel has
        # zero pages only, the data pages are missing from this file.
        tracked = ram.consumer is not None and ram.consumer.tracks_pages
        missing = mig.missing_pages() if tracked else {}
        only_zero = bool(missing) and not any(b.records.get("page") for b in plain)
        if plain and (ram.multifd_flushes or not any(b.records for b in plain) or only_zero):
            raise UsageError(
                "this stream was sent with multifd: its RAM pages are on the multifd "
                "channels, not in this file; convert it with its channels first "
                "(qevm convert --channel ...)"
            )

    def add(self, write: RamWrite) -> None:
        """Schedule ``write`` (checked against the block)."""
        self._check_stream()
        block = self.blocks.get(write.block)
        if block is None:
            near = ", ".join(sorted(self.blocks))
            raise UsageError(f"no RAM block {write.block!r} (the stream has: {near})")
        if write.length <= 0:
            raise UsageError(f"nothing to write into {write.block!r} at {write.offset:#x}")
        if write.offset < 0 or write.offset + write.length > block.used_length:
            raise UsageError(
                f"{write.length:#x} bytes at {write.offset:#x} do not fit in RAM block "
                f"{block.name!r} ({block.used_length:#x} bytes)"
            )
        if not block.in_stream:
            raise UsageError(
                f"RAM block {block.name!r} is not in the stream (x-ignore-shared leaves "
                "shared memory out); its contents cannot be written here"
            )
        ps = self.page_size
        pages = self.pages.setdefault(block.name, {})
        for p in range(write.offset // ps, -(-(write.offset + write.length) // ps)):
            pages.setdefault(p, []).append(write)
        self.writes.append(write)

    def page(self, name: str, page: int) -> bytes:
        """The new content of one page (the old one where the writes leave gaps)."""
        ps = self.page_size
        start = page * ps
        writes = self.pages[name][page]
        covered = any(w.offset <= start and w.offset + w.length >= start + ps for w in writes)
        if covered:
            buf = bytearray(ps)
        else:
            buf = bytearray(self.mig.page_index.read_page(name, page))
        for w in writes:
            lo = max(start, w.offset)
            hi = min(start + ps, w.offset + w.length)
            buf[lo - start : hi - start] = w.read(lo - w.offset, hi - lo)
        return bytes(buf)
