"""Counting pages as the RAM readers hand them over.

:class:`MainCounter` is the page consumer of the main stream: it counts
pages by encoding (as QEMU's ``query-migrate`` counts them: ``normal`` are
data pages, ``zero`` what QEMU calls ``duplicate``) and cuts the stream
into :class:`~qevm.tap.passes.Item`\\ s of pages sent in ascending order, handed
to the pass counter at each sync point.  :class:`PlainCounter` only counts
(the postcopy-preempt channel).  Neither keeps page contents.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..sections.ram.consumer import PageConsumer
from .passes import Item, position

if TYPE_CHECKING:
    from ..sections.ram.blocks import RamBlock
    from ..wire import Reader

#: Page kinds, in the order of the counters.
KINDS = ("normal", "zero", "xbzrle", "compressed")
NORMAL, ZERO, XBZRLE, COMPRESSED = range(4)


class PageCounts:
    """Pages by kind; one thread writes, any may read."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = [0, 0, 0, 0]

    def to_json(self) -> dict[str, int]:
        return {k: v for k, v in zip(KINDS, self.n)}


class PlainCounter(PageConsumer):
    """Counts the pages of a connection."""

    uses_numpy = True

    def __init__(self, page_size: int) -> None:
        super().__init__(page_size)
        self.counts = PageCounts()

    def zero(self, block: RamBlock, addr: int, fill: int = 0) -> None:
        self.counts.n[ZERO] += 1

    def zero_run(self, block: RamBlock, addrs: Any) -> None:
        self.counts.n[ZERO] += len(addrs)

    def page(self, block: RamBlock, addr: int, offset: int, r: Reader, src: int = 0) -> None:
        self.counts.n[NORMAL] += 1

    def page_run(self, block: RamBlock, addrs: Any, offsets: Any, r: Reader, src: int = 0) -> None:
        self.counts.n[NORMAL] += len(addrs)

    def xbzrle(self, block: RamBlock, addr: int, delta: bytes, offset: int) -> None:
        self.counts.n[XBZRLE] += 1

    def zlib_page(self, block: RamBlock, addr: int, offset: int) -> None:
        self.counts.n[COMPRESSED] += 1

    def zlib_data(self, block: RamBlock, addr: int, data: bytes, offset: int) -> None:
        self.counts.n[COMPRESSED] += 1


class MainCounter(PlainCounter):
    """Counts the main stream's pages and groups them for the pass counter.

    ``cursor`` gives the reader's offset (bytes are attributed by it);
    ``on_epoch(items, epoch, next_epoch)`` receives the items of each finished
    sync interval, ``next_epoch`` None after the last one (the stream ended,
    or postcopy began).
    After :meth:`enter_postcopy` pages are only counted (requested pages come
    in any order; passes are a precopy notion).
    """

    def __init__(
        self,
        page_size: int,
        where: str,
        cursor: Callable[[], int],
        on_epoch: Callable[[list[Item], int, int | None], None],
    ) -> None:
        super().__init__(page_size)
        self.where = where
        self._cursor = cursor
        self._on_epoch = on_epoch
        self._order: dict[str, int] = {}
        self._items: list[Item] = []
        self._epoch = 0
        self._first = -1
        self._last = -1
        self._run = [0, 0, 0, 0]
        self._mark = 0
        self.postcopy = False
        self.postcopy_counts = PageCounts()
        self._finished = False

    # -- sync points ---------------------------------------------------------
    @property
    def epoch(self) -> int:  # type: ignore[override]
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._close_epoch(value)
        self._epoch = value

    def add_block(self, block: RamBlock) -> None:
        self._order.setdefault(block.name, len(self._order))

    def enter_postcopy(self) -> None:
        """From here on pages are postcopy pages (after the device state)."""
        self._close_epoch(None)
        self.postcopy = True

    def finish(self) -> None:
        """The stream ended: hand over what is left."""
        self._close_epoch(None)

    def _close_item(self) -> None:
        if self._first < 0:
            return
        now = self._cursor()
        run = self._run
        pages = Counter({KINDS[i]: run[i] for i in range(4) if run[i]})
        self._items.append(Item(self._first, self._last, pages, now - self._mark, self.where))
        self._mark = now
        self._first = -1
        self._run = [0, 0, 0, 0]

    def _close_epoch(self, following: int | None) -> None:
        if self._finished:
            return
        self._finished = following is None
        self._close_item()
        items, self._items = self._items, []
        if items:
            # what follows the last page (EOS, section framing) counts with it
            now = self._cursor()
            items[-1].bytes += now - self._mark
            self._mark = now
        self._on_epoch(items, self._epoch, following)

    # -- pages ---------------------------------------------------------------------
    def _add(self, block: RamBlock, addr: int, kind: int) -> None:
        self.counts.n[kind] += 1
        if self._finished:
            if self.postcopy:
                self.postcopy_counts.n[kind] += 1
            return
        key = position(self._order[block.name], addr)
        if key <= self._last:
            self._close_item()
        if self._first < 0:
            self._first = key
        self._last = key
        self._run[kind] += 1

    def _add_run(self, block: RamBlock, addrs: Any, kind: int) -> None:
        n = len(addrs)
        self.counts.n[kind] += n
        if self._finished:
            if self.postcopy:
                self.postcopy_counts.n[kind] += n
            return
        import numpy as np

        base = position(self._order[block.name], 0)
        keys = addrs.astype(np.uint64) | np.uint64(base)
        cuts = (np.flatnonzero(keys[1:] <= keys[:-1]) + 1).tolist()
        start = 0
        for end in [*cuts, n]:
            first, last = int(keys[start]), int(keys[end - 1])
            if first <= self._last or start:
                self._close_item()
            if self._first < 0:
                self._first = first
            self._last = last
            self._run[kind] += end - start
            start = end

    def zero(self, block: RamBlock, addr: int, fill: int = 0) -> None:
        self._add(block, addr, ZERO)

    def zero_run(self, block: RamBlock, addrs: Any) -> None:
        self._add_run(block, addrs, ZERO)

    def page(self, block: RamBlock, addr: int, offset: int, r: Reader, src: int = 0) -> None:
        self._add(block, addr, NORMAL)

    def page_run(self, block: RamBlock, addrs: Any, offsets: Any, r: Reader, src: int = 0) -> None:
        self._add_run(block, addrs, NORMAL)

    def xbzrle(self, block: RamBlock, addr: int, delta: bytes, offset: int) -> None:
        self._add(block, addr, XBZRLE)

    def zlib_page(self, block: RamBlock, addr: int, offset: int) -> None:
        self._add(block, addr, COMPRESSED)

    def zlib_data(self, block: RamBlock, addr: int, data: bytes, offset: int) -> None:
        self._add(block, addr, COMPRESSED)
