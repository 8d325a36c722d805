"""qevm: decode QEMU migration streams.

>>> import qevm
>>> with qevm.open("vm.mig") as mig:
...     for dev in mig.devices("cpu*"):
...         print(dev.name, dev.state.get("env.eip"))

:func:`open` reads the whole stream once (RAM pages are not copied, only
located) and returns a :class:`~qevm.migration.Migration`.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable
from typing import Any, BinaryIO

from .errors import (
    ContainerError,
    DescriptionError,
    FormatError,
    QevmError,
    TruncatedError,
    UnsupportedError,
    UsageError,
)
from .migration import Device, Migration
from .source import Source, open_source
from .stream import ParseOptions, locate_description, parse_stream
from .vmstate.desc import Description, parse_description

__version__ = "0.1.0"


def load_description(path: str | os.PathLike[str]) -> Description:
    """A description from a JSON file (``qevm desc`` output) or from another stream."""
    with builtins.open(path, "rb") as f:
        head = f.read(1)
        if head == b"{":  # (read once: it can be a pipe)
            return parse_description(head + f.read())
    with open_source(path) as src:
        desc = locate_description(src)
        if desc is None:
            parsed = parse_stream(src, ParseOptions(decode_devices=False))
            desc = parsed.description
    if desc is None:
        raise DescriptionError(f"{os.fspath(path)} has no VM description")
    return desc


def open(  # noqa: A001 - the natural name, like io.open / tarfile.open
    source: str | os.PathLike[str] | BinaryIO | Source,
    *,
    desc: Description | str | os.PathLike[str] | None = None,
    format: str = "auto",
    snapshot: str | None = None,
    index_ram: bool = False,
    decode_devices: bool = True,
    ram_consumer: Callable[..., Any] | None = None,
    channels: list[str | os.PathLike[str]] | None = None,
    progress: Callable[[int], None] | None = None,
    strict: bool = True,
    track_rounds: bool = False,
) -> Migration:
    """Read a migration stream.

    ``source`` is a path, ``"-"`` (standard input) or a binary file object;
    compressed files, libvirt save images and qcow2 snapshots (``snapshot``)
    are unwrapped.  ``desc`` supplies the JSON description for streams without
    one.  ``index_ram`` builds the page index needed to read RAM afterwards.
    ``channels`` are the recorded extra connections of a live migration
    (multifd channels, the postcopy-preempt channel) whose pages complete RAM.
    ``track_rounds`` (with ``index_ram``) also keeps, per page, the round of
    the migration that last wrote it (``mig.page_index.rounds()``).

    ``strict`` (the default) raises the first error in the stream.  With
    ``strict=False`` every record that can be read is: a section that cannot
    be read keeps its error (``Device.error``), reading goes on at the next
    record, and ``Migration.errors`` lists the errors (empty: all was read).
    Errors before the first record (not a stream, a bad container) still raise.
    """
    if desc is not None and not isinstance(desc, Description):
        desc = load_description(desc)
    src = (
        source
        if isinstance(source, Source)
        else open_source(source, format=format, snapshot=snapshot)
    )
    try:
        page_size = None
        early = desc
        if early is None and src.seekable:
            early = locate_description(src)
        if early is not None:
            page_size = early.page_size
        if channels and not src.seekable:
            raise UsageError("--channel needs the main stream in a file, not a pipe")
        if ram_consumer is None and (index_ram or channels):
            from .sections.ram.index import PageIndex

            rounds = bool(channels) or track_rounds

            def ram_consumer(ctx: Any, ps: int) -> PageIndex:
                index = PageIndex(ps, [src])
                if rounds:
                    index.track_epochs()
                return index

        options = ParseOptions(
            description=desc,
            own_description=early if desc is None else None,
            page_size=page_size,
            ram_consumer=ram_consumer,
            progress=progress,
            decode_devices=decode_devices,
            strict=strict,
        )
        mig = Migration(parse_stream(src, options))
    except BaseException:
        src.close()
        raise
    try:
        for path in channels or ():
            mig.add_channel(path)
    except BaseException:
        mig.close()
        raise
    return mig


__all__ = [
    "open",
    "load_description",
    "Migration",
    "Device",
    "Description",
    "QevmError",
    "FormatError",
    "TruncatedError",
    "UnsupportedError",
    "DescriptionError",
    "ContainerError",
    "UsageError",
]
