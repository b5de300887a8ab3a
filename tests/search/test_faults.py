"""Faults during real searches on digits: a crashed trial is retried from its last checkpoint
and finishes, a diverging trial ends with its reason while the search goes on, a driver killed
with SIGKILL is resumed, and a final stage killed mid-evaluation resumes where it stopped."""

from __future__ import annotations

import io
import json
import re
import time

import pyarrow.parquet as pq
import pytest
import yaml
from ray import tune
from rich.console import Console

from analysis import export_experiment, load_experiment, to_rich, trials_table, write_report
from search import (
    SearchConfig,
    UsageError,
    build_tuner,
    create_experiment,
    prepare_warm_starts,
    select_trials,
)
from search.testing import crash_once
from trainable import storage_path

# fixed points: the same trial three times, one crashing once at epoch 2, one diverging
FAULTS = {"healthy": {}, "crash": {}, "nan": {"optim": {"lr": 1.0e6}}}


def _run(cfg: SearchConfig, path, callbacks=None):
    """A search whose trial at the point "crash" raises once at epoch 2 (search.testing)."""
    experiment = storage_path(path)
    create_experiment(cfg, experiment)
    prepare_warm_starts(cfg, experiment)
    build_tuner(cfg, experiment, callbacks, trainable=crash_once("crash", 2)).fit()
    return load_experiment(experiment)


@pytest.fixture(scope="module")
def faults_experiment(ray_session, tmp_path_factory, digits_search):
    data = digits_search(scheduler="fifo", max_failures=1)
    data.pop("space")
    data["points"] = FAULTS
    data["train"]["optim"]["epochs"] = 3
    return _run(SearchConfig.model_validate(data), tmp_path_factory.mktemp("faults") / "exp")


def _trial(experiment, point: str):
    (trial,) = [t for t in experiment.trials if t.params == {"point": point}]
    return trial


def test_crashed_trial_is_retried_from_its_last_checkpoint(faults_experiment):
    crash, healthy = _trial(faults_experiment, "crash"), _trial(faults_experiment, "healthy")
    assert crash.status == "TERMINATED" and crash.epochs == 3
    assert [r["training_iteration"] for r in crash.history] == [1, 2, 3]
    # the retry restored the epoch-1 checkpoint: epoch 2 is its first iteration since restore
    assert [r["iterations_since_restore"] for r in crash.history] == [1, 1, 2]
    assert "injected fault at epoch 2" in crash.problem
    assert len(list((faults_experiment.path.local / "faults").iterdir())) == 1  # raised once
    # and continued exactly: the same numbers as the trial that never crashed
    for got, want in zip(crash.history, healthy.history, strict=True):
        for key in ("train_loss", "val_clean_acc", "val_robust_acc", "sigma2"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key


def test_final_stage_names_fixed_points_by_their_point_or_id(faults_experiment):
    crash, healthy = _trial(faults_experiment, "crash"), _trial(faults_experiment, "healthy")
    assert select_trials(faults_experiment, 0, ["healthy", crash.trial_id]) == [healthy, crash]
    with pytest.raises(UsageError, match="no trial ill in"):
        select_trials(faults_experiment, 0, ["ill"])


def test_diverging_trial_ends_with_its_reason_and_the_search_goes_on(faults_experiment,
                                                                      tmp_path):
    nan = _trial(faults_experiment, "nan")
    assert nan.status == "TERMINATED" and nan.epochs == 1
    assert nan.diverged.startswith("loss became") and "at epoch 1" in nan.diverged
    assert nan.best() == {} and nan not in faults_experiment.proxy_ranked()  # never ranked
    assert all(t.epochs == 3 for t in faults_experiment.trials if t is not nan)

    console = Console(file=io.StringIO(), width=250, record=True)
    console.print(to_rich(trials_table(faults_experiment, top=1)))  # as after a search
    table = console.export_text()
    assert "DIVERGED" in table and f"diverged: {nan.diverged}" in table
    assert "retried after" in table  # the crashed trial, though ranked below the top one

    trials = pq.read_table(export_experiment(faults_experiment.path, tmp_path)["trials"])
    rows = {r["trial_id"]: r for r in trials.to_pylist()}
    assert rows[nan.trial_id]["diverged"] == nan.diverged
    report = write_report(faults_experiment.path, tmp_path / "report.html").read_text()
    assert f"diverged: {nan.diverged}" in report


def test_a_trial_the_study_finished_after_the_last_saved_state_runs_again(
        tmp_path, digits_search, clustune, monkeypatch):
    """The driver kills itself (SIGKILL) as the first trial ends: its end is in the Optuna
    study, not in Tune's saved state (saved at the start, then every 10 s or so). The resume
    runs that trial again without crashing on the finished study trial, and every trial ends
    with each epoch once in its history."""
    data = digits_search(num_samples=4, max_concurrent=1, scheduler="fifo")
    data["train"]["optim"]["epochs"] = 2
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(data))
    exp_dir = tmp_path / "store" / "killed"
    monkeypatch.setenv("CLUSTUNE_DRIVER_FAULT", "trial_complete:1:sigkill")  # exact event
    driver = clustune("search", "--config", str(config), "--storage", str(tmp_path / "store"),
                      "--name", "killed")
    assert driver.wait(timeout=300) == -9, driver.log.read_text()
    saved = [t for t in load_experiment(exp_dir).trials if t.status == "TERMINATED"]

    monkeypatch.delenv("CLUSTUNE_DRIVER_FAULT")
    resume = clustune("resume", str(exp_dir))
    assert resume.wait(timeout=400) == 0, resume.log.read_text()
    after = {t.trial_id: t for t in load_experiment(exp_dir).trials}
    assert len(after) == 4, resume.log.read_text()
    for trial in after.values():
        assert trial.status == "TERMINATED", resume.log.read_text()
        assert [r["training_iteration"] for r in trial.history] == [1, 2]
    for trial in saved:  # kept as they were, not run again
        assert after[trial.trial_id].history == trial.history


def _state_statuses(path) -> dict[str, str]:
    """Trial statuses as the driver last saved them (what a resume starts from)."""
    try:
        return {t.trial_id: t.status for t in load_experiment(path).trials}
    except Exception:  # noqa: BLE001 - the folder is still being created
        return {}


def test_sigkilled_driver_is_resumed_keeping_finished_trials(tmp_path, digits_search,
                                                             clustune):
    data = digits_search(num_samples=4, max_concurrent=1, scheduler="fifo")
    data["train"]["optim"]["epochs"] = 2
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(data))
    exp_dir = tmp_path / "store" / "killed"
    driver = clustune("search", "--config", str(config), "--storage", str(tmp_path / "store"),
                      "--name", "killed")
    deadline = time.monotonic() + 240
    while list(_state_statuses(exp_dir).values()).count("TERMINATED") < 2:
        assert driver.poll() is None, driver.log.read_text()
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.2)
    finished = [t for t in load_experiment(exp_dir).trials if t.status == "TERMINATED"]
    driver.kill()  # SIGKILL to the driver alone; Ray's agents stay behind until teardown
    driver.wait()

    resume = clustune("resume", str(exp_dir))
    assert resume.wait(timeout=400) == 0, resume.log.read_text()
    after = {t.trial_id: t for t in load_experiment(exp_dir).trials}
    assert len(after) == 4, resume.log.read_text()
    assert all(t.status == "TERMINATED" and t.epochs == 2 for t in after.values())
    for trial in finished:  # kept as they were, not run again
        assert after[trial.trial_id].history == trial.history


def test_final_stage_killed_mid_evaluation_resumes(faults_experiment, clustune):
    trial = _trial(faults_experiment, "healthy")
    final = faults_experiment.path.local / "final"
    args = ("evaluate", str(faults_experiment.path), "--trial", trial.trial_id,
            "--examples", "32")
    first = clustune(*args)
    deadline = time.monotonic() + 180
    while not list(final.glob("*.state")):  # written once the clean pass is done
        assert first.poll() is None, first.log.read_text()
        assert time.monotonic() < deadline, "the evaluation never saved its state"
        time.sleep(0.05)
    first.crash()  # driver, Ray and the evaluating worker die at once
    first.wait()
    (state,) = final.glob("*.state")
    assert json.loads(state.read_text())["clean_correct"] is not None
    assert not list(final.glob("*.json"))

    second = clustune(*args)
    assert second.wait(timeout=300) == 0, second.log.read_text()
    out = second.log.read_text()
    (result,) = final.glob("*.json")
    assert json.loads(result.read_text())["n_examples"] == 32
    assert not list(final.glob("*.state"))
    # resumed after the clean pass, which it does not repeat; the last stage did run
    assert re.search(rf"final stage: {trial.trial_id}-\w+ adaptive \d+/\d+", out), out
    assert not re.search(r"final stage: \S+ clean \d+", out), out


class _StaleCopyAtEpoch1(tune.Callback):
    """What Ray's periodic copy of the staged result files can leave in the experiment: the
    trial's result.json as it was before its first row (copied at the trial's start)."""

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result["training_iteration"] == 1:
            storage = trial.storage
            with storage.storage_filesystem.open_output_stream(
                    f"{storage.trial_fs_path}/result.json") as out:
                out.write(b"")


@pytest.mark.parametrize("fixed", [True, False])
def test_a_retry_keeps_every_epoch_written_since_the_last_copy(ray_session, tmp_path,
                                                              digits_search, monkeypatch, fixed):
    """A crash at epoch 2 after the experiment's result.json was copied before epoch 1's row:
    Ray restores the stale copy when the trial restarts. With the staged files copied to the
    experiment first, the history is [1, 2, 3]; without, epoch 1 is lost (the failure once
    seen in CI: a retried trial that 'ended after epoch 2')."""
    from search._driver import CurrentResultsBeforeRetry

    if not fixed:
        monkeypatch.setattr(CurrentResultsBeforeRetry, "on_trial_recover",
                            lambda *args, **kwargs: None)
    # no periodic snapshot of the search state (each copies the staged files, refreshing the
    # stale copy): without it, a slow run could make the unfixed case pass by chance
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "3600")
    data = digits_search(scheduler="fifo", max_failures=1)
    data.pop("space")
    data["points"] = {"crash": {}}
    data["train"]["optim"]["epochs"] = 3
    (trial,) = _run(SearchConfig.model_validate(data), tmp_path / "exp",
                    callbacks=[_StaleCopyAtEpoch1()]).trials
    epochs = [r["training_iteration"] for r in trial.history]
    assert epochs == ([1, 2, 3] if fixed else [2, 3])
