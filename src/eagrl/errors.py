"""Errors that carry a message a person can act on.

Every error raised on bad input names what is wrong and where (file, column, row count, examples);
the CLI prints ``str(err)`` on one line and exits non-zero, never a traceback.
"""
from __future__ import annotations


class EagrlError(Exception):
    """Base class: an expected failure with a clear one-line message."""


class DataError(EagrlError):
    """A data file or table cannot be read or does not have the expected shape."""


class ValidationFailed(EagrlError):
    """A dataset failed an error-level expectation; the report path is attached."""

    def __init__(self, message: str, report_path: str | None = None):
        super().__init__(message)
        self.report_path = report_path


class ConfigError(EagrlError):
    """A configuration value is missing, of the wrong type or out of range."""
