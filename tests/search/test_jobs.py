"""The README's cluster path for real: a search submitted with `ray job submit` to a two-node
Ray cluster whose dashboard (the Jobs API) listens on 127.0.0.1, then read with
`clustune status`. Ray's job server is part of its dashboard: the test set-up installs
ray[default], as `clustune[cluster]` and cluster.yaml's nodes do."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent  # ray and clustune, installed beside this Python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jobs_address():
    """A head (dashboard on loopback) and a worker node, one CPU each."""
    from ray.cluster_utils import Cluster

    port = _free_port()
    node = {"num_cpus": 1, "object_store_memory": 80 * 1024**2}
    # each node's agent (it runs the jobs) on a port of its own: the default one belongs to
    # whichever Ray of this machine took it first (the test session's own, say)
    cluster = Cluster(initialize_head=True, head_node_args={
        **node, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": port, "dashboard_agent_listen_port": _free_port()})
    cluster.add_node(**node, dashboard_agent_listen_port=_free_port())
    cluster.wait_for_nodes()
    yield f"http://127.0.0.1:{port}"
    cluster.shutdown()


def test_a_search_submitted_as_a_ray_job_runs_on_the_cluster(jobs_address, tmp_path,
                                                              digits_search):
    data = digits_search(num_samples=2, scheduler="fifo")
    data["train"]["optim"]["epochs"] = 2
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(data))
    deadline = time.monotonic() + 300
    while True:  # until the head's job agent has registered (Ray: "try again later")
        submit = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", jobs_address, "--",
             str(BIN / "clustune"), "search", "--config", str(config), "--storage",
             str(tmp_path), "--name", "submitted"], capture_output=True, text=True,
            timeout=900)
        out = submit.stdout + submit.stderr
        if "No available agent to submit job" not in out or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert submit.returncode == 0, out
    assert "succeeded" in out and "search ended: trials 2/2 done" in out, out
    status = subprocess.run([str(BIN / "clustune"), "status", str(tmp_path / "submitted")],
                            capture_output=True, text=True, timeout=300)
    shown = status.stdout + status.stderr  # the console writes to stderr
    assert status.returncode == 0, shown
    assert shown.count("TERMINATED") == 2, shown
