"""MLflow tracking, for real: a search tracked by a tracking server started on loopback by the
test, and by a local database file; a nested run per trial with its resolved parameters, every
epoch's metrics and the audit; a URI MLflow cannot reach refused in one line before Ray
starts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from search import SearchConfig, UsageError, run_search


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a sqlite store, until it answers /health."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--default-artifact-root", str(folder / "artifacts")], stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
        # no job runner: its eight queue consumers took a core of this 2-core machine
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:  # the exact event: the server answers
        assert proc.poll() is None, (folder / "server.log").read_text()
        assert time.monotonic() < deadline, "the tracking server never answered"
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5) as reply:
                if reply.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
    proc.wait(timeout=60)
    log.close()


@pytest.fixture(params=["server", "sqlite"])
def tracking_uri(request, tmp_path):
    """A tracking server, or a local database file with no server (MLflow 3 refuses its old
    ./mlruns folder store unless MLFLOW_ALLOW_FILE_STORE=true)."""
    if request.param == "server":
        return request.getfixturevalue("tracking_server")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_a_tracked_search_logs_a_nested_run_per_trial(ray_session, tmp_path, digits_search,
                                                       tracking_uri):
    from mlflow.tracking import MlflowClient

    data = digits_search(num_samples=3, scheduler="fifo", final_top_k=1, final_examples=16,
                         final_attacks=["apgd-ce"], mlflow=tracking_uri)
    data["train"]["optim"]["epochs"] = 2
    experiment = run_search(SearchConfig.model_validate(data), tmp_path / "tracked").experiment
    client = MlflowClient(tracking_uri)
    (mlflow_experiment,) = [e for e in client.search_experiments() if e.name == "clustune"]
    runs = client.search_runs([mlflow_experiment.experiment_id],
                              filter_string=f"tags.`clustune.experiment` = "
                                            f"'{experiment.path.uri}'")
    (parent,) = [r for r in runs if r.data.tags["clustune.trial_id"] == "-"]
    assert parent.info.run_name == "tracked" and parent.info.status == "FINISHED"
    assert parent.data.params["num_samples"] == "3"
    children = {r.data.tags["clustune.trial_id"]: r for r in runs if r is not parent
                and r.data.tags["clustune.trial_id"] != "-"}
    assert set(children) == {t.trial_id for t in experiment.trials}
    for trial in experiment.trials:
        run = children[trial.trial_id]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        assert not any("@" in k for k in run.data.params)  # the resolved values only
        assert run.data.params["clusters.l"] == str(trial.params["clusters.l"])
        history = client.get_metric_history(run.info.run_id, "val_robust_acc")
        assert sorted((m.step, m.value) for m in history) == \
            [(r["training_iteration"], pytest.approx(r["val_robust_acc"]))
             for r in trial.history]
    (final,) = experiment.final_results()
    audited = client.get_run(children[final["trial_id"]].info.run_id)
    head = final["head"]
    assert audited.data.metrics[f"audit/{head}/worst_case_acc"] == \
        pytest.approx(final["worst_case_acc"])
    assert audited.data.metrics[f"audit/{head}/acc_apgd-ce"] == \
        pytest.approx(final["per_attack_acc"]["apgd-ce"])
    assert f"audit/{head}/flags" in audited.data.tags


def test_an_unreachable_tracking_uri_is_refused_before_ray(tmp_path, digits_search):
    data = digits_search(mlflow=f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(UsageError, match="not a reachable MLflow tracking URI"):
        run_search(SearchConfig.model_validate(data), tmp_path / "exp")
    assert not (tmp_path / "exp").exists()
