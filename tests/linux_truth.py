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


def release_of(console: pathlib.Path) -> str:
    """The kernel release the console's boot banner names."""
    text = console.read_bytes().decode("utf-8", "replace")
    m = re.search(r"Linux version (\S+) ", text)
    assert m, f"{console}: no boot banner"
    return m.group(1)


def drgn_view(core: str, vmlinux: str) -> tuple[str, dict[str, set[str]], dict[int, str]]:
    """What drgn finds in a core: the release, printk lines by timestamp, tasks by pid."""
    import drgn
    from drgn.helpers.linux.pid import for_each_task
    from drgn.helpers.linux.printk import get_printk_records

    prog = drgn.Program()
    prog.set_core_dump(core)
    prog.load_debug_info([vmlinux])
    release = prog["init_uts_ns"].name.release.string_().decode()
    lines: dict[str, set[str]] = {}
    for r in get_printk_records(prog):
        ts = f"{r.timestamp // 1_000_000_000}.{r.timestamp // 1000 % 1_000_000:06d}"
        for line in r.text.decode("utf-8", "replace").split("\n"):
            lines.setdefault(ts, set()).add(line.rstrip())
    tasks = {t.pid.value_(): t.comm.string_().decode() for t in for_each_task(prog)}
    return release, lines, tasks


def missing(console: pathlib.Path, view: tuple[str, dict[str, set[str]], dict[int, str]]) -> dict:
    """What the console shows that ``view`` (:func:`drgn_view`) lacks; empty when all is there."""
    release, lines, tasks = view
    out: dict = {}
    if release != release_of(console):
        out["release"] = release
    lost = [(t, x) for t, x in kernel_lines(console) if x not in lines.get(t, set())]
    if lost:
        out["kernel lines"] = lost[:10] + ([f"... {len(lost)} in all"] if len(lost) > 10 else [])
    procs = [
        (p, n, tasks.get(p))
        for p, n in ps_processes(console)
        if p not in tasks or not same_process(n, tasks[p])
    ]
    if procs:
        out["processes"] = procs
    return out


def crash_log_lines(path: pathlib.Path) -> set[tuple[str, str]]:
    """``(timestamp, text)`` of crash's ``log`` output.

    crash prints the lines of a multi-line record after the first one
    indented by the width of the timestamp prefix, without it.
    """
    out: set[tuple[str, str]] = set()
    ts, width = None, 0
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        m = _KERNEL_LINE.match(line)
        if m:
            ts, width = m.group(1), m.start(2)
            out.add((ts, m.group(2).rstrip()))
        elif ts is not None and width and line[:width].isspace() and len(line) > width:
            out.add((ts, line[width:].rstrip()))
        else:
            ts = None
    return out
