"""Ground truth from QEMU's `info mtree -f`: which RAM block backs a guest-physical address."""

from __future__ import annotations

import re

_LINE = re.compile(
    r"^\s+([0-9a-f]{16})-([0-9a-f]{16}) \(prio -?\d+, (ram|rom|romd)\): (\S+)(?: @([0-9a-f]{16}))?"
)


def system_ranges(mtree: str) -> list[tuple[int, int, str, int]]:
    """``(start, end_inclusive, region, offset)`` of RAM-backed ranges of the system AS."""
    out = []
    lines = mtree.splitlines()
    try:
        i = next(k for k, line in enumerate(lines) if 'AS "memory"' in line)
    except StopIteration:
        return out
    for line in lines[i + 1 :]:
        if line.startswith("FlatView"):
            break
        m = _LINE.match(line)
        if m:
            start, end = int(m[1], 16), int(m[2], 16)
            out.append((start, end, m[4], int(m[5], 16) if m[5] else 0))
    return out


def block_at(mtree: str, gpa: int) -> tuple[str, int]:
    """The region name and offset in it backing guest-physical ``gpa``."""
    for start, end, name, off in system_ranges(mtree):
        if start <= gpa <= end:
            return name, off + gpa - start
    raise KeyError(f"{gpa:#x} is not RAM in the system address space")


def loaded_patterns(argv: list[str]) -> list[tuple[str, int]]:
    """``(pattern file name, guest-physical address)`` of every -device loader."""
    out = []
    for a in argv:
        m = re.match(r"loader,file=([^,]+),addr=(0x[0-9a-fA-F]+)", a)
        if m:
            out.append((m[1].rsplit("/", 1)[-1], int(m[2], 16)))
    return out
