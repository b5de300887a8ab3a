"""MLflow tracking of a search (``search.mlflow``: a tracking URI): a parent run per search, a
nested run per trial with its resolved parameters and every epoch's metrics, and the final
stage's audited figures and flags on the trial's run.

Ray's ``MLflowLoggerCallback`` logs each trial's Tune config as its parameters; clustune's holds
the sampler's internal draws (``clusters.l@fraction``) beside the resolved values, and the
final stage, which runs after Tune, must find each trial's run again. So this callback uses
MLflow's client directly: runs are found by their tags (``clustune.experiment``,
``clustune.trial_id``), so a resumed search or a later ``clustune evaluate`` logs to the same
runs, and nothing of it has to survive in Tune's pickled state.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ray import tune

from analysis import Experiment, flags_of
from trainable import first_line, is_draw

from ._errors import UsageError

__all__ = ["MlflowTracking", "check_mlflow", "log_audits"]

MLFLOW_EXPERIMENT = "clustune"  # the MLflow experiment every search's parent run goes to
EXPERIMENT_TAG = "clustune.experiment"  # the experiment's location (folder or bucket URI)
TRIAL_TAG = "clustune.trial_id"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under its parent
# Tune's bookkeeping in every result: not metrics of the model
NOT_METRICS = {"training_iteration", "timestamp", "pid", "time_since_restore",
               "iterations_since_restore", "time_this_iter_s", "time_total_s", "done",
               "trial_complete", "epoch"}


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def check_mlflow(uri: str) -> None:
    """Refuse in one line, before Ray starts, a tracking URI MLflow cannot use or reach
    (MLflow itself would retry an unreachable server for minutes)."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UsageError("search.mlflow needs MLflow: pip install 'clustune[mlflow]'") from None
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                                            "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - MLflow raises many kinds; each is one line here
        raise UsageError(f"search.mlflow {uri}: not a reachable MLflow tracking URI "
                         f"({first_line(err)})") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _experiment_id(client) -> str:
    found = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    return found.experiment_id if found else client.create_experiment(MLFLOW_EXPERIMENT)


def _find_run(client, experiment_id: str, tags: dict[str, str]):
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1)
    return runs[0] if runs else None


def _parent(client, experiment_id: str, experiment_uri: str, name: str):
    run = _find_run(client, experiment_id, {EXPERIMENT_TAG: experiment_uri, TRIAL_TAG: "-"})
    return run or client.create_run(experiment_id, run_name=name,
                                    tags={EXPERIMENT_TAG: experiment_uri, TRIAL_TAG: "-"})


def _metrics(result: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in result.items()
            if k not in NOT_METRICS and isinstance(v, int | float) and not isinstance(v, bool)}


class MlflowTracking(tune.Callback):
    """A nested MLflow run per trial under the search's parent run."""

    def __init__(self, uri: str, experiment_uri: str, name: str,
                 search_settings: dict[str, Any]) -> None:
        self.uri, self.experiment_uri, self.name = uri, experiment_uri, name
        self.search_settings = search_settings
        self._runs: dict[str, str] = {}  # trial id -> run id (found again after a restore)
        self._state: tuple[Any, str, str] | None = None  # client, MLflow experiment, parent

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the search
        return {**self.__dict__, "_runs": {}, "_state": None}

    def _open(self) -> tuple[Any, str, str]:
        if self._state is None:
            client = _client(self.uri)
            experiment_id = _experiment_id(client)
            parent = _parent(client, experiment_id, self.experiment_uri, self.name)
            client.log_batch(parent.info.run_id, params=_params(self.search_settings))
            self._state = client, experiment_id, parent.info.run_id
        return self._state

    def _run(self, trial) -> str:
        if trial.trial_id not in self._runs:
            client, experiment_id, parent = self._open()
            tags = {EXPERIMENT_TAG: self.experiment_uri, TRIAL_TAG: trial.trial_id}
            run = _find_run(client, experiment_id, tags) or client.create_run(
                experiment_id, run_name=trial.trial_id, tags={**tags, PARENT_TAG: parent})
            self._runs[trial.trial_id] = run.info.run_id
            resolved = {k: v for k, v in trial.config.items() if not is_draw(k)}
            client.log_batch(run.info.run_id, params=_params(resolved))
        return self._runs[trial.trial_id]

    def setup(self, **info: Any) -> None:
        self._open()

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._run(trial)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict,
                        **info: Any) -> None:
        from mlflow.entities import Metric

        step = int(result.get("training_iteration", 0))
        now = int(time.time() * 1000)
        client = self._open()[0]
        client.log_batch(self._run(trial), metrics=[
            Metric(k, v, now, step) for k, v in _metrics(result).items()])

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._open()[0].set_terminated(self._run(trial), "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._open()[0].set_terminated(self._run(trial), "FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        client, _, parent = self._open()
        client.set_terminated(parent, "FINISHED")


def _params(values: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in values.items() if v is not None]


def log_audits(experiment: Experiment) -> int:
    """Log the final stage's results of a tracked search to its trials' runs: the audited
    worst-case accuracy and each attack's, per head (metrics ``audit/HEAD/...``), and the
    audit's flags as a tag. Returns how many results were logged."""
    uri = experiment.meta.search.get("mlflow")
    if not uri:
        return 0
    from mlflow.entities import Metric

    client = _client(uri)
    experiment_id = _experiment_id(client)
    now, logged = int(time.time() * 1000), 0
    for result in experiment.final_results():
        run = _find_run(client, experiment_id, {EXPERIMENT_TAG: experiment.path.uri,
                                                TRIAL_TAG: result["trial_id"]})
        if run is None:
            continue
        head = result.get("head") or "-"
        figures = {k: result.get(k) for k in ("clean_acc", "autoattack_acc", "ce_only_acc",
                                               "adaptive_acc", "worst_case_acc")}
        figures |= {f"acc_{a}": v for a, v in (result.get("per_attack_acc") or {}).items()}
        client.log_batch(run.info.run_id, metrics=[
            Metric(f"audit/{head}/{k}", float(v), now, 0) for k, v in figures.items()
            if v is not None])
        flags = flags_of(result)
        client.set_tag(run.info.run_id, f"audit/{head}/flags",
                       "; ".join(str(f) for f in flags) or "none")
        logged += 1
    return logged
