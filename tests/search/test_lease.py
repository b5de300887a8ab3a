"""One writer per experiment: a second `resume` of an interrupted search is refused in one line
naming the holder while the first finishes every sample once; the lease of a SIGKILLed holder
is taken over; in a bucket, a lease not renewed (another host) or whose holder is gone (this
host) is stale, and of two writers that race, one wins."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml

from analysis import load_experiment, read_meta
from search import UsageError
from trainable import storage_path


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 300) -> None:
    """Until path exists (the exact event), failing early if proc ends first."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.log.read_text() if hasattr(proc, "log") else proc
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture
def interrupted(tmp_path, digits_search, clustune, monkeypatch):
    """A search of 4 trials stopped by a Ctrl-C at its second result (exit 130)."""
    data = digits_search(num_samples=4, max_concurrent=1, scheduler="fifo")
    data["train"]["optim"]["epochs"] = 2
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("CLUSTUNE_DRIVER_FAULT", "trial_result:2:sigint")
    proc = clustune("search", "--config", str(config), "--storage", str(tmp_path / "store"),
                    "--name", "exp")
    assert proc.wait(timeout=300) == 130, proc.log.read_text()
    monkeypatch.delenv("CLUSTUNE_DRIVER_FAULT")
    return tmp_path / "store" / "exp"


def _every_sample_once(experiment: Path) -> None:
    after = load_experiment(experiment)
    assert len(after.trials) == 4
    for trial in after.trials:
        assert trial.status == "TERMINATED"
        assert [r["training_iteration"] for r in trial.history] == [1, 2]
    meta = read_meta(experiment)
    study = optuna.load_study(study_name=meta.study_name, storage=meta.study_storage)
    assert [t.state.name for t in study.trials].count("COMPLETE") == 4


def test_a_second_resume_is_refused_while_the_first_finishes(interrupted, clustune):
    first = clustune("resume", str(interrupted))
    _wait_for(interrupted / "lease.json", first)  # the lease is held from here on
    holder = json.loads((interrupted / "lease.json").read_text())
    second = clustune("resume", str(interrupted))
    assert second.wait(timeout=120) == 2
    err = second.log.read_text().strip()
    assert err.startswith("clustune: error:") and "\n" not in err, err
    assert f"being written by clustune resume (pid {holder['pid']} on {socket.gethostname()}"\
        in err
    assert first.wait(timeout=400) == 0, first.log.read_text()
    assert not (interrupted / "lease.json").exists()  # released
    _every_sample_once(interrupted)


def test_the_lease_of_a_killed_holder_is_taken_over(interrupted, clustune, monkeypatch):
    monkeypatch.setenv("CLUSTUNE_DRIVER_FAULT", "trial_result:1:sigkill")
    killed = clustune("resume", str(interrupted))
    assert killed.wait(timeout=300) == -9, killed.log.read_text()
    assert json.loads((interrupted / "lease.json").read_text())["pid"] == killed.pid
    monkeypatch.delenv("CLUSTUNE_DRIVER_FAULT")
    again = clustune("resume", str(interrupted))
    assert again.wait(timeout=400) == 0, again.log.read_text()
    _every_sample_once(interrupted)


HOLD = """
import sys, time
from search._lease import hold_lease
from trainable import storage_path
with hold_lease(storage_path(sys.argv[1]), "clustune evaluate"):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(location: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, location], stdout=subprocess.PIPE,
                            text=True, env={**os.environ})
    assert proc.stdout.readline().strip() == "held"  # the exact event: the lease is its
    return proc


def _hold_once(location: str | Path, command: str) -> None:
    from search._lease import hold_lease

    with hold_lease(storage_path(location), command):
        pass


def _experiment(tmp_path) -> Path:
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "clustune.json").write_text("{}")
    return folder


def test_a_local_lease_names_its_holder_and_dies_with_it(tmp_path):
    from search._lease import hold_lease

    folder = _experiment(tmp_path)
    other = _holder(str(folder))
    try:
        with pytest.raises(UsageError, match=rf"being written by clustune evaluate \(pid "
                                             rf"{other.pid} on "):
            _hold_once(folder, "clustune resume")
    finally:
        other.kill()
        other.wait()
    # the kernel released it; nested holds by one process are one hold
    with hold_lease(storage_path(folder), "clustune resume"), \
            hold_lease(storage_path(folder), "clustune evaluate"):
        assert json.loads((folder / "lease.json").read_text())["command"] == "clustune resume"
    assert not (folder / "lease.json").exists()


@pytest.fixture
def bucket(monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}",
                       "AWS_ACCESS_KEY_ID": "lease", "AWS_SECRET_ACCESS_KEY": "lease",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    name = f"lease-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    monkeypatch.setattr("search._lease.SETTLE_S", 0.2)
    yield f"s3://{name}/exp"
    server.stop()


def _write_lease(location: str, **holder) -> None:
    lease = {"command": "clustune resume", "host": "elsewhere", "pid": 1, "started": "t",
             "token": "theirs", "renewed": time.time(), **holder}
    (storage_path(location) / "lease.json").atomic_write_text(json.dumps(lease))


def test_a_bucket_lease_is_stale_when_not_renewed_or_its_holder_is_gone(bucket):
    from search._lease import TTL_S, hold_lease

    _write_lease(bucket)  # another host, renewed just now: held
    with pytest.raises(UsageError, match="clustune resume \\(pid 1 on elsewhere"):
        _hold_once(bucket, "clustune search")
    _write_lease(bucket, renewed=time.time() - TTL_S - 1)  # not renewed in time: stale
    with hold_lease(storage_path(bucket), "clustune search"):
        mine = json.loads((storage_path(bucket) / "lease.json").read_text())
        assert mine["pid"] == os.getpid()
    assert not (storage_path(bucket) / "lease.json").exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    _write_lease(bucket, host=socket.gethostname(), pid=int(gone))  # this host, process gone
    with hold_lease(storage_path(bucket), "clustune search"):
        pass


def test_of_two_bucket_writers_that_race_the_last_write_wins(bucket, monkeypatch):
    """Both found no lease; the rival wrote after us, within the settle time: refused."""
    import search._lease as lease

    monkeypatch.setattr(lease, "_settle", lambda: _write_lease(bucket, token="rival",
                                                                command="clustune confirm"))
    with pytest.raises(UsageError, match="being written by clustune confirm"):
        _hold_once(bucket, "clustune search")
