"""An experiment folder read back as trial records, for status tables, exports and reports.

clustune's own files are named here; Ray Tune's layout is read by :mod:`._tune_layout` (the
one module a Ray upgrade touches). Works on a finished search and on one still running.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from trainable import (
    ClustuneError,
    StoragePath,
    TrainConfig,
    recorded_config,
    resolve_trial_config,
    storage_path,
)

from ._tune_layout import checkpoint_epoch, checkpoint_files, read_tune_trials

__all__ = ["TrialRecord", "Experiment", "ExperimentMeta", "load_experiment", "read_meta",
           "ExperimentError", "META_FILE", "META_FORMAT", "STUDY_FILE", "FINAL_DIR",
           "EXPORT_TRIALS", "EXPORT_EPOCHS",
           "WARM_START_DIR", "parse_meta", "study_file", "study_problem", "study_url"]

# The experiment folder's own files, named here only (search writes them, analysis reads them);
# the rest of the folder is Ray Tune's layout: TRIAL/params.json, TRIAL/result.json,
# TRIAL/checkpoint_N/, experiment_state-*.json
META_FILE = "clustune.json"  # ExperimentMeta: the resolved search config, the study's name
META_FORMAT = "clustune-experiment-v1"
STUDY_FILE = "optuna.db"  # the Optuna study (sqlite)
FINAL_DIR = "final"  # the final stage: final/TRIAL-HEAD.json, in analysis's result schema
WARM_START_DIR = "warm_start"  # the shared CE warm starts: warm_start/KEY.pt
EXPORT_TRIALS = "trials.parquet"  # `clustune export`: one row per trial (analysis._export)
EXPORT_EPOCHS = "epochs.parquet"  # and one row per trial and epoch
# the search settings analysis reads from clustune.json (search.SearchSettings owns them)
SEARCH_KEYS = ("metric", "mode", "objectives", "sampler", "scheduler", "max_concurrent")


def study_file(experiment: str | Path | StoragePath) -> Path:
    """Where the search's driver keeps the Optuna study (sqlite needs a local file): in the
    experiment folder, or for one in a bucket, in a fixed place in the temporary folder (the
    study is copied to the bucket as the search runs; a resume on any machine copies it back
    to the same place, where Ray Tune's saved searcher expects it)."""
    where = storage_path(experiment)
    if where.is_local:
        return where.local.resolve() / STUDY_FILE
    digest = hashlib.sha1(where.uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "clustune-studies" / digest / STUDY_FILE


def study_url(experiment: str | Path | StoragePath) -> str:
    """The Optuna storage URL of the study the search's driver writes."""
    return f"sqlite:///{study_file(experiment)}"


def study_problem(file: Path) -> str | None:
    """Why a local study file is not a readable Optuna study (None when it is): sqlite's own
    check, then Optuna's tables. It is read without writing, except that a writer killed
    inside a transaction (a SIGKILLed driver) leaves a hot journal that only a read-write
    connection may roll back: that is sqlite's own recovery, which the next writer would run
    anyway, so it runs here, and the study is the last one committed."""
    try:
        return _study_problem(f"file:{file}?mode=ro")
    except sqlite3.Error as err:
        if getattr(err, "sqlite_errorcode", None) != sqlite3.SQLITE_READONLY_ROLLBACK:
            return f"not an sqlite database ({err})"
    try:
        return _study_problem(f"file:{file}?mode=rw")
    except sqlite3.Error as err:
        return f"not an sqlite database ({err})"


def _study_problem(uri: str) -> str | None:
    with sqlite3.connect(uri, uri=True) as db:
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    if check != "ok":
        return f"a damaged sqlite database ({check})"
    if not {"studies", "trials", "version_info"} <= tables:
        return "an sqlite database without Optuna's tables"
    return None


def _scratch_folder() -> Path:
    """A temporary folder removed when the command ends (a bucket's study, read locally)."""
    folder = Path(tempfile.mkdtemp(prefix="clustune-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


class ExperimentError(ClustuneError, ValueError):
    """A folder that is not a clustune experiment."""


class ExperimentMeta(BaseModel):
    """clustune.json: what a search was asked to do, written once when it starts. The search
    config stays the JSON of ``search.SearchConfig`` (search validates it; the properties here
    are what analysis reads of it). A file without ``format`` is a v1 file from before the
    field existed; another format is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["clustune-experiment-v1"] = META_FORMAT
    name: str
    created: str  # local time the search started, ISO 8601
    study_name: str
    study_storage: str  # the Optuna storage URL the driver wrote the study to
    config: dict[str, Any]  # the search config: description, base, train, space, points, search
    base: dict[str, Any]  # the trials' common training config (before each trial's params)

    @model_validator(mode="after")
    def _search_settings(self) -> ExperimentMeta:
        """The search settings analysis reads are written by every search (search owns their
        defaults): a file without them is not an experiment's."""
        missing = [k for k in SEARCH_KEYS if k not in self.search]
        if missing:
            raise ValueError(f"config.search lacks {', '.join(missing)}")
        return self

    @property
    def search(self) -> dict[str, Any]:
        return self.config.get("search") or {}

    @property
    def metric(self) -> str:
        return self.search["metric"]

    @property
    def mode(self) -> str:
        return self.search["mode"]

    @property
    def objectives(self) -> list[str]:
        """What a multi-objective sampler maximised (search.objectives)."""
        return self.search["objectives"]

    @property
    def points(self) -> dict[str, dict[str, Any]]:
        """The named fixed configurations of a search over points ({} for a space)."""
        return self.config.get("points") or {}

    @property
    def shared_study(self) -> str | None:
        """The RDB URL of a study shared between experiments (search.study_storage)."""
        return self.search.get("study_storage")


log = logging.getLogger("clustune")  # "skipped FILE: why" for files a reader can do without
FINAL_FIELDS = ("clean_acc", "autoattack_acc", "ce_only_acc", "n_examples", "per_attack_acc")


@dataclass
class TrialRecord:
    trial_id: str
    path: StoragePath
    status: str  # PENDING, RUNNING, TERMINATED, ERROR; UNKNOWN: not in Ray's saved search state
    params: dict[str, Any]  # the searched knobs (dotted names) or {"point": name}
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch
    error: str | None = None

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    def _scored(self, metric: str) -> list[dict[str, Any]]:
        """Epochs with a finite metric; the report of a diverged epoch (its metrics are
        placeholders for Tune) never counts."""
        return [r for r in self.history if _finite(r.get(metric)) and "diverged" not in r]

    def best(self, metric: str = "val_robust_acc", mode: str = "max") -> dict[str, Any]:
        """The epoch with the best value of metric (empty before the first scored epoch)."""
        rows = self._scored(metric)
        if not rows:
            return {}
        pick = max if mode == "max" else min
        return pick(rows, key=lambda r: r[metric])

    @property
    def diverged(self) -> str | None:
        return self.last.get("diverged")

    @property
    def problem(self) -> str | None:
        """Why the trial ended early, or what it recovered from (Ray keeps error.txt after a
        successful retry), for trial tables."""
        if self.diverged:
            return f"diverged: {self.diverged}"
        if self.error:
            return f"{'failed' if self.status == 'ERROR' else 'retried after'}: {self.error}"
        return None

    def checkpoints(self) -> list[StoragePath]:
        return checkpoint_files(self.path)

    def best_checkpoint(self, metric: str = "val_robust_acc", mode: str = "max"
                        ) -> StoragePath | None:
        """The kept checkpoint whose epoch scored best on metric."""
        by_iter = {r.get("training_iteration"): r for r in self._scored(metric)}
        scored = []
        for ckpt in self.checkpoints():
            row = by_iter.get(checkpoint_epoch(ckpt))
            if row is not None:
                scored.append((row[metric], ckpt))
        if not scored:
            return None
        pick = max if mode == "max" else min
        return pick(scored, key=lambda t: t[0])[1]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


@dataclass
class Experiment:
    path: StoragePath
    meta: ExperimentMeta
    trials: list[TrialRecord]
    configs: dict[str, dict[str, Any]] | None = None  # trial id -> config (read from an export)
    # the final stage's results: given by an export, else read from final/ once (the ranking,
    # every table and the report ask for them many times per command)
    finals: list[dict[str, Any]] | None = None
    skipped: set[str] = field(default_factory=set)  # files read around, each said once

    @property
    def metric(self) -> str:
        return self.meta.metric

    @property
    def mode(self) -> str:
        return self.meta.mode

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def exported(self) -> bool:
        """Read back from a Parquet export: no checkpoints, no Optuna study, summaries only."""
        return self.configs is not None

    def open_study(self, required: bool = False) -> str | None:
        """The Optuna storage URL of the experiment's own optuna.db (so a copied or moved
        experiment reads its own study, not the path recorded in clustune.json; one in a
        bucket is read from a local copy), or the RDB URL of a shared study
        (``search.study_storage``); None before the study exists. A damaged file is skipped
        with a warning, or, when ``required``, refused."""
        if self.meta.shared_study:
            return self.meta.shared_study  # an RDB server the search was pointed at
        stored = self.path / STUDY_FILE
        if not stored.is_file():
            return None
        local = stored.local if stored.is_local else _scratch_folder() / STUDY_FILE
        if not stored.is_local:
            stored.download(local)
        problem = study_problem(local)
        if problem and required:
            raise ExperimentError(f"{stored} is {problem}")
        if problem:
            self._skip(stored, problem)
            return None
        return f"sqlite:///{local.resolve()}"

    def trial_config(self, trial: TrialRecord) -> TrainConfig:
        """The config the trial trained with (settings it ignored at their defaults)."""
        if self.configs is not None:
            return recorded_config(self.configs[trial.trial_id])
        return resolve_trial_config(self.meta.base, self.meta.points, trial.params,
                                    recorded=True)

    def final_results(self) -> list[dict[str, Any]]:
        """The final stage's AutoAttack results (final/<trial_id>-<head>.json), read on the first
        call; [] before the final stage."""
        if self.finals is not None:
            return self.finals
        results = []
        for file in (self.path / FINAL_DIR).glob("*-*.json"):
            try:  # written atomically: a file that does not parse is damaged, not half-written
                result = json.loads(file.read_text())
                problem = None if isinstance(result, dict) and all(
                    k in result for k in FINAL_FIELDS) else "not a final-stage result"
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                problem = f"unreadable ({err.__class__.__name__})"
            if problem:
                self._skip(file, problem)
                continue
            trial_id, _, head = file.stem.partition("-")
            result.setdefault("trial_id", trial_id)
            result.setdefault("head", head)
            results.append(result)
        self.finals = results
        return results

    def _skip(self, file: StoragePath, why: str) -> None:
        message = f"skipped {file}: {why}"
        if message not in self.skipped:
            self.skipped.add(message)
            log.warning(message)

    def proxy_ranked(self) -> list[TrialRecord]:
        """Trials with at least one scored epoch, best first by the search metric at their best
        epoch: the validation proxy, which picks whom the final stage audits (the ranking
        users see is :func:`analysis.rank_trials`)."""
        done = [t for t in self.trials if t.best(self.metric, self.mode)]
        sign = -1 if self.mode == "max" else 1
        return sorted(done, key=lambda t: sign * t.best(self.metric, self.mode)[self.metric])


def read_meta(path: str | Path | StoragePath) -> ExperimentMeta:
    """The experiment's clustune.json (its resolved search config and study)."""
    meta_file = storage_path(path) / META_FILE
    if not meta_file.is_file():
        raise ExperimentError(f"{path} is not a clustune experiment (no {META_FILE})")
    try:
        text = meta_file.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ExperimentError(f"{meta_file} is unreadable ({err})") from None
    return parse_meta(text, meta_file)


def parse_meta(text: str | bytes, source: object) -> ExperimentMeta:
    """ExperimentMeta from its JSON; source names the file in the one-line error."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ExperimentError(f"{source} is unreadable ({err})") from None
    if isinstance(data, dict) and data.get("format", META_FORMAT) != META_FORMAT:
        raise ExperimentError(f"{source} is a {data['format']} file; this clustune reads "
                              f"{META_FORMAT} (a newer clustune wrote it?)")
    try:
        return ExperimentMeta.model_validate(data)
    except ValidationError as err:
        where = ".".join(str(p) for p in err.errors()[0]["loc"]) or "the file"
        raise ExperimentError(f"{source} is not a clustune experiment file ({where}: "
                              f"{err.errors()[0]['msg']})") from None


def load_experiment(path: str | Path | StoragePath) -> Experiment:
    """Every trial of the experiment at path (a folder, or a location in cloud storage), with
    its per-epoch history and status; path may also be a folder `clustune export` wrote
    (trials.parquet and epochs.parquet)."""
    path = storage_path(path)
    if not (path / META_FILE).is_file() and (path / EXPORT_TRIALS).is_file():
        from ._export import load_export  # the export module builds on this one

        return load_export(path)
    meta = read_meta(path)
    trials = [TrialRecord(t.trial_id, t.folder, t.status, t.params, t.history, t.error)
              for t in read_tune_trials(path)]
    return Experiment(path, meta, trials)
