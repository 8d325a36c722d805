"""Finding a byte string in a guest's RAM without reading RAM page by page.

A scanner yields ``(block, offset)`` for every occurrence of a needle in the
current content of the blocks.  From the page index the needle is searched in
the inputs' own bytes (``mmap.find`` over each run of raw pages, so a 512 MiB
guest is searched in a few tens of milliseconds) and hits in stale copies or
record headers are dropped; pages that must be computed (zlib, XBZRLE) are
read one by one.  A stream read from a pipe is searched in the file its
blocks were staged in.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator
from typing import Any

Scanner = Callable[[bytes], Iterator[tuple[str, int]]]

_PIECE = 1 << 24


def _find_all(source: Any, needle: bytes, start: int, end: int) -> Iterator[int]:
    """Offsets of ``needle`` in ``source`` bytes ``[start, end)``."""
    find = getattr(source, "find", None)
    if find is not None:
        pos = start
        try:
            while True:
                hit = find(needle, pos, end)
                if hit < 0:
                    return
                yield hit
                pos = hit + 1
        finally:
            # the mapped pages searched need not stay in this process's memory
            release = getattr(source, "release", None)
            if release is not None and end - start >= 1 << 20:
                release(start, end)
    overlap = len(needle) - 1
    pos = start
    while pos < end:
        n = min(_PIECE, end - pos)
        data = bytes(source.read_at(pos, n + min(overlap, end - pos - n)))
        hit = data.find(needle)
        while 0 <= hit < n:
            yield pos + hit
            hit = data.find(needle, hit + 1)
        pos += n


def index_scanner(index: Any) -> Scanner:
    """A scanner over the current pages of a :class:`~qevm.sections.ram.index.PageIndex`."""
    ps = index.page_size

    def scan(needle: bytes) -> Iterator[tuple[str, int]]:
        for name in list(index.loc):
            for run in index.runs(name):
                if run.kind == "data":
                    off, stride = run.offset, run.stride
                    end = off + (run.count - 1) * stride + ps
                    for hit in _find_all(index.inputs[run.input], needle, off, end):
                        p, inpage = divmod(hit - off, stride)
                        # a needle in a record header or running into one is not in RAM
                        if inpage + len(needle) <= ps:
                            yield name, (run.first + p) * ps + inpage
                elif run.kind == "computed":
                    for page in range(run.first, run.first + run.count):
                        data = index.read_page(name, page)
                        hit = data.find(needle)
                        while hit >= 0:
                            yield name, page * ps + hit
                            hit = data.find(needle, hit + 1)

    return scan


def file_scanner(fd: int, areas: dict[str, int], sizes: dict[str, int]) -> Scanner:
    """A scanner over blocks laid out in a file: block ``b`` at ``areas[b]``, ``sizes[b]`` long."""

    def scan(needle: bytes) -> Iterator[tuple[str, int]]:
        length = os.fstat(fd).st_size
        if not length:
            return
        with mmap.mmap(fd, length, access=mmap.ACCESS_READ) as m:
            for name, start in areas.items():
                end = min(start + sizes[name], length)
                for hit in _find_all(m, needle, start, end):
                    yield name, hit - start

    return scan
