"""The trial table as a user reads it: the resolved parameters (the sampler's internal draws
only on request), each trial of a quick search on at most two lines of a 160-column terminal."""

from __future__ import annotations

import io

import optuna
import pytest
from rich.console import Console

from analysis import Experiment, ExperimentMeta, TrialRecord, to_rich, trials_table
from search import load_search_config, suggest
from trainable import storage_path


@pytest.fixture
def quick_experiment(tmp_path) -> Experiment:
    """Twelve trials drawn from the quick preset's space, three epochs each."""
    cfg = load_search_config("quick")
    base = cfg.base_dict()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trials = []
    for i in range(12):
        trial = study.ask()
        resolved = suggest(trial, cfg, base)
        params = {**trial.params, **resolved}  # the draws and the resolved values, as Tune's
        study.tell(trial, 0.0)
        history = [{"training_iteration": e, "val_robust_acc": 0.1 * e, "val_clean_acc": 0.5,
                    "val_pgd_acc": 0.2, "val_margin": 0.3, "time_total_s": 60.0 * e}
                   for e in (1, 2, 3)]
        trials.append(TrialRecord(f"{i:08x}", storage_path(tmp_path), "TERMINATED", params,
                                  history))
    meta = ExperimentMeta(name="quick-20261207-120000", created="2026-12-07T12:00:00",
                          study_name="clustune-quick", study_storage="sqlite:///unused",
                          config=cfg.model_dump(mode="json"), base=base)
    return Experiment(storage_path(tmp_path / "quick-20261207-120000"), meta, trials)


def _render(table, brief: bool = True) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=160).print(to_rich(table, brief))
    return out.getvalue().splitlines()


def test_each_trial_of_a_quick_search_takes_at_most_two_lines(quick_experiment):
    lines = _render(trials_table(quick_experiment))
    body = [line for line in lines if line.startswith("│")]
    starts = [i for i, line in enumerate(body) if line.split("│")[1].strip()]  # a rank
    assert len(starts) == 12
    heights = [b - a for a, b in zip(starts, [*starts[1:], len(body)], strict=True)]
    assert max(heights) <= 2, "\n".join(lines)
    assert all(len(line) <= 160 for line in lines)


def test_tables_show_resolved_parameters_and_draws_only_on_request(quick_experiment):
    shown = "\n".join(_render(trials_table(quick_experiment)))
    assert "clusters.l=" in shown and "@" not in shown
    assert "objective.variant=" not in shown  # the variant leads the cell already
    variants = [row[2] for row in trials_table(quick_experiment, draws=True).rows]
    assert any("clusters.l@fraction=" in v for v in variants)


def test_the_terminal_leaves_out_columns_with_nothing_to_say(quick_experiment):
    table = trials_table(quick_experiment)
    brief_header = _render(table)[2]
    assert "problem" not in brief_header and "audited" not in brief_header
    assert "problem" in "".join(_render(table, brief=False)[:4])
