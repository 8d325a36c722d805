"""An independent reader of makedumpfile's kdump-compressed files, for the tests.

Written from makedumpfile's ``diskdump_mod.h`` and ``IMPLEMENTATION`` notes
(and crash's ``diskdump.c`` reading order), not from qevm's writer: the
flattened form is first put back together into a plain file (as
``makedumpfile -R`` does), then the header, sub-header, bitmaps and page
descriptors are parsed and pages decompressed with zlib, zstandard, and
liblzo2 / libsnappy through ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import zlib
from dataclasses import dataclass


def unflatten(src: str, dst: str) -> bool:
    """Rebuild a flattened dump into ``dst``; False if ``src`` is not flattened."""
    with open(src, "rb") as f:
        head = f.read(4096)
        if not head.startswith(b"makedumpfile\0"):
            return False
        sig_type, version = struct.unpack_from(">qq", head, 16)
        assert (sig_type, version) == (1, 1), (sig_type, version)
        with open(dst, "wb") as out:
            while True:
                offset, size = struct.unpack(">qq", f.read(16))
                if offset == -1 and size == -1:
                    break
                assert offset >= 0 and size >= 0
                out.seek(offset)
                out.write(f.read(size))
    return True


def _lib(name: str) -> ctypes.CDLL:
    path = ctypes.util.find_library(name)
    assert path, f"lib{name} missing"
    return ctypes.CDLL(path)


def decompress(flags: int, data: bytes, page_size: int) -> bytes:
    if flags & 0x1:
        return zlib.decompress(data)
    if flags & 0x20:
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data, max_output_size=page_size)
    out = ctypes.create_string_buffer(page_size)
    size = ctypes.c_size_t(page_size)
    if flags & 0x2:
        lib = _lib("lzo2")
        rc = lib.lzo1x_decompress_safe(
            data, ctypes.c_size_t(len(data)), out, ctypes.byref(size), None
        )
    elif flags & 0x4:
        lib = _lib("snappy")
        rc = lib.snappy_uncompress(data, ctypes.c_size_t(len(data)), out, ctypes.byref(size))
    else:
        return data
    assert rc == 0, f"decompression failed ({flags:#x}, rc {rc})"
    return out.raw[: size.value]


@dataclass
class Kdump:
    path: str
    endian: str
    header_version: int
    machine: str
    release: str
    sysname: str
    status: int
    block_size: int
    sub_hdr_size: int
    bitmap_blocks: int
    max_mapnr: int
    nr_cpus: int
    phys_base: int
    dump_level: int
    vmcoreinfo: bytes
    notes: bytes
    bitmap1: bytes
    bitmap2: bytes

    def dumpable(self, pfn: int) -> bool:
        return bool(self.bitmap2[pfn >> 3] >> (pfn & 7) & 1)

    def pages(self):
        """``(pfn, bytes, descriptor flags, data offset)`` of every dumped page, in pfn order."""
        ps = self.block_size
        desc = (1 + self.sub_hdr_size + self.bitmap_blocks) * ps
        with open(self.path, "rb") as f:
            fd = f.fileno()
            for pfn in range(self.max_mapnr):
                if not self.dumpable(pfn):
                    continue
                off, size, flags, _ = struct.unpack(self.endian + "QIIQ", os.pread(fd, 24, desc))
                desc += 24
                data = os.pread(fd, size, off)
                page = decompress(flags, data, ps) if flags else data
                assert len(page) == ps, (pfn, len(page), flags)
                yield pfn, page, flags, off


def read(path: str) -> Kdump:
    """Parse a (plain, not flattened) kdump file's headers and bitmaps."""
    with open(path, "rb") as f:
        head = f.read(4096)
        assert head[:8] == b"KDUMP   ", head[:8]
        # the header version is small: it gives away the byte order
        e = "<" if struct.unpack_from("<I", head, 8)[0] < 0x10000 else ">"
        (version,) = struct.unpack_from(e + "I", head, 8)
        uts = head[12 : 12 + 6 * 65]
        release = uts[130:195].split(b"\0")[0].decode()
        sysname = uts[0:65].split(b"\0")[0].decode()
        machine = uts[260:325].split(b"\0")[0].decode()
        # struct timeval is 8-aligned after the 390-byte utsname: 12 + 390 -> 408
        fields = struct.unpack_from(e + "IiiIIIIIIi", head, 424)
        status, block_size, sub_hdr_size, bitmap_blocks, max32 = fields[:5]
        nr_cpus = fields[9]
        f.seek(block_size)
        sub = f.read(104)
        phys_base, dump_level, _split = struct.unpack_from(e + "Qii", sub, 0)
        off_vmci, size_vmci, off_note, size_note = struct.unpack_from(e + "qQqQ", sub, 32)
        max_mapnr = struct.unpack_from(e + "Q", sub, 96)[0] if version >= 6 else max32
        f.seek(off_vmci)
        vmci = f.read(size_vmci) if size_vmci else b""
        f.seek(off_note)
        notes = f.read(size_note)
        half = bitmap_blocks // 2 * block_size
        f.seek((1 + sub_hdr_size) * block_size)
        bitmap1 = f.read(half)
        bitmap2 = f.read(half)
    return Kdump(
        path, e, version, machine, release, sysname, status, block_size, sub_hdr_size,
        bitmap_blocks, max_mapnr, nr_cpus, phys_base, dump_level, vmci, notes, bitmap1, bitmap2,
    )  # fmt: skip
