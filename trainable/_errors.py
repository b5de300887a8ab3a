"""The base class of every error clustune expects (bad input, missing data, a foreign file):
the command line catches it once and prints one line, exit code 2."""

from __future__ import annotations

__all__ = ["ClustuneError"]


class ClustuneError(Exception):
    """A problem with what the user gave (a config, a file, a folder, an option): the message
    says what is wrong and how to fix it, in one line."""
