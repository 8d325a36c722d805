"""A streaming input copied to a file, for work that goes back to bytes that have gone by."""

from __future__ import annotations

import os
import tempfile

from ..fileio import is_zero
from .base import CHUNK, FileSource, Source


def spool(src: Source, tmpdir: str | None = None) -> FileSource:
    """A seekable copy of a streaming source, at the same offsets (zeros as holes).

    Writing needs to go back to the input (RAM pages are located, not kept),
    so a pipe or a decompressor is first copied to a temporary file.
    """
    fd, path = tempfile.mkstemp(prefix="qevm-spool-", dir=tmpdir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.seek(src.start)
            while True:
                data = src.read(CHUNK)
                if not data:
                    break
                if is_zero(data):
                    f.seek(len(data), 1)
                else:
                    f.write(data)
            f.truncate()
        out = FileSource(path, start=src.start)
    finally:
        os.unlink(path)  # the open mapping keeps the data until closed
    out.name = src.name
    out.container = src.container
    out.info = dict(src.info)
    out.spooled = True  # type: ignore[attr-defined]
    return out
