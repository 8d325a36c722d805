"""Memory images of a stream read once (a pipe, a decompressor): RAM blocks staged as they pass.

The guest-physical layout depends on device state that comes after RAM, so
a stream that cannot be read twice keeps each RAM block in an area of its
own in one file while it is read (:class:`StagedBlocks`: pages are written
where they belong as they pass; a page sent again overwrites), and the image
is made when the stream has been read.  The caller opens the stream with
the staging's page consumer, which says that this is a one-pass read::

    with StreamedImage("vm.elf", "elf") as image:
        with qevm.open("-", ram_consumer=image.consumer) as mig:
            result = image.finish(mig)

An ELF's blocks are staged in the ELF itself (its headers are written at
the end into a reserved first MiB); a raw or kdump image's in
``PATH.qevm-stage`` beside it, removed when done.  :meth:`StagedBlocks.temporary`
stages in an unlinked temporary file (``qevm memmap`` of a pipe).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..fileio import copy_file_sparse
from ..ramio import Piece, Placement
from ..ramsink import StreamingSink
from ..views.memmap import layout
from .elf import align, elf_headers, header_size
from .formats import KDUMP_FORMATS
from .memory import ImageResult, check_format, image_target, write_kdump_image
from .scan import Scanner, file_scanner

if TYPE_CHECKING:
    from ..migration import Migration
    from ..sections.ram.blocks import RamBlock

#: Header room reserved at the start of an ELF written from a pipe.
STREAM_HEADER_ROOM = 1 << 20


class StagedBlocks:
    """RAM blocks kept in areas of one file (``fd``, from offset ``start``) while a
    stream is read once: give :meth:`consumer` to :func:`qevm.open` as its
    ``ram_consumer``, then call :meth:`finish` before reading the blocks."""

    def __init__(self, fd: int, start: int = 0) -> None:
        self.fd = fd
        #: block name -> offset of its area in the file
        self.areas: dict[str, int] = {}
        #: the end of the last area
        self.cursor = start
        self._sinks: list[StreamingSink] = []

    @classmethod
    @contextlib.contextmanager
    def temporary(cls) -> Iterator[StagedBlocks]:
        """Staging in an unlinked temporary file, gone when the block ends."""
        with tempfile.TemporaryFile(prefix="qevm-blocks-") as tmp:
            staged = cls(tmp.fileno())
            try:
                yield staged
            finally:
                staged.abort()

    def place(self, block: RamBlock) -> Placement:
        """Where ``block``'s bytes go (its area, made on first use)."""
        if block.name not in self.areas:
            self.areas[block.name] = self.cursor
            self.cursor = align(self.cursor + block.used_length)
            os.ftruncate(self.fd, self.cursor)
        return Placement([Piece(0, block.used_length, self.fd, self.areas[block.name])])

    def consumer(self, ctx: Any, page_size: int) -> StreamingSink:
        """The page consumer for :func:`qevm.open` (``ram_consumer=staged.consumer``)."""
        self._sinks.append(StreamingSink(page_size, self.place))
        return self._sinks[-1]

    def finish(self, mig: Migration) -> None:
        """After the stream was read: the pages are in the file, every block has an area
        (one no page record reached, all on extra channels, reads as zeros)."""
        for sink in self._sinks:
            sink.drain()
        for block in mig.ram_blocks:
            self.place(block)

    def abort(self) -> None:
        """Stop writing pages (after an error; nothing left to do after :meth:`finish`)."""
        for sink in self._sinks:
            sink.abort()

    def read(self, block: str, offset: int, length: int) -> bytes:
        """Bytes of a staged block."""
        return os.pread(self.fd, length, self.areas[block] + offset)

    def scanner(self, mig: Migration) -> Scanner:
        """A search of the staged blocks (:mod:`.scan`)."""
        sizes = {b.name: b.used_length for b in mig.ram_blocks}
        return file_scanner(self.fd, self.areas, sizes)


class StreamedImage:
    """A memory image (``elf``, ``raw``, a kdump format) of a stream read once.

    Use it as a context manager; open the stream with :meth:`consumer` as its
    ``ram_consumer`` and call :meth:`finish` with the open stream.
    """

    def __init__(self, path: str | os.PathLike[str], fmt: str = "elf") -> None:
        check_format(fmt)
        self.path = os.fspath(path)
        self.format = fmt
        # the ELF stages its blocks in its own areas, after the header room
        self._stage = self.path if fmt == "elf" else self.path + ".qevm-stage"
        fd = os.open(self._stage, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.staged = StagedBlocks(fd, STREAM_HEADER_ROOM if fmt == "elf" else 0)

    def consumer(self, ctx: Any, page_size: int) -> StreamingSink:
        """The page consumer for :func:`qevm.open` (``ram_consumer=image.consumer``)."""
        return self.staged.consumer(ctx, page_size)

    def finish(
        self, mig: Migration, *, overrides: Any = None, vmcoreinfo: bool = True
    ) -> ImageResult:
        """Write the image of ``mig`` (just read with :meth:`consumer`)."""
        staged, fmt = self.staged, self.format
        staged.finish(mig)
        mm = layout(mig, overrides, read=staged.read)
        covered = sum(r.size for r in mm.ranges)
        if fmt == "raw":
            out = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(out, max((r.end for r in mm.ranges), default=0))
                for r in mm.ranges:
                    area = staged.areas[r.block] + r.offset
                    copy_file_sparse(staged.fd, area, r.size, out, r.gpa)
            finally:
                os.close(out)
            return ImageResult(mm, fmt, covered, [])
        scan = staged.scanner(mig)
        target, info, warnings = image_target(mig, mm, staged.read, scan, vmcoreinfo)
        if fmt in KDUMP_FORMATS:
            kd = write_kdump_image(self.path, fmt, mig, mm, target, info, staged.read)
            return ImageResult(mm, fmt, covered, warnings, info, kd)
        hdr = header_size(len(mm.ranges), 0)
        if hdr > STREAM_HEADER_ROOM:
            raise UsageError(f"{len(mm.ranges)} ranges do not fit the ELF header room")
        room = hdr + len(target.notes) <= STREAM_HEADER_ROOM
        note_off = hdr if room else staged.cursor
        os.pwrite(staged.fd, elf_headers(target, mm.ranges, staged.areas, note_off), 0)
        os.pwrite(staged.fd, target.notes, note_off)
        return ImageResult(mm, fmt, covered, warnings, info)

    def close(self) -> None:
        """Close the staging (and remove it, unless it is the ELF itself)."""
        if self.staged.fd < 0:
            return
        self.staged.abort()
        os.close(self.staged.fd)
        self.staged.fd = -1
        if self._stage != self.path:
            os.unlink(self._stage)

    def __enter__(self) -> StreamedImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
