"""A source over bytes already in memory, at a chosen base offset."""

from __future__ import annotations

from ..errors import TruncatedError
from .base import Source


class MemorySource(Source):
    """``data`` seen at offsets ``base .. base + len(data)``.

    Used to decode, after the fact, device sections that were kept as bytes
    while a streaming input went by; offsets stay those of the original stream.
    """

    seekable = True

    def __init__(
        self, data: bytes | bytearray | memoryview, base: int = 0, name: str = "<memory>"
    ) -> None:
        super().__init__()
        self.name = name
        # a view (of a mapped file, say) is copied once: find/rfind need bytes
        self._data = bytes(data) if isinstance(data, memoryview) else data
        self._base = base
        self.start = base
        self.size = base + len(data)
        self._pos = base

    def read(self, n: int) -> bytes:
        i = self._pos - self._base
        out = self._data[i : i + n]
        self._pos += len(out)
        return out

    def read_at(self, offset: int, n: int) -> bytes:
        i = offset - self._base
        if i < 0 or n < 0 or i + n > len(self._data):
            raise TruncatedError(
                f"need {n} bytes but only {max(0, len(self._data) - i)} are there",
                offset=offset,
            )
        return self._data[i : i + n]

    def find(self, pattern: bytes, start: int, end: int) -> int:
        i = self._data.find(pattern, start - self._base, end - self._base)
        return -1 if i < 0 else i + self._base

    def rfind(self, pattern: bytes, start: int, end: int) -> int:
        i = self._data.rfind(pattern, start - self._base, end - self._base)
        return -1 if i < 0 else i + self._base
