"""The wire layer: big-endian integers and counted strings at absolute offsets.

:class:`Reader` reads a :class:`~qevm.source.base.Source` through a window
(or the whole mapped file), so every value knows its absolute offset and
every read is bounded by the input and by an optional ``limit`` (the end of
a nested PACKAGED blob).  :class:`Writer` is its exact inverse.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from .errors import FormatError, QevmError, TruncatedError
from .source.base import CHUNK, Source

#: Bytes read through a mapped input between hints that they can be dropped.
RELEASE_STEP = 32 << 20

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_S32 = struct.Struct(">i")
_S64 = struct.Struct(">q")


class Reader:
    """Sequential big-endian reader with absolute offsets.

    ``buf``/``pos``/``base`` are public so hot loops (RAM records) can parse
    in place; call :meth:`ensure` before touching ``buf[pos:pos+n]``.
    """

    __slots__ = (
        "source",
        "buf",
        "pos",
        "base",
        "limit",
        "_mapped",
        "_eof",
        "_error",
        "_mark",
        "_released",
    )

    def __init__(self, source: Source, offset: int | None = None) -> None:
        self.source = source
        start = source.start if offset is None else offset
        view = source.view()
        self.limit: int | None = None
        self._eof = False
        #: A source's error held back until what it delivered before has been read.
        self._error: QevmError | None = None
        self._mark: int | None = None
        self._released = 0
        if view is not None:
            self.buf = view
            self.base = 0
            self.pos = start
            self._mapped = True
        else:
            self.buf = b""
            self.base = start
            self.pos = 0
            self._mapped = False
            if not source.seekable and source.position != start:
                raise FormatError(
                    f"stream source is at {source.position:#x}, not {start:#x}",
                    offset=start,
                )

    # -- position ------------------------------------------------------
    @property
    def offset(self) -> int:
        """Absolute offset of the next byte."""
        return self.base + self.pos

    @property
    def seekable(self) -> bool:
        return self.source.seekable

    def seek(self, offset: int) -> None:
        """Jump to an absolute offset (forward only on streaming sources)."""
        if self._mapped:
            self.pos = offset
            return
        if self.base <= offset <= self.base + len(self.buf):
            self.pos = offset - self.base
            return
        if offset < self.base:
            if not self.source.seekable:
                raise FormatError(
                    "cannot go back on a streaming input; save it to a file first",
                    offset=offset,
                )
        elif not self.source.seekable:
            self.skip(offset - self.offset)
            return
        self.buf = b""
        self.base = offset
        self.pos = 0

    # -- buffer management ------------------------------------------------
    def available(self) -> int:
        """Bytes that can be read without touching the source."""
        end = len(self.buf) - self.pos
        if self.limit is not None:
            end = min(end, self.limit - self.offset)
        return end

    def ensure(self, n: int) -> None:
        """Make ``buf[pos:pos+n]`` valid, or raise TruncatedError."""
        if self.limit is not None and self.base + self.pos + n > self.limit:
            raise TruncatedError(
                f"need {n} bytes but only {self.limit - self.offset} remain in the enclosing blob",
                offset=self.offset,
            )
        if self.pos + n <= len(self.buf):
            return
        if not self._mapped:
            self._refill(n)
            if self.pos + n <= len(self.buf):
                return
        raise TruncatedError(
            f"input ends after {len(self.buf) - self.pos} more bytes, need {n}",
            offset=self.offset,
        )

    def _refill(self, n: int) -> None:
        drop = self.pos
        if self._mark is not None:
            drop = max(0, min(drop, self._mark - self.base))
        keep = self.buf[drop:]
        self.base += drop
        self.pos -= drop
        need = n - (len(keep) - self.pos)
        want = max(need, CHUNK)
        src = self.source
        if src.seekable:
            end = self.base + len(keep)
            size = src.size if src.size is not None else end + want
            want = min(want, max(0, size - end))
            more = bytes(src.read_at(end, want)) if want else b""
            self.buf = bytes(keep) + more if keep else more
            return
        if not self._eof:
            view = src.window(self.base, len(keep) + need)
            if view is not None:
                # the bytes kept are in the mapping too: nothing is copied
                self._eof = len(view) < len(keep) + need
                self.buf = view
                return
        if self._eof:
            self.buf = bytearray(keep)
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            return
        # A new buffer each time: views of the old one (pages waiting to be
        # written) stay valid.  A source may fill less than asked (a file that
        # is still being written returns what is there, a decompressor what it
        # had before failing); only what is needed is waited for, and a read of
        # nothing is the end.
        buf = bytearray(len(keep) + want)
        buf[: len(keep)] = keep
        got = 0
        try:
            with memoryview(buf) as view:
                while got < need:
                    more = src.readinto(view[len(keep) + got :])
                    if not more:
                        self._eof = True
                        break
                    got += more
        except QevmError as e:
            # A source that failed (a corrupt compressed input) gives nothing more:
            # what it delivered before is read first, then its error comes once,
            # and later reads meet the end instead of failing (and allocating) again.
            self._eof = True
            if not got:
                self.buf = bytearray(keep)
                raise
            self._error = e
        del buf[len(keep) + got :]
        self.buf = buf

    def release_behind(self) -> None:
        """Let a mapped input drop from memory what lies behind the position."""
        if self._mapped and self.offset - self._released >= RELEASE_STEP:
            self.source.release(self._released, self.offset)
            self._released = self.offset

    def mark(self) -> None:
        """Keep every byte from here on in memory until :meth:`since_mark`."""
        self._mark = self.offset

    def unmark(self) -> None:
        """Forget the mark (bytes before the position may go again)."""
        self._mark = None

    def since_mark(self) -> bytes:
        """The bytes read since :meth:`mark` (and forget the mark)."""
        assert self._mark is not None
        start = self._mark - self.base
        self._mark = None
        return bytes(self.buf[start : self.pos])

    def peek_at(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at absolute ``offset`` (not before the current one on
        streaming input), without moving."""
        if self._mapped:
            end = len(self.buf) if self.limit is None else min(len(self.buf), self.limit)
            return bytes(self.buf[offset : min(offset + n, end)])
        rel = offset - self.offset
        if rel < 0:
            if not self.source.seekable:
                raise FormatError("cannot look back on a streaming input", offset=offset)
            return bytes(self.source.read_at(offset, n))
        try:
            self.ensure(rel + n)
        except TruncatedError:
            pass
        avail = self.available()
        return bytes(self.buf[self.pos + rel : self.pos + min(avail, rel + n)])

    def at_end(self) -> bool:
        """True when no byte is left (in the blob, or in the input)."""
        if self.limit is not None and self.offset >= self.limit:
            return True
        if self.pos < len(self.buf):
            return False
        if self._mapped:
            return True
        try:
            self.ensure(1)
        except TruncatedError:
            return True
        return False

    # -- values -------------------------------------------------------------
    def u8(self) -> int:
        self.ensure(1)
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def u16(self) -> int:
        self.ensure(2)
        (v,) = _U16.unpack_from(self.buf, self.pos)
        self.pos += 2
        return v

    def u32(self) -> int:
        self.ensure(4)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self) -> int:
        self.ensure(8)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def s32(self) -> int:
        self.ensure(4)
        (v,) = _S32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def s64(self) -> int:
        self.ensure(8)
        (v,) = _S64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def peek_u8(self, ahead: int = 0) -> int | None:
        """The byte ``ahead`` bytes from here, or None at the end of input."""
        try:
            self.ensure(ahead + 1)
        except TruncatedError:
            return None
        return self.buf[self.pos + ahead]

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes from here without consuming them."""
        try:
            self.ensure(n)
        except TruncatedError:
            n = self.available()
        return bytes(self.buf[self.pos : self.pos + n])

    def bytes(self, n: int) -> bytes:
        """Exactly ``n`` bytes (bounded: a huge ``n`` fails before allocating)."""
        if n < 0:
            raise FormatError(f"negative length {n}", offset=self.offset)
        self._check_room(n)
        if n > CHUNK * 16 and not self._mapped:
            parts = []
            left = n
            while left:
                step = min(left, CHUNK)
                self.ensure(step)
                parts.append(bytes(self.buf[self.pos : self.pos + step]))
                self.pos += step
                left -= step
            return b"".join(parts)
        self.ensure(n)
        v = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return v

    def skip(self, n: int) -> None:
        """Skip ``n`` bytes (streaming sources read through them)."""
        self._check_room(n)
        if self._mapped:
            self.ensure(n)
            self.pos += n
            return
        while n:
            step = min(n, CHUNK)
            self.ensure(step)
            self.pos += step
            n -= step

    def _check_room(self, n: int) -> None:
        """Refuse lengths that cannot fit in what is left of the input."""
        end = self.offset + n
        if self.limit is not None and end > self.limit:
            raise TruncatedError(
                f"length {n} runs past the end of the enclosing blob at {self.limit:#x}",
                offset=self.offset,
            )
        size = self.source.size
        if size is not None and end > size:
            raise TruncatedError(
                f"input ends after {size - self.offset} more bytes, need {n}",
                offset=self.offset,
            )

    def counted_bytes(self) -> bytes:
        """A u8 length followed by that many bytes."""
        n = self.u8()
        return self.bytes(n)

    def counted_str(self) -> str:
        """A u8-counted string (idstr, RAMBlock name, subsection name)."""
        return self.counted_bytes().decode("latin-1")


class Writer:
    """Big-endian writer, the inverse of :class:`Reader`.

    ``offset`` counts from the offset the first byte written gets (a stream
    inside a container starts after the container's header).
    """

    __slots__ = ("out", "offset", "_sparse", "_hole")

    def __init__(self, out: BinaryIO, offset: int = 0) -> None:
        self.out = out
        self.offset = offset
        self._sparse: bool | None = None
        self._hole = False

    def bytes(self, data: bytes | bytearray | memoryview) -> None:
        self.out.write(data)
        self.offset += len(data)
        if self._hole and len(data):
            self._hole = False

    def hole(self, n: int) -> None:
        """``n`` zero bytes, left as a hole where the output can seek (sparse files)."""
        if n <= 0:
            return
        if self._sparse is None:
            seekable = getattr(self.out, "seekable", None)
            self._sparse = bool(seekable and seekable())
        if self._sparse:
            self.out.seek(n, 1)
            self.offset += n
            self._hole = True
            return
        zeros = bytes(min(n, CHUNK))
        while n:
            step = min(n, len(zeros))
            self.bytes(zeros[:step] if step < len(zeros) else zeros)
            n -= step

    def finish(self) -> None:
        """Flush, and give the output its full size when it ends in a hole."""
        if self._hole:
            pos = self.out.tell()
            self.out.truncate(pos)
            self._hole = False
        self.out.flush()

    def u8(self, v: int) -> None:
        self.bytes(bytes((v,)))

    def u16(self, v: int) -> None:
        self.bytes(_U16.pack(v))

    def u32(self, v: int) -> None:
        self.bytes(_U32.pack(v))

    def u64(self, v: int) -> None:
        self.bytes(_U64.pack(v))

    def s32(self, v: int) -> None:
        self.bytes(_S32.pack(v))

    def s64(self, v: int) -> None:
        self.bytes(_S64.pack(v))

    def counted_bytes(self, data: bytes) -> None:
        if len(data) > 255:
            raise FormatError(f"counted string of {len(data)} bytes (max 255)")
        self.u8(len(data))
        self.bytes(data)

    def counted_str(self, s: str) -> None:
        self.counted_bytes(s.encode("latin-1"))
