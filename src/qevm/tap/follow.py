"""A recording that is still being written, read as a stream (``tail -f``).

The tap's decoder reads each connection from its recording file while the
forwarding side is still appending to it: :class:`FollowSource` returns what
the file holds, waits when it has caught up, and ends only once the recording
is declared complete (:meth:`FollowSource.finish`) and read to its last byte.
The decoder thus never slows the forwarding: it may fall behind, never the
other way round.

The decoder's readers take the file through :meth:`FollowSource.window`, a
mapping of what has been written: they touch the RAM records' headers, and
the pages' bytes are never copied out of the page cache (copying them, into
buffers zeroed first, was most of the decoder's time and twice its share of
the memory bandwidth the migration itself needs).
"""

from __future__ import annotations

import mmap
import os
import threading

from ..source.base import Source

#: How long a reader that has caught up sleeps before looking at the file again.
POLL_INTERVAL = 0.02
#: Most bytes one window maps.
MAX_WINDOW = 16 << 20


class FollowSource(Source):
    """A forward-only source over a file another process is appending to."""

    seekable = False
    container = "live recording"

    def __init__(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        super().__init__()
        self.name = name or os.fspath(path)
        self._fd = os.open(path, os.O_RDONLY)
        #: The final size, once the recording is complete.
        self._final: int | None = None
        self._grown = threading.Event()
        self._closed = False

    def finish(self, size: int) -> None:
        """The recording is complete at ``size`` bytes: read to there, then end."""
        self._final = size
        self._grown.set()

    def abandon(self) -> None:
        """Make readers see the end now, whatever is left (the decoder is stopping)."""
        self._closed = True
        self._grown.set()

    @property
    def finished(self) -> bool:
        """Whether the final size is known."""
        return self._final is not None

    def readinto(self, view: memoryview) -> int:
        while True:
            if self._closed:
                return 0
            want = len(view)
            if self._final is not None:
                want = min(want, self._final - self._pos)
                if want <= 0:
                    return 0
            # at the position (not the descriptor's offset): windows do not move that
            n = os.preadv(self._fd, [view[:want]], self._pos)
            if n:
                self._pos += n
                return n
            self._grown.wait(POLL_INTERVAL)
            self._grown.clear()

    def window(self, start: int, need: int) -> memoryview | None:
        """A read-only mapping of the recording from ``start``: ``need`` bytes once
        it holds them (fewer at its end), up to :data:`MAX_WINDOW`; after
        :meth:`abandon`, nothing past what was handed out before."""
        while True:
            end = self._final if self._final is not None else os.fstat(self._fd).st_size
            if self._closed or self._final is not None or end - start >= need:
                break
            self._grown.wait(POLL_INTERVAL)
            self._grown.clear()
        end = min(end, start + max(need, MAX_WINDOW))
        if self._closed:
            end = min(end, self._pos)  # the end now: only what the reader already had
        if end <= start:
            self._pos = max(self._pos, start)
            return memoryview(b"")
        base = start - start % mmap.ALLOCATIONGRANULARITY
        try:
            m = mmap.mmap(self._fd, end - base, offset=base, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None  # a file system that cannot map it: read() copies instead
        self._pos = end
        return memoryview(m)[start - base :]

    def read(self, n: int) -> bytes:
        buf = bytearray(n)
        got = 0
        with memoryview(buf) as view:
            while got < n:
                k = self.readinto(view[got:])
                if not k:
                    break
                got += k
        del buf[got:]
        return bytes(buf)

    def read_some(self, n: int) -> bytes:
        """Up to ``n`` bytes, as soon as there are any (b"" at the end)."""
        buf = bytearray(n)
        with memoryview(buf) as view:
            k = self.readinto(view)
        return bytes(buf[:k])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
