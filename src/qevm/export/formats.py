"""The memory image formats qevm writes, by name (light: the command line's choices)."""

from __future__ import annotations

#: makedumpfile's kdump-compressed formats, as ``dump-guest-memory`` names them:
#: format -> (page compression, flattened); ``kdump-raw-*`` are not flattened.
KDUMP_FORMATS = {
    f"kdump{'-raw' if raw else ''}-{m}": (m, not raw)
    for raw in (False, True)
    for m in ("zlib", "lzo", "snappy", "zstd")
}
#: Every memory image format: an ELF core, a flat raw image, the kdump formats.
MEMORY_FORMATS = ("elf", "raw", *KDUMP_FORMATS)
