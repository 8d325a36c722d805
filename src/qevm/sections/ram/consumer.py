"""What RAM records are handed to: the interface of page consumers.

The record reader (:mod:`.records`) calls these methods in stream order; a
consumer decides what to keep.  The base class keeps nothing (decoding device
state only needs RAM to be walked); :class:`~.index.PageIndex` remembers where
each page lives; the sinks of :mod:`qevm.ramio` write pages to files as they
stream by.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from ...wire import Reader
    from .blocks import RamBlock


class PageConsumer:
    """Receives RAM pages in stream order (this base class ignores them)."""

    #: True for consumers that need page bytes as they pass (pipes).
    streaming = False
    #: The round of RAM the main channel is in (multifd sync points seen).
    epoch = 0
    #: Consumers that import numpy anyway let the reader use it from the start.
    uses_numpy = False
    #: Consumers that know which pages no record gave (see :meth:`absent_pages`).
    tracks_pages = False

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size

    def add_block(self, block: RamBlock) -> None:
        """A block announced by MEM_SIZE."""

    def absent_pages(self, name: str) -> int | None:
        """Pages of block ``name`` that no record gave (None: block not followed)."""
        return None

    def flush(self) -> None:
        """The end of a RAM section: finish what was gathered."""

    def zero(self, block: RamBlock, addr: int, fill: int = 0) -> None:
        """A ZERO record (``fill`` is the byte old QEMUs filled the page with)."""

    def zero_run(self, block: RamBlock, addrs: np.ndarray) -> None:
        """Many ZERO records with fill 0."""

    def page(self, block: RamBlock, addr: int, offset: int, r: Reader, src: int = 0) -> None:
        """A raw page at absolute ``offset`` of input ``src`` (in ``r``'s window)."""

    def page_run(
        self, block: RamBlock, addrs: np.ndarray, offsets: np.ndarray, r: Reader, src: int = 0
    ) -> None:
        """Many raw pages, all currently in ``r``'s window."""

    def zlib_page(self, block: RamBlock, addr: int, offset: int) -> None:
        """A zlib page whose u32 length is at ``offset`` of a seekable main input."""

    def zlib_data(self, block: RamBlock, addr: int, data: bytes, offset: int) -> None:
        """A zlib page's compressed bytes (streaming inputs)."""

    def xbzrle(self, block: RamBlock, addr: int, delta: bytes, offset: int) -> None:
        """An XBZRLE delta against the page's current content."""

    def computed(self, block: RamBlock, addr: int, data: bytes) -> None:
        """A page whose bytes qevm had to compute (e.g. multifd zlib/zstd)."""

    def mapped(self, block: RamBlock, bitmap: bytes, pages_offset: int) -> None:
        """A mapped-ram block in a seekable file."""

    def mapped_stream(self, block: RamBlock, bitmap: bytes, r: Reader) -> None:
        """A mapped-ram block whose page area starts at ``r``'s position."""
        r.skip(block.used_length)

    # -- extra connections (see multifd.py) ----------------------------------
    def channel_page(self, block: RamBlock, addr: int, src: int, offset: int, epoch: int) -> None:
        """A raw page at ``offset`` of input ``src``, sent in round ``epoch``."""

    def channel_zero(self, block: RamBlock, addr: int, epoch: int) -> None:
        """A zero page sent on a multifd channel in round ``epoch``."""

    def channel_computed(self, block: RamBlock, addr: int, data: bytes, epoch: int) -> None:
        """A decompressed multifd page sent in round ``epoch``."""
