"""Output folders that are never silently overwritten."""

from __future__ import annotations

from pathlib import Path

from ._errors import UsageError

__all__ = ["check_output_dir", "claim_output_dir"]


def check_output_dir(path: Path) -> None:
    """Refuse an output folder that already holds files (or is a file)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"{path} already exists and is not empty; choose another --out")


def claim_output_dir(path: Path) -> None:
    """Create an empty output folder; refuse one that already holds files."""
    check_output_dir(path)
    Path(path).mkdir(parents=True, exist_ok=True)
