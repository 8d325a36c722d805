"""Linux system calls the ``os`` module lacks (``tee``, ``sync_file_range``), from the C library."""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any


def function(name: str, argtypes: list[Any], restype: Any) -> Any | None:
    """The C library's ``name`` with its signature, or None where there is none.

    It sets ``errno`` for :func:`ctypes.get_errno`.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes
    fn.restype = restype
    return fn
