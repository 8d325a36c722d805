"""Reading any range of a RAM block from the page index, a run of pages at a time.

``PageIndex.read`` goes page by page; the readers here look at the index
entries of the range at once (numpy), copy runs of raw pages that sit at a
constant stride in an input with one read and one strided copy, and leave
zero and absent pages as the zeros the buffer starts with.  Random reads of
an ELF served over FUSE and the kdump writer's pieces go through here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..sections.ram.index import CHUNK, CHUNK_SHIFT, KIND_FILL, KIND_SHIFT, KIND_ZLIB, MAX_INPUTS


def _runs(codes: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """Runs of raw pages in ``codes``: ``(first, count, input, offset, stride)``."""
    kinds = codes >> np.uint64(KIND_SHIFT)
    raw = np.flatnonzero(kinds < np.uint64(MAX_INPUTS))
    if not len(raw):
        return []
    offs = (codes[raw] & np.uint64((1 << KIND_SHIFT) - 1)).astype(np.int64)
    inputs = kinds[raw].astype(np.int64)
    brk = np.ones(len(raw), dtype=bool)
    if len(raw) > 1:
        strides = np.diff(offs)
        brk[1:] = (np.diff(raw) != 1) | (np.diff(inputs) != 0) | (strides <= 0)
        brk[2:] |= strides[1:] != strides[:-1]
    starts = np.flatnonzero(brk).tolist()
    ends = starts[1:] + [len(raw)]
    out = []
    for s, e in zip(starts, ends):
        stride = int(offs[s + 1] - offs[s]) if e - s > 1 else 0
        out.append((int(raw[s]), e - s, int(inputs[s]), int(offs[s]), stride))
    return out


def _release(source: Any, offset: int, length: int) -> None:
    """Let a mapped input's pages that were copied out go (they stay in the page cache)."""
    release = getattr(source, "release", None)
    if release is not None:
        release(offset, offset + length)


def read_pages(index: Any, name: str, first: int, count: int) -> bytearray:
    """Pages ``[first, first + count)`` of block ``name`` (zeros where the stream gave none)."""
    ps = index.page_size
    out = bytearray(count * ps)
    view = np.frombuffer(out, dtype=np.uint8).reshape(count, ps) if count else None
    loc = index.loc[name]
    page = first
    end = first + count
    while page < end:
        c = page >> CHUNK_SHIFT
        lo = page & (CHUNK - 1)
        n = min(end - page, CHUNK - lo)
        arr = loc.chunks.get(c)
        if arr is not None:
            codes = arr[lo : lo + n]
            base = page - first
            for p, k, src, off, stride in _runs(codes):
                source = index.inputs[src]
                if k == 1 or stride == ps:  # one contiguous piece of the input
                    pos = (base + p) * ps
                    out[pos : pos + k * ps] = source.read_at(off, k * ps)
                    _release(source, off, k * ps)
                    continue
                data = source.read_at(off, (k - 1) * stride + ps)
                flat = np.frombuffer(data, dtype=np.uint8)
                rows = np.lib.stride_tricks.as_strided(flat, shape=(k, ps), strides=(stride, 1))
                view[base + p : base + p + k] = rows  # type: ignore[index]
                del flat, rows, data
                _release(source, off, (k - 1) * stride + ps)
            kinds = codes >> np.uint64(KIND_SHIFT)
            computed = np.flatnonzero((kinds >= KIND_ZLIB) & (kinds <= KIND_FILL))
            for p in computed.tolist():
                view[base + p] = np.frombuffer(index.read_page(name, page + p), np.uint8)  # type: ignore[index]
        page += n
    return out


def read_range(index: Any, name: str, offset: int, length: int) -> bytes:
    """``length`` bytes of block ``name`` from ``offset``, read a run of pages at a time."""
    if length <= 0:
        return b""
    ps = index.page_size
    first = offset // ps
    last = -(-(offset + length) // ps)
    npages = index.loc[name].npages
    if last > npages:
        raise ValueError(f"{name}: read past the end of the block")
    data = read_pages(index, name, first, last - first)
    skip = offset - first * ps
    if skip == 0 and len(data) == length:
        return data  # type: ignore[return-value]
    return bytes(memoryview(data)[skip : skip + length])
