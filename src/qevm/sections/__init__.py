"""Sections with formats of their own (QEMU's ``register_savevm_live`` handlers).

Importing this package registers every handler in :mod:`.registry`: RAM
(:mod:`.ram`), block migration, dirty bitmaps, the spapr hash page table,
s390 storage attributes and keys, vfio.  The loader asks
:func:`~.registry.handler_for` for each section it meets.
"""

from . import block, dirty_bitmap, htab, s390, vfio  # noqa: F401 - each registers itself
from .ram import section  # noqa: F401 - registers the RAM handler
from .registry import HANDLERS, SectionHandler, handler_for, register

__all__ = ["HANDLERS", "SectionHandler", "handler_for", "register"]
