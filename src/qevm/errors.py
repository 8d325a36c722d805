"""Exceptions raised by qevm.

Every error caused by input data is a :class:`QevmError` that knows where it
happened: the byte offset in the stream, the section being read, the field
being read and what was expected there.  The CLI prints ``str(error)`` in one
line and exits with status 2.
"""

from __future__ import annotations


class QevmError(Exception):
    """Base class of every qevm error about its input."""

    def __init__(
        self,
        message: str,
        *,
        offset: int | None = None,
        section: str | None = None,
        field: str | None = None,
        expected: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.section = section
        self.field = field
        self.expected = expected
        #: The file the offset is in, when it is not the main input (a channel).
        self.file: str | None = None

    def located(
        self, *, section: str | None = None, field: str | None = None, file: str | None = None
    ) -> QevmError:
        """Fill in the section, field or file if the raiser did not know them."""
        if self.section is None and section is not None:
            self.section = section
        if self.file is None and file is not None:
            self.file = file
        if field is not None:
            self.field = field if self.field is None else f"{field}.{self.field}"
        return self

    def __str__(self) -> str:
        parts = []
        if self.file:
            parts.append(f"in {self.file}")
        if self.offset is not None:
            parts.append(f"at offset {self.offset:#x}")
        if self.section:
            parts.append(f"in section {self.section!r}")
        if self.field:
            parts.append(f"field {self.field!r}")
        where = (", ".join(parts) + ": ") if parts else ""
        text = where + self.message
        if self.expected:
            text += f" (expected {self.expected})"
        return text


class TruncatedError(QevmError):
    """The input ended before a complete value could be read."""


class FormatError(QevmError):
    """The bytes do not follow the migration stream format."""


class UnsupportedError(QevmError):
    """Valid input that qevm does not handle (e.g. a version 2 stream)."""


class DescriptionError(QevmError):
    """The JSON VM description is missing, malformed or does not fit the stream."""


class ContainerError(QevmError):
    """A container around the stream (qcow2, libvirt, compression) is invalid."""


class UsageError(QevmError):
    """A request that cannot be satisfied for this stream (bad path, block name...)."""
