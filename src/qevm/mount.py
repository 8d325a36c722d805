"""``qevm mount``: a saved VM's memory and state as a read-only FUSE file system.

Served from the page index, nothing converted first::

    memory.elf    exactly the bytes ``qevm memory -o F`` writes (headers, CPU
                  notes, VMCOREINFO, one area per RAM block)
    memory.raw    flat image, file offset = guest-physical address
    ram/<block>   each RAM block (the paths ``qevm extract`` uses)
    devices.json  ``qevm state --json``
    cpus.json     ``qevm cpu --json``

Every file is a list of extents (a byte string, or a range of a RAM block);
a read finds the extents it overlaps by bisection and copies them with
:func:`qevm.export.ramread.read_range`, so random reads of a multi-GiB image
cost what they read.  Inputs that cannot be read at random (a pipe, a
compressed file) are first copied to an unlinked temporary file.
"""

from __future__ import annotations

import bisect
import errno
import io
import json
import os
import stat
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import QevmError
from .export.ramread import read_range

if TYPE_CHECKING:
    from .migration import Migration


@dataclass(frozen=True)
class Extent:
    """File bytes ``[start, start + length)``: ``data`` or block ``block`` from ``offset``."""

    start: int
    length: int
    data: bytes | None = None
    block: str | None = None
    offset: int = 0


class VirtualFile:
    """A read-only file made of extents (zeros between them)."""

    def __init__(self, size: int, extents: list[Extent], index: Any = None) -> None:
        self.size = size
        self.extents = sorted((e for e in extents if e.length > 0), key=lambda e: e.start)
        self._starts = [e.start for e in self.extents]
        self._index = index

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset`` (fewer at the end of the file)."""
        if offset >= self.size or size <= 0:
            return b""
        end = min(offset + size, self.size)
        out = bytearray(end - offset)
        i = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        while i < len(self.extents) and self.extents[i].start < end:
            e = self.extents[i]
            lo, hi = max(e.start, offset), min(e.start + e.length, end)
            if lo < hi:
                if e.data is not None:
                    piece: bytes = e.data[lo - e.start : hi - e.start]
                else:
                    piece = read_range(self._index, e.block, e.offset + lo - e.start, hi - lo)
                out[lo - offset : hi - offset] = piece
            i += 1
        return bytes(out)


def build_files(mig: Migration, overrides: Any = None, vmcoreinfo: bool = True) -> dict[str, Any]:
    """Path (``/``-separated, relative) -> :class:`VirtualFile` of everything served."""
    from .cli.inspect import state_json
    from .export.scan import index_scanner
    from .ramio import block_paths
    from .render import jsonout
    from .views.core import core_target, elf_plan
    from .views.cpu import cpus
    from .views.memmap import layout

    index = mig.page_index
    mm = layout(mig, overrides)
    files: dict[str, Any] = {}

    def read(block: str, offset: int, length: int) -> bytes:
        return read_range(index, block, offset, length)

    target, _, _ = core_target(mig, mm, read, index_scanner(index), vmcoreinfo)
    plan = elf_plan(mig, mm.ranges, target)
    elf = [
        Extent(0, len(plan.headers), plan.headers),
        Extent(plan.note_offset, len(plan.notes), plan.notes),
    ]
    for b, spans in plan.extents.items():
        for s, e in spans:
            elf.append(Extent(plan.areas[b] + s, e - s, block=b, offset=s))
    files["memory.elf"] = VirtualFile(plan.size, elf, index)
    raw = [Extent(r.gpa, r.size, block=r.block, offset=r.offset) for r in mm.ranges]
    files["memory.raw"] = VirtualFile(max((r.end for r in mm.ranges), default=0), raw, index)
    sizes = {b.name: b.used_length for b in mig.ram_blocks if b.name in index.loc}
    for name, (rel, _) in block_paths(sizes).items():
        files[f"ram/{rel}"] = VirtualFile(sizes[name], [Extent(0, sizes[name], block=name)], index)
    for path, obj in (
        ("devices.json", lambda: state_json(mig, None)),
        ("cpus.json", lambda: {"cpus": [c.to_json() for c in cpus(mig)]}),
    ):
        try:
            text = io.StringIO()
            jsonout.dump(obj(), text, indent=2)
            data = (text.getvalue() + "\n").encode()
        except QevmError as e:  # a file that says why is better than none
            data = (json.dumps({"error": str(e)}) + "\n").encode()
        files[path] = VirtualFile(len(data), [Extent(0, len(data), data)])
    return files


class Tree:
    """The directory tree over :func:`build_files`' paths."""

    def __init__(self, files: dict[str, VirtualFile]) -> None:
        self.files = files
        self.dirs: dict[str, set[str]] = {"": set()}
        for path in files:
            parts = path.split("/")
            for i in range(len(parts)):
                parent = "/".join(parts[:i])
                self.dirs.setdefault(parent, set()).add(parts[i])
                if i < len(parts) - 1:
                    self.dirs.setdefault("/".join(parts[: i + 1]), set())
        self.mtime = time.time_ns()

    def lookup(self, path: str) -> VirtualFile | set[str] | None:
        key = path.strip("/")
        if key in self.files:
            return self.files[key]
        return self.dirs.get(key)


def _operations(tree: Tree) -> Any:
    import mfusepy

    class Operations(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True  # times in nanoseconds

        def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
            node = tree.lookup(path)
            if node is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
            base = {
                "st_uid": os.getuid(),
                "st_gid": os.getgid(),
                "st_atime": tree.mtime,
                "st_mtime": tree.mtime,
                "st_ctime": tree.mtime,
            }
            if isinstance(node, VirtualFile):
                return {
                    **base,
                    "st_mode": stat.S_IFREG | 0o444,
                    "st_nlink": 1,
                    "st_size": node.size,
                    "st_blocks": (node.size + 511) // 512,
                }
            return {**base, "st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}

        def readdir(self, path: str, fh: Any) -> list[str]:
            node = tree.lookup(path)
            if not isinstance(node, set):
                raise mfusepy.FuseOSError(errno.ENOTDIR)
            return [".", "..", *sorted(node)]

        def open(self, path: str, flags: int) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise mfusepy.FuseOSError(errno.EROFS)
            if not isinstance(tree.lookup(path), VirtualFile):
                raise mfusepy.FuseOSError(errno.ENOENT)
            return 0

        def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
            node = tree.lookup(path)
            if not isinstance(node, VirtualFile):
                raise mfusepy.FuseOSError(errno.ENOENT)
            return node.read(offset, size)

    return Operations()


def serve(tree: Tree, mountpoint: str) -> None:
    """Serve ``tree`` at ``mountpoint`` until it is unmounted (``fusermount -u``)."""
    import mfusepy

    mfusepy.FUSE(
        _operations(tree),
        mountpoint,
        foreground=True,
        nothreads=True,  # the page index's scratch pages are not thread-safe
        ro=True,
        fsname="qevm",
        subtype="qevm",
    )


def mount(tree: Tree, mountpoint: str, foreground: bool = False, timeout: float = 30) -> int | None:
    """Mount ``tree``; in the background return the serving process's pid once it is mounted."""
    if foreground:
        serve(tree, mountpoint)
        return None
    pid = os.fork()
    if pid == 0:  # the server: detached, quiet
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            serve(tree, mountpoint)
        finally:
            os._exit(0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mountpoint):
            return pid
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            raise OSError(f"the FUSE server exited ({status:#x}) before {mountpoint} was mounted")
        time.sleep(0.05)
    raise OSError(f"{mountpoint} was not mounted within {timeout:.0f} s")
