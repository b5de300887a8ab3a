"""The search's own expected error: a problem with what the user asked for."""

from __future__ import annotations

from trainable import ClustuneError

__all__ = ["UsageError"]


class UsageError(ClustuneError):
    """A problem with what the user asked for: one line, exit code 2."""
