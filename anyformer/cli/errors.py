"""The error type of the command line: printed as one line, never a traceback."""

from __future__ import annotations

__all__ = ["CLIError"]


class CLIError(Exception):
    """A mistake the user can fix (bad key, missing file, ...): ``anyformer: error: <message>``."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
