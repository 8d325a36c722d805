"""XBZRLE page deltas (QEMU migration/xbzrle.c).

A delta is a sequence of ``zrun nzrun bytes`` items: ``zrun`` bytes of the
page stay as they are, then ``nzrun`` literal bytes replace the page's
bytes.  Both counts are QEMU's 14-bit ULEB128 ("small") encoding.
"""

from __future__ import annotations


class XbzrleError(ValueError):
    """The delta does not decode (QEMU's xbzrle_decode_buffer returns -1)."""


def _uleb128_small(src: bytes, i: int) -> tuple[int, int]:
    b = src[i]
    if not b & 0x80:
        return b, 1
    hi = src[i + 1]
    if hi & 0x80:
        raise XbzrleError(f"count at {i} exceeds 14 bits")
    return (b & 0x7F) | (hi << 7), 2


def decode(delta: bytes, page: bytearray) -> None:
    """Apply ``delta`` to ``page`` in place, with QEMU's checks."""
    i = d = 0
    slen = len(delta)
    dlen = len(page)
    while i < slen:
        if slen - i < 2:
            raise XbzrleError(f"truncated unchanged-run count at {i}")
        count, used = _uleb128_small(delta, i)
        if i and not count:
            raise XbzrleError(f"empty unchanged run at {i}")
        i += used
        d += count
        if d > dlen:
            raise XbzrleError("unchanged run goes past the end of the page")
        if slen - i < 2:
            raise XbzrleError(f"truncated changed-run count at {i}")
        count, used = _uleb128_small(delta, i)
        if not count:
            raise XbzrleError(f"empty changed run at {i}")
        i += used
        if d + count > dlen or i + count > slen:
            raise XbzrleError("changed run goes past the end of the page or delta")
        page[d : d + count] = delta[i : i + count]
        d += count
        i += count


def _uleb128_small_put(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n > 0x3FFF:
        raise ValueError(f"run of {n} bytes does not fit in 14 bits")
    return bytes(((n & 0x7F) | 0x80, n >> 7))


def encode(old: bytes, new: bytes) -> bytes:
    """A delta turning ``old`` into ``new`` (what QEMU's encoder produces)."""
    if len(old) != len(new):
        raise ValueError("pages differ in size")
    out = bytearray()
    i = 0
    n = len(new)
    while i < n:
        z = i
        while i < n and old[i] == new[i]:
            i += 1
        if i == n:
            break  # the final unchanged run is not encoded
        zrun = i - z
        nz = i
        while i < n and old[i] != new[i]:
            i += 1
        out += _uleb128_small_put(zrun) + _uleb128_small_put(i - nz) + new[nz:i]
    return bytes(out)
