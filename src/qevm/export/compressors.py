"""Page compressors of makedumpfile's kdump format, from libraries already on the system.

zlib is Python's own; zstd is the ``zstandard`` package qevm depends on; LZO
(``lzo1x_1_compress``) and snappy (``snappy_compress``) are called in the
shared libraries QEMU itself links (``liblzo2``, ``libsnappy``) through
ctypes, so no extra Python package is needed; a format whose library is
missing is refused with the library's name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import zlib
from collections.abc import Callable

from ..errors import UsageError

#: page descriptor flags (makedumpfile's diskdump_mod.h)
DUMP_DH_COMPRESSED_ZLIB = 0x1
DUMP_DH_COMPRESSED_LZO = 0x2
DUMP_DH_COMPRESSED_SNAPPY = 0x4
DUMP_DH_COMPRESSED_ZSTD = 0x20

Compressor = Callable[[bytes], bytes]

_LZO1X_1_MEM = 16384 * 8  # LZO1X_1_MEM_COMPRESS on 64-bit hosts


def _zlib() -> Compressor:
    # QEMU's dump uses compress2(..., Z_BEST_SPEED)
    return lambda page: zlib.compress(page, 1)


def _zstd() -> Compressor:
    import zstandard

    # makedumpfile: ZSTD_compressCCtx(..., level 1), one frame per page
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=True)
    return cctx.compress


def _library(name: str) -> ctypes.CDLL:
    path = ctypes.util.find_library(name)
    if path is None:
        raise UsageError(f"lib{name} is not installed (needed for this kdump format)")
    return ctypes.CDLL(path)


def _lzo() -> Compressor:
    lib = _library("lzo2")
    if lib.__lzo_init_v2(0x20A0, 2, 4, 8, 4, 8, 8, 8, 8, 48) != 0:  # lzo_init(), LP64 sizes
        raise UsageError("liblzo2 failed to initialise")
    work = ctypes.create_string_buffer(_LZO1X_1_MEM)
    out = ctypes.create_string_buffer(1 << 17)
    out_len = ctypes.c_size_t()

    def compress(page: bytes) -> bytes:
        bound = len(page) + len(page) // 16 + 64 + 3
        if bound > len(out):
            raise ValueError("page too large for the LZO buffer")
        rc = lib.lzo1x_1_compress(
            page, ctypes.c_size_t(len(page)), out, ctypes.byref(out_len), work
        )
        if rc != 0:
            raise ValueError(f"lzo1x_1_compress failed ({rc})")
        return out.raw[: out_len.value]

    return compress


def _snappy() -> Compressor:
    lib = _library("snappy")
    lib.snappy_max_compressed_length.restype = ctypes.c_size_t
    out = ctypes.create_string_buffer(1 << 18)
    out_len = ctypes.c_size_t()

    def compress(page: bytes) -> bytes:
        out_len.value = len(out)
        rc = lib.snappy_compress(page, ctypes.c_size_t(len(page)), out, ctypes.byref(out_len))
        if rc != 0:
            raise ValueError(f"snappy_compress failed ({rc})")
        return out.raw[: out_len.value]

    return compress


#: method -> (descriptor flag, factory)
METHODS: dict[str, tuple[int, Callable[[], Compressor]]] = {
    "zlib": (DUMP_DH_COMPRESSED_ZLIB, _zlib),
    "lzo": (DUMP_DH_COMPRESSED_LZO, _lzo),
    "snappy": (DUMP_DH_COMPRESSED_SNAPPY, _snappy),
    "zstd": (DUMP_DH_COMPRESSED_ZSTD, _zstd),
}


def compressor(method: str) -> tuple[int, Compressor]:
    """The descriptor flag and page compressor of ``method`` (zlib, lzo, snappy, zstd)."""
    if method not in METHODS:
        raise UsageError(f"unknown kdump compression {method!r} ({', '.join(METHODS)})")
    flag, make = METHODS[method]
    return flag, make()
