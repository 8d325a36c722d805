"""What the serial consoles of the corpus' Linux guests say: kernel lines and the ``ps`` list.

The guests print their boot log with timestamps (``[    1.234567] text``) and,
from their ``/init``, busybox's ``ps`` (``PID USER COMMAND``) before they are
stopped and saved; these are the ground truth the memory images are checked
against (by drgn and crash, reading the kernel's own printk ring and task list).
"""

from __future__ import annotations

import pathlib
import re

_KERNEL_LINE = re.compile(r"\[\s*(\d+\.\d{6})\] (.*)$")
_PS_ROW = re.compile(r"^\s*(\d+)\s+\S+\s+(.+)$")


def kernel_lines(console: pathlib.Path) -> list[tuple[str, str]]:
    """``(timestamp, text)`` of every kernel line of the console (trailing blanks dropped)."""
    out = []
    for line in console.read_bytes().decode("utf-8", "replace").splitlines():
        m = _KERNEL_LINE.search(line.rstrip("\r"))
        if m:
            out.append((m.group(1), m.group(2).rstrip()))
    return out


def ps_processes(console: pathlib.Path) -> list[tuple[int, str]]:
    """``(pid, name)`` of every process busybox ``ps`` listed, except ``ps`` itself.

    busybox shows ``[comm]`` for kernel threads (with a workqueue worker's
    current work appended: ``kworker/0:0-events``), ``{comm} args`` when the
    command line does not start with the name, else the command line.  Names
    are cut to 15 characters, as the kernel's ``comm`` is.
    """
    lines = console.read_bytes().decode("utf-8", "replace").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.split() == ["PID", "USER", "COMMAND"])
    out = []
    for line in lines[start + 1 :]:
        m = _PS_ROW.match(line.rstrip("\r"))
        if not m:
            break
        pid, cmd = int(m.group(1)), m.group(2)
        if cmd.startswith("["):
            name = cmd[1:].split("]")[0]
        elif cmd.startswith("{"):
            name = cmd[1:].split("}")[0]
        else:
            name = cmd.split()[0].rsplit("/", 1)[-1]
        out.append((pid, name[:15]))
    # the last row is the shell child that ran ps: it exited before the VM stopped
    if out and out[-1][1] == "ps":
        out.pop()
    return out


def same_process(ps_name: str, comm: str) -> bool:
    """Whether ``ps`` showed the task named ``comm`` (a worker's work may follow ``-``/``+``)."""
    return ps_name == comm or (
        ps_name.startswith(comm) and ps_name[len(comm) : len(comm) + 1] in ("-", "+")
    )
