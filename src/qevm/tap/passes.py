"""Pages by pass: which round of the sender over RAM each page was sent in.

QEMU's migration thread walks the dirty bitmap in RAMBlock order (the order
of the MEM_SIZE list) and page order, wrapping to the first block when it
reaches the end (find_dirty_block); every wrap starts a pass.  The wire
shows a pass beginning where a page comes at or before the sender's position
(block, offset) — the same page cannot come twice in one pass.

With multifd the pages of one pass are spread over several sequences: the
main stream (zero pages before QEMU 9.0) and each multifd channel, whose
packets the sender fills in scan order.  The sequences are lined up at sync
points: everything a channel sends before its n-th SYNC packet was queued
before the main stream's n-th sync point (an EOS record before 8.1, a
MULTIFD_FLUSH record since).  :class:`PassCounter` is given the items of each
sync interval ("epoch") once every sequence has passed it, and places them.

Within one interval at most one wrap is visible (QEMU syncs the bitmap only
between iterations, and an iteration ends once a whole round found nothing);
an item whose first page lies at or before the position reached in the
previous interval, or before the previous item of its own sequence, is the
first of the next pass.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: Shift of the block's index in a position key (offsets fit in 48 bits).
BLOCK_SHIFT = 48


def position(block_index: int, addr: int) -> int:
    """The sender's scan position of page ``addr`` of the ``block_index``-th block."""
    return (block_index << BLOCK_SHIFT) | addr


@dataclass
class Item:
    """Pages sent together, in sender order within their sequence."""

    #: Positions of the first and last page (None: no page, only bytes).
    first: int | None
    last: int | None
    pages: Counter
    bytes: int
    #: Where the bytes travelled (``main.mig``, ``channel-1.bin``, ...).
    where: str
    #: Send order within the interval (the packet number for multifd).
    order: int = 0


@dataclass
class Tally:
    """Pages by encoding and the bytes that carried them."""

    pages: Counter = field(default_factory=Counter)
    bytes: int = 0
    by_channel: Counter = field(default_factory=Counter)

    def add(self, item: Item) -> None:
        self.pages.update(item.pages)
        self.bytes += item.bytes
        self.by_channel[item.where] += item.bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "pages": dict(sorted(self.pages.items())),
            "bytes": self.bytes,
            "bytes_by_file": dict(sorted(self.by_channel.items())),
        }


class PassCounter:
    """Places the items of each sync interval into passes."""

    def __init__(self) -> None:
        self.passes: list[Tally] = []
        #: Index of the current pass (-1 before the first page).
        self._current = -1
        #: The sender's position at the end of the intervals placed so far.
        self._position = _BEFORE_ANY

    @property
    def count(self) -> int:
        return len(self.passes)

    def place(self, sequences: list[list[Item]]) -> list[int]:
        """Place one interval's items (one list per sequence, each in send order).

        Returns the numbers (from 1) of the passes that started in it.
        """
        start = self._position
        reached: dict[int, int] = {}
        top = 0
        for seq in sequences:
            wraps = 0
            prev = start
            for item in seq:
                if item.first is None or item.last is None:
                    self._tally(max(self._current + wraps, 0)).add(item)
                    continue
                if item.first <= prev:
                    wraps += 1
                prev = item.last
                self._tally(self._current + wraps).add(item)
                reached[wraps] = max(reached.get(wraps, -1), item.last)
                top = max(top, wraps)
        first_new = self._current + 2
        self._current += top
        if top:
            self._position = reached[top]
        elif 0 in reached:
            self._position = max(start, reached[0])
        return list(range(first_new, self._current + 2))

    def _tally(self, index: int) -> Tally:
        while len(self.passes) <= index:
            self.passes.append(Tally())
        return self.passes[index]


#: Sorts after every position: the first page of all starts pass 1.
_BEFORE_ANY = 1 << 62
