"""The errors every part of clustune expects, and the one way they become one line.

:class:`ClustuneError` is the base of every expected error (bad input, missing data, a foreign
file): the command line catches it once and prints one line, exit code 2."""

from __future__ import annotations

__all__ = ["ClustuneError", "TrainingDiverged", "first_line"]


class ClustuneError(Exception):
    """A problem with what the user gave (a config, a file, a folder, an option): the message
    says what is wrong and how to fix it, in one line."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the trial ends with this reason."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when it has none), cut to
    limit characters: how a library's multi-line error is quoted in a one-line error."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]
