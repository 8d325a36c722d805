"""Byte sources: where the stream's bytes come from.

A :class:`Source` gives absolute offsets in its own address space.  Seekable
sources (a regular file, a qcow2 snapshot's VM state) answer ``read_at`` for
any offset; streaming sources (a pipe, a decompressor) only go forward with
``read``.  ``start`` is the offset at which the QEMU stream begins (non-zero
when a container header precedes it, e.g. a libvirt save image).
"""

from __future__ import annotations

import mmap
import os
import stat
from typing import BinaryIO

from ..errors import ContainerError, TruncatedError
from ..fileio import read_full

#: How much a streaming source asks for per read.
CHUNK = 1 << 20
#: Bytes read sequentially from a mapped file between hints that they can go.
READ_RELEASE_STEP = 8 << 20
#: Pipe buffer asked for on pipe inputs (Linux's limit for unprivileged users).
PIPE_SIZE = 1 << 20


def _enlarge_pipe(fileobj: object) -> None:
    """Ask for a larger buffer on a pipe: the writer wakes the reader far less often."""
    try:
        import fcntl

        fd = fileobj.fileno()  # type: ignore[attr-defined]
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except (AttributeError, ImportError, OSError, ValueError):
        pass  # not a pipe, not Linux, or not allowed: the default buffer works


class Source:
    """Abstract byte source."""

    name: str = "<source>"
    #: Offset where the QEMU stream begins.
    start: int = 0
    #: Total size in bytes, or None when unknown (pipes, decompressors).
    size: int | None = None
    seekable: bool = False
    #: A short description of the container chain, e.g. "libvirt save (zstd)".
    container: str = "raw stream"
    #: Containers may attach extra information (libvirt header, qcow2 snapshot).
    info: dict

    def __init__(self) -> None:
        self.info = {}
        self._pos = 0

    # -- streaming interface -------------------------------------------
    def read(self, n: int) -> bytes:
        """Read up to ``n`` bytes at the current position (short only at the end)."""
        raise NotImplementedError

    def readinto(self, view: memoryview) -> int:
        """Read into ``view`` from the current position; the number of bytes read.

        Sources fill ``view`` whole when they can, but may return fewer bytes
        (a file that is still growing returns what it holds); 0 only at the end.
        """
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    @property
    def position(self) -> int:
        """Offset of the next byte ``read`` returns."""
        return self._pos

    def skip(self, n: int) -> None:
        """Advance the position by ``n`` bytes."""
        while n > 0:
            got = self.read(min(n, CHUNK))
            if not got:
                raise TruncatedError(f"input ended while skipping {n} bytes", offset=self._pos)
            n -= len(got)

    # -- random access (seekable sources only) --------------------------
    def read_at(self, offset: int, n: int) -> bytes | memoryview:
        """Read exactly ``n`` bytes at ``offset`` (TruncatedError if past the end)."""
        raise ContainerError(f"{self.name} is not seekable", offset=offset)

    def view(self) -> memoryview | mmap.mmap | None:
        """The whole source as one buffer, when it can be mapped."""
        return None

    def fileno(self) -> int | None:
        """A file descriptor whose offsets equal this source's, when one exists."""
        return None

    def window(self, start: int, need: int) -> memoryview | None:
        """Bytes from ``start`` as a view of memory the source maps, without a copy.

        For streaming sources over a file that grows: ``start`` is at or before
        the position (bytes a reader still keeps), the view holds at least
        ``need`` bytes (fewer only at the end) and what else is there, and the
        position moves to its end.  None when the source has no such view.
        """
        return None

    def release(self, start: int, end: int) -> None:
        """Hint that bytes ``[start, end)`` are not needed in memory any more."""

    def close(self) -> None:
        """Release the source."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileSource(Source):
    """A regular file, memory-mapped."""

    seekable = True

    def __init__(self, path: str | os.PathLike[str], start: int = 0) -> None:
        super().__init__()
        self.name = os.fspath(path)
        self._file = open(path, "rb")
        self.size = os.fstat(self._file.fileno()).st_size
        self.start = start
        self._pos = start
        self._map: mmap.mmap | None = None
        if self.size:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            if hasattr(self._map, "madvise"):
                self._map.madvise(mmap.MADV_SEQUENTIAL)
        self._view = memoryview(self._map) if self._map is not None else memoryview(b"")
        self._read_released = 0

    def read(self, n: int) -> bytes:
        data = bytes(self._view[self._pos : self._pos + n])
        self._pos += len(data)
        if self._pos - self._read_released >= READ_RELEASE_STEP:
            # Read sequentially (by a decompressor, say): what lies behind is
            # copied out and need not stay in this process's memory.
            self.release(self._read_released, self._pos)
            self._read_released = self._pos - self._pos % mmap.PAGESIZE
        return data

    def skip(self, n: int) -> None:
        self._pos = min(self._pos + n, self.size or 0)

    def seek(self, offset: int) -> None:
        """Move the streaming position (containers use this to skip a header)."""
        self._pos = offset

    def read_at(self, offset: int, n: int) -> memoryview:
        assert self.size is not None
        if offset < 0 or n < 0 or offset + n > self.size:
            raise TruncatedError(
                f"need {n} bytes but the file has {max(0, self.size - offset)} left",
                offset=offset,
            )
        return self._view[offset : offset + n]

    def view(self) -> memoryview:
        return self._view

    def release(self, start: int, end: int) -> None:
        # Pages of the mapping that were read count in the process's RSS until
        # dropped; they stay in the page cache, a later read maps them again.
        if self._map is None or not hasattr(self._map, "madvise"):
            return
        page = mmap.PAGESIZE
        lo = start - start % page
        hi = min(end - end % page, len(self._map))
        if hi > lo:
            self._map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def find(self, pattern: bytes, start: int, end: int) -> int:
        """Offset of ``pattern`` in ``[start, end)``, or -1."""
        if self._map is None:
            return -1
        return self._map.find(pattern, start, end)

    def rfind(self, pattern: bytes, start: int, end: int) -> int:
        """Offset of the last ``pattern`` in ``[start, end)``, or -1."""
        if self._map is None:
            return -1
        return self._map.rfind(pattern, start, end)

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._view.release()
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                # A caller still holds a slice of the map; it goes with the process.
                pass
        self._file.close()


class StreamSource(Source):
    """A forward-only byte stream: a pipe, a FIFO, standard input, a decompressor."""

    seekable = False

    def __init__(self, fileobj: BinaryIO, name: str, start: int = 0) -> None:
        super().__init__()
        self.name = name
        self._f = fileobj
        self._pos = start
        self.start = start
        self._pending = b""
        _enlarge_pipe(fileobj)

    def unread(self, data: bytes) -> None:
        """Push back bytes read for detection, so the next read returns them first."""
        self._pending = data + self._pending
        self._pos -= len(data)

    def read(self, n: int) -> bytes:
        out = b""
        if self._pending:
            out, self._pending = self._pending[:n], self._pending[n:]
            n -= len(out)
        if n > 0:
            got = read_full(self._f, n)
            out = out + got if out else got
        self._pos += len(out)
        return out

    def readinto(self, view: memoryview) -> int:
        readinto = getattr(self._f, "readinto", None)
        if readinto is None:
            return super().readinto(view)
        n = 0
        if self._pending:
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
            self._pending = self._pending[n:]
        while n < len(view):
            got = readinto(view[n:])
            if not got:
                break
            n += got
        self._pos += n
        return n

    def close(self) -> None:
        close = getattr(self._f, "close", None)
        if close is not None:
            close()


def is_regular_file(path: str | os.PathLike[str]) -> bool:
    """True for a path naming a regular file (not a FIFO, socket or device)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
