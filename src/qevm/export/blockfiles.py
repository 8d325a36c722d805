"""RAM blocks as files with desc.json and state.json, as ``analyze-migration.py -x`` writes them.

:class:`BlockFiles` writes one sparse file per RAM block under a directory,
at the paths the script uses (``pc.ram``, ``0000:00:02.0/vga.vram``,
``rom@etc/acpi/tables``; a name that would leave the directory is rewritten,
:func:`~qevm.ramio.block_paths`), zero pages left as holes.  Two ways:

* in the pass that reads the stream, a pipe too: open it with the files'
  page consumer, and pages are written where they belong as they pass (a
  page sent again overwrites, one sent later as zero is zeroed)::

      with BlockFiles("out") as files:
          with qevm.open("vm.mig", ram_consumer=files.consumer) as mig:
              result = files.finish(mig)

* from the page index of a stream opened with ``index_ram=True``, which the
  pages of extra channels (multifd) need: their order is known only from the
  main stream's sync points.  :func:`extract` does that for an open stream.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..ramio import Piece, Placement, block_paths, copy_block_range, create_block_file
from ..ramsink import StreamingSink
from ..render import compat, jsonout
from ..writebehind import WriteBehind

if TYPE_CHECKING:
    from ..migration import Migration
    from ..sections.ram.blocks import RamBlock


@dataclass
class Extracted:
    """What :meth:`BlockFiles.finish` wrote."""

    directory: str
    #: block name -> its file, relative to the directory (the blocks selected)
    paths: dict[str, str] = field(default_factory=dict)
    #: block name -> why its file's path is not its name
    notes: dict[str, str] = field(default_factory=dict)
    #: block name -> pages no record gave (they read as zeros; multifd channels carry them)
    missing: dict[str, int] = field(default_factory=dict)
    #: ``desc.json`` (when the stream has a description) and ``state.json``
    documents: list[str] = field(default_factory=list)


class BlockFiles:
    """The RAM blocks of one stream written as files under ``directory``.

    ``blocks`` are name globs (None: every block); ``check_path`` is called
    with each file's path before it is made (to refuse one that is an input).
    Use it as a context manager (files are closed, a failed pass stops writing).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        blocks: list[str] | None = None,
        *,
        check_path: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = os.fspath(directory)
        self.blocks = blocks
        self._check = check_path or (lambda path: None)
        os.makedirs(self.directory, exist_ok=True)
        self.result = Extracted(self.directory)
        self._fds: dict[str, int] = {}
        self._sink: StreamingSink | None = None

    def selected(self, name: str) -> bool:
        """Whether block ``name`` is one to write."""
        return not self.blocks or any(fnmatch.fnmatchcase(name, g) for g in self.blocks)

    def place(self, block: RamBlock) -> Placement | None:
        """The file of ``block`` (made on first use), or None when it is not selected."""
        fd = self._fds.get(block.name)
        if fd is None:
            if not self.selected(block.name):
                return None
            paths = self.result.paths
            rel, note = block_paths([*paths, block.name])[block.name]
            paths[block.name] = rel
            if note:
                self.result.notes[block.name] = note
            self._check(os.path.join(self.directory, rel))
            fd = self._fds[block.name] = create_block_file(self.directory, rel, block.used_length)
        return Placement([Piece(0, block.used_length, fd, 0)])

    def consumer(self, ctx: Any, page_size: int) -> StreamingSink:
        """The page consumer for :func:`qevm.open` (``ram_consumer=files.consumer``)."""
        source = ctx.r.source  # mapped-ram pages are copied from a file's own bytes
        self._sink = StreamingSink(page_size, self.place, source if source.seekable else None)
        return self._sink

    def finish(
        self, mig: Migration, progress: Callable[[int, int], None] | None = None
    ) -> Extracted:
        """After ``mig`` was read: the blocks complete in their files (copied from its page
        index unless they were written as it was read), then ``desc.json`` and
        ``state.json``.  ``progress(done, total)`` follows a copy from the index."""
        # Our consumer is made even when no page reached the main stream (all on channels).
        consumer = mig.page_consumer()
        if self._sink is not None:
            self._sink.close()
        elif consumer is not None:
            self._copy_from_index(mig, progress)
        for b in mig.ram_blocks:
            self.place(b)  # a block no page of the main stream reached: zeros
        self.result.documents = write_documents(mig, self.directory)
        try:
            missing = mig.missing_pages()
        except UsageError:  # no block was written
            missing = {}
        self.result.missing = {k: n for k, n in missing.items() if k in self.result.paths}
        return self.result

    def _copy_from_index(self, mig: Migration, progress: Callable[[int, int], None] | None) -> None:
        index = mig.page_index
        blocks = [b for b in mig.ram_blocks if self.selected(b.name)]
        total = sum(b.used_length for b in blocks)
        done = 0
        wb = WriteBehind()
        try:
            for b in blocks:
                fd = self.place(b).pieces[0].fd  # type: ignore[union-attr]
                copy_block_range(index, b.name, 0, b.used_length, fd, 0, wb)
                done += b.used_length
                if progress is not None:
                    progress(done, total)
            wb.close()
        finally:
            wb.abort()

    def close(self) -> None:
        """Stop writing (nothing is left to write after :meth:`finish`) and close the files."""
        if self._sink is not None:
            self._sink.abort()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> BlockFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_documents(mig: Migration, directory: str) -> list[str]:
    """``desc.json`` (when the stream has a description) and ``state.json`` in ``directory``:
    the same text ``analyze-migration.py -x`` writes (no final newline).  Their names."""
    docs = []
    if mig.description is not None:
        docs.append("desc.json")
        with open(os.path.join(directory, "desc.json"), "w") as f:
            f.write(jsonout.dumps(compat.desc_compat(mig), 4))
    docs.append("state.json")
    with open(os.path.join(directory, "state.json"), "w") as f:
        f.write(jsonout.dumps(compat.state_compat(mig), 4))
    return docs


def extract(
    mig: Migration,
    directory: str | os.PathLike[str],
    blocks: list[str] | None = None,
    *,
    check_path: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Extracted:
    """Write the RAM blocks of ``mig`` (opened with ``index_ram=True``) as files under
    ``directory``, with ``desc.json`` and ``state.json`` (see :class:`BlockFiles`)."""
    with BlockFiles(directory, blocks, check_path=check_path) as files:
        return files.finish(mig, progress)
