"""Errors a user can act on.

Every error raised on purpose by charter is a :class:`CharterError`. The CLI catches it at the boundary and prints
one line (``error: <what is wrong> — <what to do>``) and exits non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations


class CharterError(Exception):
    """A problem the user can fix: the message names it and the fix."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} — {fix}" if fix else problem)


class ConfigError(CharterError):
    """A configuration, constitution or prompt file is missing or invalid."""


class BackendError(CharterError):
    """A model backend cannot be loaded or reached, or refused a request."""
