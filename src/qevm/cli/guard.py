"""Outputs that would overwrite an input are refused, whatever path names them.

A file is the same as an input when it is the same inode (``st_dev`` and
``st_ino``): through a symlink, a hard link or another spelling of the path.
The inputs are the stream, its ``--channel`` files, a ``--desc`` file,
``--write-ram @FILE`` payloads and standard input when it is a file.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys

from ..errors import UsageError


def input_paths(args: argparse.Namespace) -> list[str]:
    """Every file the command's options name as something it reads."""
    paths = []
    file = getattr(args, "file", None)
    if isinstance(file, str) and file != "-":
        paths.append(file)
    paths += list(getattr(args, "channel", None) or ())
    desc = getattr(args, "desc", None)
    if isinstance(desc, str):
        paths.append(desc)
    for spec in getattr(args, "write_ram", None) or ():
        _, _, value = spec.partition("=")
        if value.startswith("@"):
            paths.append(value[1:])
    return paths


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def input_identities(args: argparse.Namespace) -> dict[tuple[int, int], str]:
    """(st_dev, st_ino) -> how the user named it, for every input that exists."""
    out: dict[tuple[int, int], str] = {}
    for p in input_paths(args):
        try:
            out.setdefault(_identity(os.stat(p)), p)
        except OSError:
            continue  # opening it will say what is wrong
    if getattr(args, "file", None) == "-":
        try:
            st = os.fstat(sys.stdin.fileno())
            if stat.S_ISREG(st.st_mode):
                out.setdefault(_identity(st), "standard input")
        except (OSError, ValueError, AttributeError):
            pass
    return out


def refuse_input(path: str | os.PathLike[str], args: argparse.Namespace) -> None:
    """Raise :class:`UsageError` when ``path`` exists and is one of the inputs."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if not stat.S_ISREG(st.st_mode):
        return  # a FIFO or a device is written to, not replaced
    inputs = input_identities(args)
    found = inputs.get(_identity(st))
    if found is not None:
        same = "" if os.fspath(path) == found else f" ({found})"
        raise UsageError(f"{os.fspath(path)}: the output would overwrite the input{same}")


def refuse_stdout_input(args: argparse.Namespace) -> None:
    """Raise when standard output is a regular file that the command also reads."""
    try:
        st = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return
    if not stat.S_ISREG(st.st_mode):
        return
    found = input_identities(args).get(_identity(st))
    if found is not None:
        raise UsageError(f"standard output is the input {found}: the output would overwrite it")
