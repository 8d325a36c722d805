"""Whole-stream compression: gzip, xz, bzip2, zstd and lzop, read as a stream.

Compressed input is decompressed on the fly into a forward-only
:class:`~qevm.source.base.StreamSource`; nothing is written to disk and only
a small window is held in memory.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from collections.abc import Callable

from ..errors import ContainerError, UsageError
from .base import Source, StreamSource

_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x89LZO\x00\r\n\x1a\n", "lzop"),
)


class SourceFile(io.RawIOBase):
    """A read-only file object over a Source, from its ``start``."""

    def __init__(self, src: Source) -> None:
        self._src = src
        if src.seekable and src.position != src.start and hasattr(src, "seek"):
            src.seek(src.start)  # type: ignore[attr-defined]

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._src.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._src.close()
        super().close()


def _zstd(f: io.RawIOBase) -> io.RawIOBase:
    try:
        import zstandard
    except ImportError:  # pragma: no cover - a declared dependency
        raise UsageError("reading zstd input needs the 'zstandard' package") from None
    return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)


def _lzop(f: io.RawIOBase) -> io.RawIOBase:
    from .lzop import LzopReader

    return LzopReader(f)


COMPRESSIONS: dict[str, Callable[[io.RawIOBase], io.IOBase]] = {
    "gzip": lambda f: gzip.GzipFile(fileobj=f, mode="rb"),
    "xz": lambda f: lzma.LZMAFile(f, "rb"),
    "bzip2": lambda f: bz2.BZ2File(f, "rb"),
    "zstd": _zstd,
    "lzop": _lzop,
}


def detect_compression(head: bytes) -> str | None:
    """The compression whose magic ``head`` starts with, if any."""
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    return None


class _Decompressed(StreamSource):
    """A StreamSource that turns decompressor errors into ContainerError.

    Data is taken one decompression step at a time, so everything decoded
    before a corrupt or missing part is delivered, and the error names the
    exact offset (in the decompressed stream) of the first byte it lost.
    """

    def __init__(self, fileobj: io.IOBase, name: str, kind: str) -> None:
        super().__init__(fileobj, name)  # type: ignore[arg-type]
        self._kind = kind
        self._step = getattr(fileobj, "readinto1", None) or fileobj.readinto  # type: ignore[attr-defined]
        self._failed: ContainerError | None = None

    def read(self, n: int) -> bytes:
        buf = bytearray(n)
        with memoryview(buf) as view:
            got = self.readinto(view)
        del buf[got:]
        return bytes(buf)

    def readinto(self, view: memoryview) -> int:
        n = 0
        if self._pending:
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
            self._pending = self._pending[n:]
        while n < len(view) and self._failed is None:
            try:
                got = self._step(view[n:])
            except Exception as e:
                self._failed = self._error(e, self._pos + n)
                break
            if not got:
                break
            n += got
        self._pos += n
        if n == 0 and self._failed is not None and len(view):
            raise self._failed
        return n

    def _error(self, e: Exception, at: int) -> ContainerError:
        if isinstance(e, (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError)) or type(
            e
        ).__module__.startswith(("zstandard", "qevm")):
            return ContainerError(f"{self._kind} data is corrupt or truncated: {e}", offset=at)
        raise e


def decompressing(src: Source, kind: str) -> Source:
    """A stream of the decompressed contents of ``src``."""
    f = COMPRESSIONS[kind](SourceFile(src))
    out = _Decompressed(f, src.name, kind)
    out.container = f"{kind}: {src.container}" if src.container != "raw stream" else kind
    out.info = dict(src.info)
    return out
