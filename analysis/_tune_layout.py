"""Ray Tune's own folder layout, read in one place (a Ray upgrade touches this module only):
TRIAL/params.json (the trial's config), TRIAL/result.json (a JSON line per reported result),
TRIAL/error.txt (the last crash), TRIAL/checkpoint_NNNNNN/state.pt (epoch NNNNNN + 1), and the
driver's experiment_state-*.json (trial statuses). Read as files, through the experiment's
storage (a local folder or a bucket), so a running search can be read too; a half-written last
line of result.json is ignored.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from trainable import StoragePath

__all__ = ["TuneTrial", "read_tune_trials", "checkpoint_files", "checkpoint_epoch",
           "search_state_problem", "TRIAL_STATE_FILE"]

TRIAL_STATE_FILE = "state.pt"  # what clustune's Trainable writes into each checkpoint folder
log = logging.getLogger("clustune")


@dataclass(frozen=True)
class TuneTrial:
    trial_id: str
    folder: StoragePath
    status: str  # PENDING, RUNNING, TERMINATED, ERROR; UNKNOWN: not in the saved state
    params: dict[str, Any]
    history: list[dict[str, Any]]
    error: str | None


def read_tune_trials(path: StoragePath) -> list[TuneTrial]:
    """Every trial folder (one with params.json) of the Tune experiment at path."""
    statuses = _statuses(path)
    files = {f.path: f for f in path.glob("*/*")}  # one listing for every trial folder
    trials = []
    for params_file in (f for f in files.values() if f.name == "params.json"):
        folder = params_file.parent
        result_file = files.get((folder / "result.json").path)
        history = _read_history(result_file) if result_file else []
        trial_id = history[0]["trial_id"] if history else folder.name.split("_")[1]
        status, error = statuses.get(trial_id, ("UNKNOWN", None))
        error_file = files.get((folder / "error.txt").path)
        if error_file:
            error = error_file.read_text().strip().splitlines()[-1][:300]
        trials.append(TuneTrial(trial_id, folder, status, json.loads(params_file.read_text()),
                                history, error))
    return trials


def checkpoint_files(folder: StoragePath) -> list[StoragePath]:
    """The trial's kept checkpoints (the Trainable's state files), oldest first."""
    return folder.glob(f"checkpoint_*/{TRIAL_STATE_FILE}")


def checkpoint_epoch(state_file: StoragePath) -> int:
    """The epoch a checkpoint holds: Tune numbers checkpoint folders from 0."""
    return int(state_file.parent.name.split("_")[-1]) + 1


def _read_search_state(path: StoragePath) -> tuple[dict[str, Any] | None, str | None]:
    """Ray Tune's newest saved search state, read once: (its data, None), (None, why it
    cannot be read), or (None, None) before there is one."""
    states = path.glob("experiment_state-*.json")
    if not states:
        return None, None
    try:
        data = json.loads(states[-1].read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"{states[-1]} is unreadable ({err.__class__.__name__})"
    if not isinstance(data, dict) or not isinstance(data.get("trial_data"), list):
        return None, f"{states[-1]} is not a Ray Tune search state"
    return data, None


def search_state_problem(path: StoragePath) -> str | None:
    """Why Ray Tune's newest saved search state cannot be read (None when it can, or when
    there is none yet)."""
    return _read_search_state(path)[1]


def _statuses(path: StoragePath) -> dict[str, tuple[str, str | None]]:
    """trial_id -> (status, error) from Ray Tune's newest experiment state file."""
    data, problem = _read_search_state(path)
    if problem:
        log.warning(f"skipped {problem}: trial statuses unknown")
    if data is None:
        return {}
    out = {}
    for entry in data["trial_data"]:
        try:
            info = json.loads(entry[0]) if isinstance(entry, list) else entry
        except (TypeError, json.JSONDecodeError):
            continue
        if isinstance(info, dict) and "trial_id" in info:
            out[info["trial_id"]] = (info.get("status", "UNKNOWN"), None)
    return out


def _read_history(result_file: StoragePath) -> list[dict[str, Any]]:
    """One row per epoch. A trial restored from an older checkpoint (a retry, or a resume after
    the driver was killed) reports epochs again: a repeated iteration starts the history anew
    from there, dropping the abandoned rows."""
    rows: list[dict[str, Any]] = []
    try:
        lines = result_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return rows
    for line in lines:
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


