"""lzop files (libvirt's ``lzop`` save format) and a pure-Python LZO1X decompressor.

An lzop file is a header (magic, versions, method, flags, mode, mtime, name,
header checksum, optional extra field) followed by blocks: u32 uncompressed
size (0 ends the file), u32 compressed size, the checksums the flags ask for,
then the data (stored as is when both sizes are equal).  Integers are
big-endian.  Several lzop files may be concatenated; like ``lzop -d
--ignore-warn`` (which is how libvirt restores these images) bytes after the
end marker that do not start another lzop file are ignored.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import BinaryIO

from ..errors import ContainerError
from ..fileio import missing, read_full

MAGIC = b"\x89LZO\x00\r\n\x1a\n"

F_ADLER32_D = 0x1
F_ADLER32_C = 0x2
F_H_EXTRA_FIELD = 0x40
F_CRC32_D = 0x100
F_CRC32_C = 0x200
F_MULTIPART = 0x400
F_H_FILTER = 0x800
F_H_CRC32 = 0x1000
#: Flag bits no lzop version defines.
F_RESERVED = 0x000FC000

#: lzop methods that store LZO1X data (LZO1X-1, LZO1X-1(15), LZO1X-999).
LZO1X_METHODS = {1: "LZO1X-1", 2: "LZO1X-1(15)", 3: "LZO1X-999"}
#: The newest format version lzop writes (lzop 1.04).
LZOP_FORMAT = 0x1040
#: lzop's MAX_BLOCK_SIZE: no block decompresses to more.
MAX_BLOCK_SIZE = 64 << 20
#: Largest header extra field accepted (lzop itself never writes one).
MAX_EXTRA_FIELD = 1 << 20

_U32 = struct.Struct(">I")


class LzoError(ContainerError):
    """LZO1X data that does not decode."""


def _long_count(src: bytes, ip: int, base: int) -> tuple[int, int]:
    """A count that did not fit its instruction's bits: ``base`` + 255 per zero byte
    + the first non-zero byte.  Returns the count and the new input position."""
    while src[ip] == 0:
        base += 255
        ip += 1
    return base + src[ip], ip + 1


def lzo1x_decompress(src: bytes, dst_len: int) -> bytes:
    """Decompress one LZO1X block that must produce exactly ``dst_len`` bytes.

    The instruction set follows the LZO1X stream format: the first byte may
    open with a literal run, then each instruction is a literal run or a
    match (M1..M4 by its top bits) followed by 0-3 literals taken from its
    low two bits; an M4 match of distance 16384 ends the block.  Every
    distance, length and input position is checked.
    """
    out = bytearray()
    n = len(src)
    ip = 0
    # state: literals copied by the previous instruction (4 = four or more).
    state = 0
    try:
        if n and src[0] > 17:
            t = src[0] - 17
            ip = 1
            if ip + t > n or t > dst_len:
                raise LzoError(f"literal run of {t} bytes overruns the block", offset=0)
            out += src[ip : ip + t]
            ip += t
            state = 4 if t >= 4 else t
        while True:
            t = src[ip]
            ip += 1
            if t < 16:
                if state == 0:
                    if t == 0:
                        t, ip = _long_count(src, ip, 15)
                    t += 3
                    if ip + t > n or len(out) + t > dst_len:
                        raise LzoError(f"literal run of {t} bytes overruns the block", offset=ip)
                    out += src[ip : ip + t]
                    ip += t
                    state = 4
                    continue
                if state < 4:
                    dist = (src[ip] << 2) + (t >> 2) + 1
                    length = 2
                else:
                    dist = (src[ip] << 2) + (t >> 2) + 2049
                    length = 3
                ip += 1
                s = t & 3
            elif t >= 64:
                dist = (src[ip] << 3) + ((t >> 2) & 7) + 1
                ip += 1
                length = (3 + ((t >> 5) & 1)) if t < 128 else (5 + ((t >> 5) & 3))
                s = t & 3
            elif t >= 32:
                length = t & 31
                if length == 0:
                    length, ip = _long_count(src, ip, 31)
                length += 2
                d = src[ip] | (src[ip + 1] << 8)
                ip += 2
                dist = (d >> 2) + 1
                s = d & 3
            else:
                length = t & 7
                if length == 0:
                    length, ip = _long_count(src, ip, 7)
                length += 2
                d = src[ip] | (src[ip + 1] << 8)
                ip += 2
                dist = 16384 + ((t & 8) << 11) + (d >> 2)
                if dist == 16384:
                    break
                s = d & 3
            have = len(out)
            if dist > have:
                raise LzoError(
                    f"match distance {dist} reaches before the start of the block "
                    f"({have} bytes decoded)",
                    offset=ip,
                )
            if have + length + s > dst_len:
                raise LzoError(
                    f"match of {length} bytes overruns the {dst_len}-byte block", offset=ip
                )
            start = have - dist
            if dist >= length:
                out += out[start : start + length]
            else:
                # Overlapping copy: the match repeats the last `dist` bytes.
                unit = out[start:]
                out += (unit * (length // dist + 1))[:length]
            if s:
                if ip + s > n:
                    raise LzoError("block ends inside trailing literals", offset=ip)
                out += src[ip : ip + s]
                ip += s
            state = s
    except IndexError:
        raise LzoError(f"LZO1X block of {n} bytes ends before its end marker", offset=n) from None
    if len(out) != dst_len:
        raise LzoError(
            f"block decompresses to {len(out)} bytes", offset=ip, expected=f"{dst_len} bytes"
        )
    return bytes(out)


class LzopReader(io.RawIOBase):
    """Read the decompressed contents of an lzop file from ``fileobj``.

    Checksums (Adler-32, CRC-32) of the header and of every block are
    verified when the file has them.  Errors are :class:`ContainerError`
    whose offset counts bytes of the lzop file.
    """

    def __init__(self, fileobj: BinaryIO | io.RawIOBase) -> None:
        super().__init__()
        self._f = fileobj
        self._in = 0
        self._buf = b""
        self._bpos = 0
        self._eof = False
        self.members = 0
        self.method = ""
        self._flags = 0
        self._read_header(self._take(len(MAGIC), "lzop magic"))

    # -- input ------------------------------------------------------------
    def _raw(self, n: int) -> bytes:
        data = read_full(self._f, n)
        self._in += len(data)
        return data

    def _take(self, n: int, what: str) -> bytes:
        at = self._in
        data = self._raw(n)
        if len(data) != n:
            raise missing(what, n, len(data), at, where="lzop data")
        return data

    def _u32(self, what: str) -> int:
        return _U32.unpack(self._take(4, what))[0]

    # -- header ---------------------------------------------------------
    def _read_header(self, magic: bytes) -> None:
        start = self._in - len(magic)
        if magic != MAGIC:
            raise ContainerError(
                f"not an lzop file: magic {magic.hex()}", offset=start, expected=MAGIC.hex()
            )
        at = self._in
        hdr = bytearray()

        def field(n: int, what: str = "lzop header") -> bytes:
            data = self._take(n, what)
            hdr.extend(data)
            return data

        version = int.from_bytes(field(2), "big")
        field(2)  # the LZO library version
        if version < 0x0900:
            raise ContainerError(
                f"lzop format version {version:#x} is too old",
                offset=at,
                expected="0x0900 or later",
            )
        # Format 0.94 added version_needed_to_extract, level and mtime_high.
        new_fields = version >= 0x0940
        if new_fields:
            needed = int.from_bytes(field(2), "big")
            if needed > LZOP_FORMAT:
                raise ContainerError(
                    f"lzop data needs lzop format {needed:#x} to extract",
                    offset=at + 4,
                    expected=f"at most {LZOP_FORMAT:#x}",
                )
        method = field(1)[0]
        if new_fields:
            field(1)  # the compression level
        flags = _U32.unpack(field(4))[0]
        if method not in LZO1X_METHODS:
            raise ContainerError(
                f"lzop method {method} is not supported",
                offset=at,
                expected="an LZO1X method (1, 2 or 3)",
            )
        if flags & F_RESERVED:
            raise ContainerError(
                f"lzop header has unknown flags {flags & F_RESERVED:#x}", offset=at
            )
        if flags & F_MULTIPART:
            raise ContainerError("multi-part lzop files are not supported", offset=at)
        if flags & F_H_FILTER:
            filt = _U32.unpack(field(4))[0]
            raise ContainerError(f"lzop filter {filt} is not supported", offset=at)
        field(12 if new_fields else 8)  # mode, mtime_low[, mtime_high]
        name_len = field(1)[0]
        field(name_len, "lzop file name")
        check_at = self._in
        stored = self._u32("lzop header checksum")
        crc = bool(flags & F_H_CRC32)
        actual = zlib.crc32(hdr) if crc else zlib.adler32(hdr)
        if stored != actual:
            raise ContainerError(
                f"lzop header checksum {stored:#010x} does not match the header",
                offset=check_at,
                expected=f"{actual:#010x} ({'CRC-32' if crc else 'Adler-32'})",
            )
        if flags & F_H_EXTRA_FIELD:
            len_at = self._in
            raw_len = self._take(4, "lzop extra field length")
            extra_len = _U32.unpack(raw_len)[0]
            if extra_len > MAX_EXTRA_FIELD:
                raise ContainerError(
                    f"lzop extra field of {extra_len} bytes",
                    offset=len_at,
                    expected=f"at most {MAX_EXTRA_FIELD}",
                )
            extra = raw_len + self._take(extra_len, "lzop extra field")
            check_at = self._in
            stored = self._u32("lzop extra field checksum")
            actual = zlib.crc32(extra) if crc else zlib.adler32(extra)
            if stored != actual:
                raise ContainerError(
                    f"lzop extra field checksum {stored:#010x} does not match",
                    offset=check_at,
                    expected=f"{actual:#010x}",
                )
        self._flags = flags
        self.method = LZO1X_METHODS[method]
        self.members += 1

    # -- blocks ---------------------------------------------------------
    def _next_block(self) -> bool:
        """Decode the next block into the buffer; False at the end of the data."""
        while True:
            at = self._in
            dst_len = self._u32("lzop block header (the end marker is missing)")
            if dst_len == 0:
                head = self._raw(len(MAGIC))
                if head == MAGIC:
                    self._read_header(head)
                    continue
                # Trailing bytes that are not another lzop file: lzop warns, libvirt
                # passes --ignore-warn, the data is complete.
                self._eof = True
                return False
            src_len = self._u32("lzop block header")
            if dst_len > MAX_BLOCK_SIZE:
                raise ContainerError(
                    f"lzop block claims {dst_len} uncompressed bytes",
                    offset=at,
                    expected=f"at most {MAX_BLOCK_SIZE} (lzop's largest block)",
                )
            if src_len == 0 or src_len > dst_len:
                raise ContainerError(
                    f"lzop block of {src_len} compressed bytes for {dst_len} bytes",
                    offset=at + 4,
                    expected=f"1..{dst_len} compressed bytes",
                )
            flags = self._flags
            want: list[tuple[str, int, bool, int]] = []
            for flag, name, compressed in (
                (F_ADLER32_D, "Adler-32", False),
                (F_CRC32_D, "CRC-32", False),
                (F_ADLER32_C, "Adler-32", True),
                (F_CRC32_C, "CRC-32", True),
            ):
                if flags & flag and (not compressed or src_len < dst_len):
                    where = self._in
                    want.append((name, self._u32(f"lzop block {name}"), compressed, where))
            data_at = self._in
            data = self._take(src_len, "lzop block data")
            for name, stored, compressed, where in want:
                if compressed:
                    _check(name, stored, data, where, "compressed")
            if src_len < dst_len:
                try:
                    out = lzo1x_decompress(data, dst_len)
                except LzoError as e:
                    raise ContainerError(
                        f"lzop block at {at:#x}: {e.message} (byte {e.offset} of its data)",
                        offset=data_at + (e.offset or 0),
                        expected=e.expected,
                    ) from None
            else:
                out = data
            for name, stored, compressed, where in want:
                if not compressed:
                    _check(name, stored, out, where, "decompressed")
            self._buf = out
            self._bpos = 0
            return True

    # -- io.RawIOBase -------------------------------------------------------
    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._bpos >= len(self._buf):
            if self._eof or not self._next_block():
                return 0
        n = min(len(b), len(self._buf) - self._bpos)
        b[:n] = self._buf[self._bpos : self._bpos + n]
        self._bpos += n
        return n

    def close(self) -> None:
        if not self.closed:
            close = getattr(self._f, "close", None)
            if close is not None:
                close()
        super().close()


def _check(name: str, stored: int, data: bytes, where: int, what: str) -> None:
    actual = zlib.crc32(data) if name == "CRC-32" else zlib.adler32(data)
    if stored != actual:
        raise ContainerError(
            f"lzop block {name} {stored:#010x} does not match the {what} data",
            offset=where,
            expected=f"{actual:#010x}",
        )
