"""Outputs built from an open stream: RAM as files, memory images, the kernel's VMCOREINFO.

Everything here takes an open :class:`~qevm.migration.Migration`; nothing
opens a file or a container.  Work that must see RAM as the stream is read
(a pipe: its bytes cannot be read again) says so by giving a page consumer
to open the stream with::

    import qevm
    from qevm.export import BlockFiles, StreamedImage, extract, write_memory

    with qevm.open("vm.mig", index_ram=True) as mig:      # a file: through the page index
        extract(mig, "out")                               # blocks, desc.json, state.json
        write_memory(mig, "vm.elf")                       # ELF core with CPU notes
        write_memory(mig, "vm.kdump", "kdump-zlib")

    with BlockFiles("out") as files:                      # one pass, a pipe too
        with qevm.open("-", ram_consumer=files.consumer) as mig:
            files.finish(mig)

    with StreamedImage("vm.elf", "elf") as image:         # a pipe's blocks are staged
        with qevm.open("-", ram_consumer=image.consumer) as mig:
            image.finish(mig)

Modules: :mod:`.blockfiles` (``extract``: block files), :mod:`.memory` (images through the
page index), :mod:`.staging` (images of a stream read once), :mod:`.elf`
(the ELF headers and layout), :mod:`.notes` (CPU notes), :mod:`.kdump` and
:mod:`.compressors` (makedumpfile's format), :mod:`.vmcoreinfo` (the
kernel's VMCOREINFO recovered and checked), :mod:`.scan` (searching RAM),
:mod:`.formats` (the image formats by name).  The names below are loaded
on first use, so ``import qevm.export`` costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

from .formats import KDUMP_FORMATS, MEMORY_FORMATS

#: public name -> the module defining it
_API = {
    "BlockFiles": "blockfiles",
    "Extracted": "blockfiles",
    "extract": "blockfiles",
    "ImageResult": "memory",
    "plan_elf": "memory",
    "write_memory": "memory",
    "StagedBlocks": "staging",
    "StreamedImage": "staging",
}

__all__ = ["KDUMP_FORMATS", "MEMORY_FORMATS", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
