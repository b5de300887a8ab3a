"""One Ray for the whole session (small object store, no usage stats), digits search configs,
and `clustune` subprocesses that leave no Ray process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.testing import TRAIN

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, object_store_memory=80 * 1024**2, include_dashboard=False,
                 logging_level="ERROR", configure_logging=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_search():
    """A factory of tiny searches on scikit-learn's digits: seconds per trial."""
    return _digits_search


def _digits_search(warm_start: bool = False, **search) -> dict:
    """The tiny digits training of analysis.testing (4 epochs here) over a K, L, lambda space;
    with warm_start, the trials start from a shared 1-epoch CE warm start (each costs a CLI
    search about 8 s here, so only the tests of that path train one)."""
    return {
        "train": {**TRAIN, "optim": {**TRAIN["optim"], "epochs": 4},
                  "warm_start": {"ce_epochs": 1 if warm_start else 0}},
        "space": {
            "clusters.k": {"type": "int", "low": 1, "high": 2},
            "clusters.l": {"type": "int", "low": 2, "high": 20},
            "objective.lam": {"type": "float", "low": 0.5, "high": 10.0, "log": True},
        },
        "search": {"num_samples": 4, "max_concurrent": 2, "final_top_k": 0, **search},
    }


def _session_pids(sid: int) -> list[int]:
    """The live processes of session sid (from /proc): a driver started in a session of its own
    and the Ray processes it started."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, _, _, session = (entry / "stat").read_text().rpartition(")")[2].split()[:4]
            except OSError:  # exited meanwhile
                continue
            if int(session) == sid and state != "Z":
                pids.append(int(entry.name))
    return pids


def _kill_session(sid: int) -> None:
    """SIGKILL a whole session at once, as a crash of the machine would stop it."""
    for pid in _session_pids(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def clustune(tmp_path):
    """clustune(*args) -> Popen of the real CLI in a session of its own, its output in
    proc.log; proc.crash() SIGKILLs the whole session. With CLUSTUNE_DRIVER_FAULT set, the
    CLI runs through search.testing, which arms that fault. Afterwards every process left in
    those sessions is killed: Ray's dashboard and runtime-env agents outlive a driver killed
    with SIGKILL."""
    from search.testing import FAULT_ENV

    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        log = tmp_path / f"clustune-{len(started)}.log"
        module = "search.testing" if os.environ.get(FAULT_ENV) else "search.cli"
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-m", module, *args],
                                    env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
                                    stdout=out, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)
        proc.log = log
        proc.crash = lambda: _kill_session(proc.pid)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while _session_pids(proc.pid):
            _kill_session(proc.pid)
            assert time.monotonic() < deadline, f"processes of session {proc.pid} survive SIGKILL"
            time.sleep(0.2)
