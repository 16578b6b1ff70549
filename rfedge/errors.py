"""Typed errors. Library code raises these; the CLI turns them into one line and an exit code.

Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class RfedgeError(Exception):
    """Base of every error rfedge reports to a user."""

    exit_code = 2


class UsageError(RfedgeError):
    """A bad option, path or environment setting."""


class TraceFormatError(RfedgeError):
    """A trace record that cannot be read: says where (file, line or index) and which field."""

    def __init__(self, message: str, where: str | None = None):
        self.where = where
        self.reason = message
        super().__init__(f"{where}: {message}" if where else message)


class ModelFilesError(RfedgeError):
    """A model directory that is missing, malformed, tampered with or unsupported."""


class ValidationError(RfedgeError):
    """A tolerance, parity or quality gate that was missed. Never a warning."""

    exit_code = 1


class MissingExtraError(RfedgeError):
    """An optional dependency group is not installed."""


class OutputError(RfedgeError):
    """Results could not be written (a full disk, a closed or unwritable target)."""

    exit_code = 1


class RuntimeFailure(RfedgeError):
    """ONNX Runtime failed while running a verified graph (out of memory, an unsupported input)."""

    exit_code = 1
