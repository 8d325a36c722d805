"""Moving bytes in and out of files: exact reads, complete writes, sparse copies.

The one place for what every reader and writer needs at the bottom:

* reading exactly ``n`` bytes (of a header, a table, a block) or saying
  precisely what is missing, for byte sources and plain file objects;
* writing a whole buffer with ``pwrite``/``pwritev`` (finishing short writes);
* copying ranges so that holes stay holes: the data extents of a sparse
  input (``SEEK_DATA``/``SEEK_HOLE``) and all-zero pieces are skipped, since
  the output reads as zeros there already.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, BinaryIO, Protocol

from .errors import QevmError, TruncatedError


class Source(Protocol):
    """What is read from: a byte source (:class:`qevm.source.base.Source`)."""

    seekable: bool
    size: int | None

    def read(self, n: int) -> bytes: ...

    def read_at(self, offset: int, n: int) -> Any: ...

    def fileno(self) -> int | None: ...

    def release(self, start: int, end: int) -> None: ...


class Writer(Protocol):
    """What copies go to: a stream writer (:class:`qevm.wire.Writer`)."""

    def bytes(self, data: Any) -> None: ...

    def hole(self, n: int) -> None: ...


#: Bytes per write call.  Linux sizes page-cache folios by the length of the
#: write; on the VM qevm is measured on, 1 GiB written 4 MiB at a time took
#: 1.6-1.8 s of kernel time about half of the runs (always right after another
#: program's gigabyte was freed), 256 KiB at a time 0.45-0.55 s in every run.
#: The extra calls cost about 10 ms per GiB.
WRITE_SIZE = 256 << 10
#: Most buffers one pwritev call takes (Linux IOV_MAX).
IOV_MAX = 1024
#: Copies look for zeros in pieces of this size (aligned in the input, so
#: holes stay aligned), and read at most ``COPY_SIZE`` at a time.
ZERO_PIECE = 1 << 16
COPY_SIZE = 8 << 20
_ZEROS = bytes(ZERO_PIECE)


# -- reading exactly ----------------------------------------------------------------------


def missing(
    what: str,
    n: int,
    have: int,
    offset: int,
    where: str = "input",
    error: type[QevmError] = TruncatedError,
) -> QevmError:
    """The error for ``what`` (``n`` bytes at ``offset``) of which only ``have`` are there."""
    if have <= 0:
        message = f"{what} at {offset:#x} lies beyond the end of the {where}"
    else:
        message = f"the {where} ends inside the {what}: {have} of {n} bytes present"
    return error(message, offset=offset, expected=f"{n} bytes of {what}")


def read_exact(
    src: Source,
    offset: int,
    n: int,
    what: str,
    *,
    where: str = "input",
    error: type[QevmError] = TruncatedError,
) -> bytes:
    """Exactly ``n`` bytes of ``what`` at absolute ``offset`` of ``src``.

    A streaming source must be at ``offset``.  Fewer bytes raise ``error``
    naming ``what`` and how much of it the ``where`` holds.
    """
    if src.seekable:
        size = src.size or 0
        if offset < 0 or n < 0 or offset + n > size:
            raise missing(what, n, size - offset, offset, where, error)
        return bytes(src.read_at(offset, n))
    data = src.read(n)
    if len(data) != n:
        raise missing(what, n, len(data), offset, where, error)
    return data


def read_full(f: BinaryIO | Any, n: int) -> bytes:
    """Up to ``n`` bytes from a file object, fewer only at its end (short reads are resumed)."""
    parts = []
    while n > 0:
        got = f.read(n)
        if not got:
            break
        parts.append(got)
        n -= len(got)
    return parts[0] if len(parts) == 1 else b"".join(parts)


# -- writing whole buffers ----------------------------------------------------------------


def pwrite_all(fd: int, data: Any, dest: int) -> None:
    """Write all of ``data`` at ``dest`` (finishing short writes)."""
    view = memoryview(data).cast("B")
    while view:
        done = os.pwrite(fd, view[:WRITE_SIZE], dest)
        view = view[done:]
        dest += done


def pwritev_all(fd: int, bufs: list[Any], dest: int) -> None:
    """Write the buffers one after the other from ``dest``."""
    i = 0
    while i < len(bufs):
        # up to IOV_MAX buffers and about WRITE_SIZE bytes per call
        j, want = i, 0
        while j < len(bufs) and j - i < IOV_MAX and want < WRITE_SIZE:
            want += len(bufs[j])
            j += 1
        chunk = bufs[i:j]
        done = os.pwritev(fd, chunk, dest)
        if done != want:  # short write: finish it plainly
            pwrite_all(fd, b"".join(bytes(b) for b in chunk)[done:], dest + done)
        dest += want
        i = j


def is_zero(data: Any) -> bool:
    """Whether every byte of ``data`` is zero."""
    return data.count(0) == len(data)


def pwrite_sparse(fd: int, data: Any, dest: int) -> None:
    """Write ``data`` at ``dest`` where the file must already read as zeros: all-zero
    pieces are left as they are (holes in a sparse file)."""
    if not is_zero(data):
        pwrite_all(fd, data, dest)


# -- copying with holes ---------------------------------------------------------------------


def data_extents(fd: int | None, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The ``[lo, hi)`` ranges of ``[start, end)`` that file ``fd`` has data for
    (all of it when ``fd`` is None or the system cannot tell)."""
    if fd is None or not hasattr(os, "SEEK_DATA"):
        if start < end:
            yield start, end
        return
    pos = start
    while pos < end:
        try:
            lo = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            return
        if lo >= end:
            return
        try:
            hi = min(os.lseek(fd, lo, os.SEEK_HOLE), end)
        except OSError:
            hi = end
        yield lo, hi
        pos = hi


def copy_file_sparse(src: int, soff: int, length: int, dst: int, doff: int) -> None:
    """Copy ``length`` bytes of file ``src`` from ``soff`` to file ``dst`` at ``doff``,
    where ``dst`` reads as zeros: holes and zero pieces of ``src`` are not written."""
    for lo, hi in data_extents(src, soff, soff + length):
        for p in range(lo, hi, COPY_SIZE):
            n = min(COPY_SIZE, hi - p)
            pwrite_sparse(dst, os.pread(src, n, p), doff + p - soff)


def copy_range(w: Writer, src: Source, start: int, end: int) -> None:
    """Bytes ``[start, end)`` of ``src`` to a stream writer, as they are (a mapped
    input lets them go after)."""
    pos = start
    while pos < end:
        n = min(COPY_SIZE, end - pos)
        w.bytes(src.read_at(pos, n))
        src.release(pos, pos + n)
        pos += n


def copy_sparse(
    w: Writer, src: Source, start: int, end: int, overrides: list[tuple[int, bytes]] = ()
) -> None:
    """Bytes ``[start, end)`` of ``src`` to a stream writer with the input's holes and
    all-zero pieces left as holes, and ``overrides`` — sorted, non-overlapping
    ``(offset, data)`` — written instead of the input's bytes there."""
    pos = start
    for off, data in [*overrides, (end, b"")]:
        _copy_sparse_plain(w, src, pos, off)
        if data:
            w.bytes(data)
        pos = off + len(data)


def _copy_sparse_plain(w: Writer, src: Source, start: int, end: int) -> None:
    pos = start
    for lo, hi in data_extents(src.fileno(), start, end):
        w.hole(lo - pos)
        pos = lo
        while pos < hi:
            n = min(ZERO_PIECE - pos % ZERO_PIECE, hi - pos)
            data = bytes(src.read_at(pos, n))
            if data == _ZEROS[:n]:
                w.hole(n)
            else:
                w.bytes(data)
            pos += n
    w.hole(end - pos)
