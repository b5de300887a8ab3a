"""A search interrupted with Ctrl-C (SIGINT to the driver) resumes to the full trial count,
keeping finished trials and running none twice."""

from __future__ import annotations

import signal
import time

import yaml

from analysis import load_experiment


def _trials(path) -> list:
    try:
        return load_experiment(path).trials
    except Exception:  # noqa: BLE001 - the folder is still being created
        return []


def _finished(path) -> list:
    return [t for t in _trials(path) if t.epochs == 2]


def _interruptible(path) -> bool:
    """Two trials finished and a later one under way (trials run one at a time), so the
    interrupt lands inside a trial, not as one ends."""
    epochs = [t.epochs for t in _trials(path)]
    return epochs.count(2) >= 3 or (epochs.count(2) >= 2 and 1 in epochs)


def test_sigint_then_resume_runs_every_trial_once(tmp_path, digits_search, clustune):
    data = digits_search(num_samples=5, max_concurrent=1, scheduler="fifo")
    data["train"]["optim"]["epochs"] = 2
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(data))
    exp_dir = tmp_path / "store" / "interrupted"
    proc = clustune("search", "--config", str(config), "--storage", str(tmp_path / "store"),
                     "--name", "interrupted")
    deadline = time.monotonic() + 240
    while not _interruptible(exp_dir):
        assert proc.poll() is None, proc.log.read_text()
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=180)
    out = proc.log.read_text()
    before = {t.trial_id: t.history for t in _finished(exp_dir)}
    assert 2 <= len(before) < 5, out
    assert "clustune resume" in out

    resume = clustune("resume", str(exp_dir))
    resume.wait(timeout=400)
    out = resume.log.read_text()
    assert resume.returncode == 0, out
    # the live view of the resumed search counts the trials finished before the interrupt
    assert "search ended: trials 5/5 done (5 finished)" in out, out
    after = load_experiment(exp_dir)
    assert len(after.trials) == 5
    assert all(t.status == "TERMINATED" and t.epochs == 2 for t in after.trials), out
    for trial in after.trials:
        if trial.trial_id in before:  # finished before the interrupt: untouched
            assert trial.history == before[trial.trial_id]
