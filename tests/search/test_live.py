"""The live view: counts by outcome, the best trial so far and time left, from Tune's trial
list; a plain line per event in a log, and Ray Tune's own output only with --verbose."""

from __future__ import annotations

from types import SimpleNamespace

import yaml

from search._live import LiveView


def _trial(tid: str, status: str, best: float | None = None, **last) -> SimpleNamespace:
    analysis = {} if best is None else {"val_robust_acc": {"max": best, "min": best}}
    return SimpleNamespace(trial_id=tid, status=status, last_result=last,
                           metric_analysis=analysis)


def test_counts_best_and_estimate_come_from_tunes_trials(capsys):
    view = LiveView(total=6, metric="val_robust_acc", mode="max")
    trials = [_trial("a", "TERMINATED", 0.30, trial_complete=True),  # before a resume
              _trial("b", "TERMINATED", 0.45, trial_complete=False),  # stopped by ASHA
              _trial("c", "TERMINATED", 0.9, diverged="loss became nan"),
              _trial("d", "ERROR"), _trial("e", "RUNNING", 0.2), _trial("f", "PENDING")]
    line = view.line(trials)
    assert line.startswith("trials 4/6 done (1 finished, 1 stopped early, 1 diverged, 1 failed"
                           "), 1 running | best val_robust_acc 0.45 (b) | elapsed 0m00s, left ~?")
    view.on_trial_result(0, trials, trials[4], {"val_robust_acc": 0.5})
    view.on_trial_complete(0, trials, trials[4])  # Tune sets the status afterwards
    out = capsys.readouterr().err.splitlines()
    assert out[0].startswith("new best e: trials 4/6 done") and "best val_robust_acc 0.5 (e)" \
        in out[0]
    assert out[1].startswith("trial e stopped early: trials 5/6 done (1 finished, 2 stopped "
                             "early, 1 diverged, 1 failed), 0 running")
    assert "left ~" in out[1] and "left ~?" not in out[1]  # one trial ended: a pace


def test_the_view_survives_tunes_pickling_without_its_state():
    import pickle

    view = LiveView(total=3, metric="val_robust_acc", mode="min")
    view.best = ("x", 0.1)
    again = pickle.loads(pickle.dumps(view))
    assert (again.total, again.metric, again.mode, again.best) == (3, "val_robust_acc", "min",
                                                                   None)


def test_a_search_log_shows_the_live_view_not_rays_output(tmp_path, digits_search, clustune):
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(digits_search(num_samples=3, grace_period=1,
                                                   reduction_factor=2)))
    quiet = clustune("search", "--config", str(config), "--storage", str(tmp_path),
                     "--name", "quiet")
    assert quiet.wait(timeout=300) == 0, quiet.log.read_text()
    log = quiet.log.read_text()
    assert "search ended: trials 3/3 done (" in log
    assert log.count("new best") >= 1 and log.count(": trials ") >= 4
    for ray_output in ("Trial status", "Trial ClusteringTrainable", "tensorboard --logdir=",
                       "Checkpoint successfully created"):
        assert ray_output not in log, ray_output
    one = digits_search(num_samples=1, scheduler="fifo")  # Ray's own output: one short trial
    one["train"]["optim"]["epochs"] = 1
    config.write_text(yaml.safe_dump(one))
    verbose = clustune("search", "--config", str(config), "--storage", str(tmp_path),
                       "--name", "verbose", "--verbose")
    assert verbose.wait(timeout=300) == 0, verbose.log.read_text()
    assert "Trial status" in verbose.log.read_text() or \
        "Trial ClusteringTrainable" in verbose.log.read_text()
