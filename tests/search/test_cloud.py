"""An experiment that lives in cloud storage, for real: a local S3-compatible server (moto in
server mode, on loopback) and a two-node Ray cluster (``ray.cluster_utils.Cluster``), both
started here. A search whose driver is killed at an exact event, `clustune resume`, the final
stage, then status, export, best, report and the Optuna study, all from the bucket, nothing
written to a local experiment folder, and the credentials in no file: not in Ray's session
folder (Ray Tune would copy them into its trials' runtime environment, which Ray logs), not
in the bucket, not in the export."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml

BUCKET = "clustune-test"
KEY_ID, SECRET = "AKIACLUSTUNE7KEYID42", "clustune-secret-9f3b2e7d1c"  # distinctive: grep-able


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 with an empty bucket; the AWS variables point every
    process started from here (cluster nodes, CLI drivers) at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": KEY_ID,
                           "AWS_SECRET_ACCESS_KEY": SECRET,
                           "AWS_DEFAULT_REGION": "us-east-1"}.items():
            env.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    """A head and a worker node, one CPU each: trials run on both. Its nodes inherit the
    credentials from this process's environment, as a node's own credentials."""
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "object_store_memory": 80 * 1024**2}
    cluster = Cluster(initialize_head=True,
                      head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def two_nodes(cluster) -> str:
    return cluster.address


def _files_holding(folder: Path, secrets: tuple[str, ...]) -> list[str]:
    return [str(f) for f in folder.rglob("*") if f.is_file() and not f.is_symlink()
            and any(s.encode() in f.read_bytes() for s in secrets)]


def _objects(prefix: str) -> list[str]:
    fs, path = pafs.FileSystem.from_uri(f"s3://{BUCKET}/{prefix}")
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    return sorted(i.path.removeprefix(f"{path}/") for i in fs.get_file_info(selector)
                  if i.type == pafs.FileType.File)


def test_a_search_in_a_bucket_on_two_nodes_survives_a_killed_driver(
        s3_endpoint, cluster, two_nodes, tmp_path, digits_search, clustune, monkeypatch):
    from analysis import load_experiment

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    data = digits_search(True, num_samples=3, max_concurrent=2, scheduler="fifo", final_top_k=1,
                         final_examples=8)
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(data))
    uri = f"s3://{BUCKET}/experiments/cloudy"

    # the driver kills itself (SIGKILL) once the third checkpoint is recorded
    monkeypatch.setenv("CLUSTUNE_DRIVER_FAULT", "checkpoint:3:sigkill")
    first = clustune("search", "--config", str(tmp_path / "search.yaml"), "--storage",
                     f"s3://{BUCKET}/experiments", "--name", "cloudy", "--address", two_nodes)
    assert first.wait(timeout=300) == -9, first.log.read_text()
    stored = _objects("experiments/cloudy")
    assert "clustune.json" in stored and any(s.startswith("warm_start/") for s in stored)

    monkeypatch.delenv("CLUSTUNE_DRIVER_FAULT")
    resumed = clustune("resume", uri, "--address", two_nodes)
    assert resumed.wait(timeout=400) == 0, resumed.log.read_text()
    out = resumed.log.read_text()
    assert "final stage:" in out, out

    experiment = load_experiment(uri)
    assert len(experiment.trials) == 3
    for trial in experiment.trials:
        assert trial.status == "TERMINATED"
        assert [r["training_iteration"] for r in trial.history] == [1, 2, 3, 4]
    assert len(experiment.final_results()) == 1

    for command in (["status", uri], ["export", uri], ["best", uri, "--top", "1"],
                    ["report", uri]):
        proc = clustune(*command)
        assert proc.wait(timeout=120) == 0, proc.log.read_text()
    stored = _objects("experiments/cloudy")
    for name in ("clustune.json", "optuna.db", "export/trials.parquet",
                 "export/epochs.parquet", "report.html"):
        assert name in stored, stored
    assert any(s.startswith("final/") and s.endswith(".json") for s in stored)
    assert any(s.startswith("best/01-") for s in stored)
    assert sum(s.endswith("/params.json") for s in stored) == 3

    import optuna

    study = optuna.load_study(study_name=experiment.meta.study_name,
                              storage=experiment.open_study())
    assert len(study.trials) == 3  # the study went with the experiment: the dashboard's view
    assert list(work.iterdir()) == [], "nothing is written to a local experiment folder"

    # the trials read and wrote the bucket with their nodes' credentials; none is in a file
    session = Path(cluster.head_node.get_session_dir_path())
    assert (session / "logs").is_dir()
    assert _files_holding(session, (KEY_ID, SECRET)) == []
    fs, root = pafs.FileSystem.from_uri(f"s3://{BUCKET}/experiments/cloudy")
    leaked = [i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
              if i.type == pafs.FileType.File
              and any(s.encode() in fs.open_input_stream(i.path).read() for s in (KEY_ID, SECRET))]
    assert leaked == []


def test_a_bad_location_is_refused_in_one_line_before_ray_starts(s3_endpoint, clustune,
                                                                tmp_path):
    for storage, says in ((f"s3://no-such-bucket-{os.getpid()}/x", "no such bucket"),
                          ("nfs://host/x", "not a storage location")):
        proc = clustune("search", "--storage", storage, "--name", "x")
        assert proc.wait(timeout=60) == 2
        err = proc.log.read_text().strip()
        assert err.startswith("clustune: error:") and says in err and "\n" not in err, err
    proc = clustune("status", f"s3://{BUCKET}/missing")
    assert proc.wait(timeout=60) == 2
    assert "is not a clustune experiment" in proc.log.read_text()


def test_credentials_the_store_refuses_are_a_one_line_error(clustune, tmp_path, monkeypatch):
    """A second moto server that checks credentials (none are valid there)."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline, "moto did not start"
            time.sleep(0.1)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        monkeypatch.chdir(tmp_path)
        proc = clustune("search", "--storage", "s3://any-bucket/x", "--name", "x")
        assert proc.wait(timeout=60) == 2
        err = proc.log.read_text().strip()
        assert err.startswith("clustune: error: s3://any-bucket") and "ACCESS_DENIED" in err
        assert "\n" not in err and list(tmp_path.iterdir()) == [proc.log], err
    finally:
        server.kill()
        server.wait()


def test_storage_paths_read_and_write_a_bucket(s3_endpoint):
    from trainable import storage_path

    root = storage_path(f"s3://{BUCKET}/unit")
    (root / "a" / "params.json").atomic_write_text(json.dumps({"k": 1}))
    (root / "b" / "params.json").atomic_write_text("{}")
    (root / "b" / "checkpoint_000000" / "state.pt").atomic_write_bytes(b"\0")
    assert [p.parent.name for p in root.glob("*/params.json")] == ["a", "b"]
    assert [str(p) for p in root.glob("*/checkpoint_*/state.pt")] == \
        [f"s3://{BUCKET}/unit/b/checkpoint_000000/state.pt"]
    assert json.loads((root / "a" / "params.json").read_text()) == {"k": 1}
    assert root.has_files() and not (root / "c").has_files()
    (root / "a" / "params.json").unlink()
    assert not (root / "a" / "params.json").exists()
