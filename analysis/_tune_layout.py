"""Ray Tune's own folder layout, read in one place (a Ray upgrade touches this module only):
TRIAL/params.json (the trial's config), TRIAL/result.json (a JSON line per reported result),
TRIAL/error.txt (the last crash), TRIAL/checkpoint_NNNNNN/state.pt (epoch NNNNNN + 1), and the
driver's experiment_state-*.json (trial statuses). Read as files, so a running search can be
read too; a half-written last line of result.json is ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TuneTrial", "read_tune_trials", "checkpoint_files", "checkpoint_epoch",
           "TRIAL_STATE_FILE"]

TRIAL_STATE_FILE = "state.pt"  # what clustune's Trainable writes into each checkpoint folder


@dataclass(frozen=True)
class TuneTrial:
    trial_id: str
    folder: Path
    status: str  # PENDING, RUNNING, TERMINATED, ERROR; UNKNOWN: not in the saved state
    params: dict[str, Any]
    history: list[dict[str, Any]]
    error: str | None


def read_tune_trials(path: Path) -> list[TuneTrial]:
    """Every trial folder (one with params.json) of the Tune experiment at path."""
    statuses = _statuses(path)
    trials = []
    for params_file in sorted(path.glob("*/params.json")):
        folder = params_file.parent
        history = _read_history(folder / "result.json")
        trial_id = history[0]["trial_id"] if history else folder.name.split("_")[1]
        status, error = statuses.get(trial_id, ("UNKNOWN", None))
        if (folder / "error.txt").is_file():
            error = (folder / "error.txt").read_text().strip().splitlines()[-1][:300]
        trials.append(TuneTrial(trial_id, folder, status, json.loads(params_file.read_text()),
                                history, error))
    return trials


def checkpoint_files(folder: Path) -> list[Path]:
    """The trial's kept checkpoints (the Trainable's state files), oldest first."""
    return sorted(folder.glob(f"checkpoint_*/{TRIAL_STATE_FILE}"))


def checkpoint_epoch(state_file: Path) -> int:
    """The epoch a checkpoint holds: Tune numbers checkpoint folders from 0."""
    return int(state_file.parent.name.split("_")[-1]) + 1


def _statuses(path: Path) -> dict[str, tuple[str, str | None]]:
    """trial_id -> (status, error) from Ray Tune's newest experiment state file."""
    states = sorted(path.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    out = {}
    for entry in data.get("trial_data", []):
        try:
            info = json.loads(entry[0]) if isinstance(entry, list) else entry
        except (TypeError, json.JSONDecodeError):
            continue
        if isinstance(info, dict) and "trial_id" in info:
            out[info["trial_id"]] = (info.get("status", "UNKNOWN"), None)
    return out


def _read_history(result_file: Path) -> list[dict[str, Any]]:
    """One row per epoch. A trial restored from an older checkpoint (a retry, or a resume after
    the driver was killed) reports epochs again: a repeated iteration starts the history anew
    from there, dropping the abandoned rows."""
    rows: list[dict[str, Any]] = []
    if result_file.is_file():
        for line in result_file.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a line still being written
            iteration = row.get("training_iteration")
            while iteration is not None and rows and \
                    rows[-1].get("training_iteration", 0) >= iteration:
                rows.pop()
            rows.append(row)
    return rows


