"""Edits of a decoded stream, which the writer (:mod:`qevm.writer`) then encodes.

Device fields are changed in the model (:func:`set_field`, :mod:`.fields`);
new RAM contents are a :class:`RamPatch` (:mod:`.ram`) given to the writer.
"""

from .fields import FieldRef, check_sizes, resolve, set_field
from .ram import RamPatch, RamWrite, bytes_reader, file_reader

__all__ = [
    "FieldRef",
    "check_sizes",
    "RamPatch",
    "RamWrite",
    "bytes_reader",
    "file_reader",
    "resolve",
    "set_field",
]
