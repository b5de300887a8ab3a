"""A Ctrl-C (SIGINT to the driver) landed at an exact event, then `clustune resume`: every trial
ends with each epoch run exactly once. The interrupt comes from search.testing's fault injection
(``CLUSTUNE_DRIVER_FAULT``), at the moment that used to lose a checkpoint: after a trial's result
is recorded and before its checkpoint is."""

from __future__ import annotations

import json

import pytest
import yaml

from analysis import load_experiment


def _raw_epochs(trial) -> list[int]:
    """Every epoch a trial's result.json records, repeats included (no de-duplication)."""
    lines = (trial.path / "result.json").read_text().splitlines()
    return [json.loads(line)["training_iteration"] for line in lines]


@pytest.mark.parametrize("event", ["trial_result:3", "checkpoint:4"])
def test_a_ctrl_c_then_resume_runs_every_epoch_once(tmp_path, digits_search, clustune,
                                                    monkeypatch, event):
    data = digits_search(num_samples=5, max_concurrent=2, scheduler="fifo")
    data["train"]["optim"]["epochs"] = 3
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(data))
    exp_dir = tmp_path / "store" / "interrupted"
    monkeypatch.setenv("CLUSTUNE_DRIVER_FAULT", f"{event}:sigint")
    proc = clustune("search", "--config", str(config), "--storage", str(tmp_path / "store"),
                    "--name", "interrupted")
    assert proc.wait(timeout=300) == 130, proc.log.read_text()  # scripts stop here
    out = proc.log.read_text()
    assert out.rstrip().splitlines()[-1].startswith("search stopped early after"), out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "stopping once every running trial's last epoch is checkpointed" in out
    assert f"continue it with `clustune resume {exp_dir}`" in out, out
    before = load_experiment(exp_dir)
    assert sum(t.epochs for t in before.trials) < 15, "the interrupt stopped nothing"
    for trial in before.trials:  # each recorded epoch has its checkpoint
        epochs = _raw_epochs(trial)
        assert epochs == list(range(1, len(epochs) + 1)), (trial.trial_id, epochs)
        if epochs and trial.status != "TERMINATED":
            kept = [int(c.parent.name.split("_")[-1]) + 1 for c in trial.checkpoints()]
            assert max(kept) == epochs[-1], (trial.trial_id, epochs, kept)

    monkeypatch.delenv("CLUSTUNE_DRIVER_FAULT")
    resume = clustune("resume", str(exp_dir))
    assert resume.wait(timeout=400) == 0, resume.log.read_text()
    out = resume.log.read_text()
    # the live view of the resumed search counts the trials finished before the interrupt
    assert "search ended: trials 5/5 done (5 finished)" in out, out
    after = load_experiment(exp_dir)
    assert len(after.trials) == 5
    for trial in after.trials:
        assert trial.status == "TERMINATED", out
        assert _raw_epochs(trial) == [1, 2, 3], (trial.trial_id, _raw_epochs(trial))
