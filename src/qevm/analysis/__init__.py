"""Migration debugging: will a stream load there, how two differ, where a section broke.

* :func:`~.check.check` — a source stream against what a destination expects
  (its own stream, a description, or its ``-dump-vmstate``), with QEMU's
  load-time checks in QEMU's order (:mod:`.check`, :mod:`.ramcheck`,
  :mod:`.loader`, :mod:`.schemacheck`; device checks plug in via :mod:`.hooks`);
* :func:`~.diff.diff` — two inputs compared: configuration, description,
  device fields, RAM pages (per block and guest-physical), CPU registers;
* :func:`~.explain.explain_section` — a section its description does not fit:
  its fields with offsets, where the decode ran off, and what would make it
  end exactly at its footer (:mod:`.localize`).
"""

from __future__ import annotations

from .check import check, check_migration
from .problems import Problem, Report

__all__ = ["check", "check_migration", "Problem", "Report"]
