"""Byte sources and containers: files, pipes, compressed files, libvirt, qcow2.

:func:`open_source` turns what the user named (a path, ``-``, a FIFO, a
file object) into a :class:`~qevm.source.base.Source` positioned at the QEMU
stream, unwrapping containers detected by their content: whole-file
compression, libvirt save images and qcow2 internal snapshots.  Containers
stack (a zstd stream inside a libvirt image inside an xz file).
"""

from __future__ import annotations

import os
import sys
from typing import BinaryIO

from ..errors import ContainerError, UsageError
from ..format import FILE_MAGIC
from . import libvirt, qcow2
from .base import FileSource, Source, StreamSource, is_regular_file
from .compress import COMPRESSIONS, decompressing, detect_compression

QEVM_MAGIC = FILE_MAGIC.to_bytes(4, "big")
FORMATS = ("auto", "stream", "libvirt", "qcow2") + tuple(COMPRESSIONS)


def open_source(
    spec: str | os.PathLike[str] | BinaryIO,
    *,
    format: str = "auto",
    snapshot: str | None = None,
) -> Source:
    """Open ``spec`` and unwrap containers until the QEMU stream.

    ``spec`` is a path, ``"-"`` for standard input, or a binary file object.
    ``format`` forces the outermost container (``auto`` detects it).
    ``snapshot`` selects a qcow2 internal snapshot by name or id.
    """
    if format not in FORMATS:
        raise UsageError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    src = _open_outer(spec)
    try:
        return _unwrap(src, format, snapshot)
    except BaseException:
        src.close()
        raise


def _open_outer(spec: str | os.PathLike[str] | BinaryIO) -> Source:
    if isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
        if path == "-":
            return StreamSource(sys.stdin.buffer, "<stdin>")
        if not os.path.exists(path):
            raise UsageError(f"{path}: no such file")
        if os.path.isdir(path):
            raise UsageError(f"{path}: is a directory")
        if is_regular_file(path):
            try:
                return FileSource(path)
            except OSError as e:
                raise UsageError(f"{path}: {e.strerror}") from None
        try:
            return StreamSource(open(path, "rb"), path)
        except OSError as e:
            raise UsageError(f"{path}: {e.strerror}") from None
    name = getattr(spec, "name", "<file object>")
    return StreamSource(spec, str(name))


def _head(src: Source, n: int = 64) -> bytes:
    if src.seekable:
        size = src.size or 0
        return bytes(src.read_at(src.start, max(0, min(n, size - src.start))))
    data = src.read(n)
    src.unread(data)  # type: ignore[attr-defined]
    return data


def _unwrap(src: Source, format: str, snapshot: str | None, depth: int = 0) -> Source:
    if depth > 8:
        raise ContainerError("containers nested more than 8 deep", offset=0)
    head = _head(src)
    kind = format if format != "auto" else _detect(head)
    if snapshot is not None and kind != "qcow2":
        raise UsageError("--snapshot needs a qcow2 image")
    if kind == "stream":
        return src
    if kind in COMPRESSIONS:
        inner = decompressing(src, kind)
        return _unwrap(inner, "auto", snapshot, depth + 1)
    if kind == "libvirt":
        return _unwrap(libvirt.open_libvirt(src), "stream", None, depth + 1)
    if kind == "qcow2":
        return qcow2.open_snapshot(src, snapshot)
    # Unknown content: let the stream parser say what is wrong with it.
    return src


def _detect(head: bytes) -> str:
    if head.startswith(QEVM_MAGIC):
        return "stream"
    if head.startswith((libvirt.MAGIC_COMPLETE, libvirt.MAGIC_PARTIAL)):
        return "libvirt"
    if head.startswith(qcow2.MAGIC):
        return "qcow2"
    comp = detect_compression(head)
    return comp or "stream"


__all__ = ["Source", "FileSource", "StreamSource", "open_source", "FORMATS"]
