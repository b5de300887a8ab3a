"""`clustune confirm` on digits: the best configuration and a baseline retrained with new seeds
as Ray trials, audited (with APGD-CE + APGD-T, the cheaper audit for repeats), summarised as
mean, sd and a 95 % interval; shown by status, best and report, and carried by the export;
running it again continues instead of retraining."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from scipy import stats

from analysis import (
    best_configs,
    export_experiment,
    load_confirmations,
    load_experiment,
    write_report,
)
from search import SearchConfig, run_confirm, run_search
from search.cli import main

T_975_DF1 = 12.706204736174698  # Student's t, 97.5 % quantile, one degree of freedom


@pytest.fixture(scope="module")
def confirmed(ray_session, tmp_path_factory, digits_search):
    data = digits_search(num_samples=3, final_top_k=1, final_examples=16, scheduler="fifo")
    data["train"]["optim"]["epochs"] = 2
    path = tmp_path_factory.mktemp("confirm") / "exp"
    run_search(SearchConfig.model_validate(data), path)
    outcome = run_confirm(path, top=1, seeds=2, baselines=["pgd_at"], examples=16,
                          attacks=AUDIT)
    assert not outcome.search.stopped_early
    return path, outcome.confirmations


AUDIT = ["apgd-ce", "apgd-t"]


def test_the_best_config_and_a_baseline_are_retrained_with_new_seeds(confirmed):
    path, found = confirmed
    experiment = load_experiment(path)
    best = experiment.proxy_ranked()[0]  # the only audited trial: first in the ranking too
    assert [c.config for c in found] == [best.trial_id, "pgd_at"]
    runs = load_experiment(path / "confirm")
    assert len(runs.trials) == 4
    assert all(t.status == "TERMINATED" and t.epochs == 2 for t in runs.trials)
    original = experiment.trial_config(best).model_dump()
    for trial in runs.trials:
        cfg = runs.trial_config(trial).model_dump()
        name, _, seed = trial.params["point"].partition("@seed")
        assert cfg["seed"] == int(seed) != original["seed"]
        if name == "pgd_at":  # the same budget: warm start, epochs, images per step
            assert cfg["objective"]["variant"] == "pgd_at"
            for same in ("warm_start", "optim", "data", "model"):
                assert cfg[same] == original[same]
            assert runs.trial_config(trial).batch_size == experiment.trial_config(best).batch_size
        else:
            assert {**cfg, "seed": original["seed"]} == original  # only the seed differs


def test_the_summary_is_the_mean_and_t_interval_of_the_audits(confirmed):
    path, found = confirmed
    finals = {r["trial_id"]: r for r in load_experiment(path / "confirm").final_results()}
    assert len(finals) == 4
    for c in found:
        assert len(c.values) == 2 and c.n_examples == 16
        mean = sum(c.values) / 2
        sd = abs(c.values[0] - c.values[1]) / math.sqrt(2)
        assert c.mean == pytest.approx(mean) and c.sd == pytest.approx(sd)
        half = T_975_DF1 * sd / math.sqrt(2)
        assert c.interval == pytest.approx((mean - half, mean + half))
    for r in finals.values():  # the audit ran the attacks asked for, and only those
        assert r["version"] == "custom" and r["attacks"] == AUDIT
        assert list(r["per_attack_acc"]) == AUDIT
    assert {c.audit for c in found} == {"AutoAttack's APGD-CE + APGD-T"}
    worst = sorted(r["worst_case_acc"] for r in finals.values())
    assert sorted(v for c in found for v in c.values) == worst
    assert statistics.fmean(worst) == pytest.approx(statistics.fmean(
        [v for c in found for v in c.values]))


def test_each_configuration_is_compared_with_the_baseline_by_a_welch_interval(confirmed):
    _, found = confirmed
    best, baseline = found
    assert (best.baseline, baseline.baseline) == (False, True)
    a, b = best.values, baseline.values
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    half = 0.0  # seeds that all agree leave no spread to widen the interval
    if va + vb:
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
        half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert best.minus(baseline) == pytest.approx((diff, diff - half, diff + half))
    assert baseline.minus(baseline)[0] == 0


def test_status_best_and_report_show_the_confirmation(confirmed, tmp_path, capsys):
    path, found = confirmed
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    assert "audited robust accuracy across seeds" in capsys.readouterr().err
    (best,) = best_configs(path, top=1, out=tmp_path)
    assert f"confirmed with new seeds (clustune confirm): {found[0].summary()}" in \
        best.read_text()
    diff, low, high = found[0].minus(found[1])
    assert (f"# minus baseline pgd_at ({found[1].mean:.3f} mean): {diff:+.3f}, 95 % Welch "
            f"interval {low:+.3f} to {high:+.3f}\n") in best.read_text()
    report = write_report(path, tmp_path / "r.md").read_text()
    assert "## Confirmation across seeds" in report and "| pgd_at | 2 |" in report
    assert "AutoAttack's APGD-CE + APGD-T" in report
    assert "minus pgd_at (points)" in report
    assert f"| {100 * diff:+.1f} ({100 * low:+.1f} to {100 * high:+.1f}) |" in report


def test_the_export_carries_the_confirmation(confirmed, tmp_path):
    path, found = confirmed
    written = export_experiment(path, tmp_path / "export")
    assert written["confirm.trials"].local == tmp_path / "export" / "confirm" / "trials.parquet"
    assert load_confirmations(tmp_path / "export") == found
    report = write_report(tmp_path / "export", tmp_path / "r.md").read_text()
    assert "## Confirmation across seeds" in report and "| pgd_at | 2 |" in report
    export_experiment(tmp_path / "export", tmp_path / "again")  # an export of the export
    assert load_confirmations(tmp_path / "again") == found


def test_running_it_again_continues_and_retrains_nothing(confirmed):
    path, found = confirmed
    before = {t.trial_id: t.history for t in load_experiment(path / "confirm").trials}
    again = run_confirm(path, seeds=2, baselines=["pgd_at"])  # the others as recorded
    assert again.confirmations == found
    after = {t.trial_id: t.history for t in load_experiment(path / "confirm").trials}
    assert after == before
    assert json.loads((path / "confirm" / "clustune.json").read_text())["name"] == "confirm"


@pytest.mark.parametrize(("option", "recorded"), [
    (["--seeds", "3"], "--seeds 2"), (["--top", "2"], "--top 1"),
    (["--baseline", "trades"], "--baseline pgd_at"), (["--examples", "500"], "--examples 16"),
    (["--attacks", "apgd-ce"], "--attacks apgd-ce,apgd-t")])
def test_continuing_with_other_options_is_refused(confirmed, capsys, option, recorded):
    path, _ = confirmed
    before = (path / "confirm" / "clustune.json").read_text()
    capsys.readouterr()
    assert main(["confirm", str(path), *option]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clustune: error: ") and len(err.splitlines()) == 1, err
    assert f"was started with {recorded}:" in err, err
    assert (path / "confirm" / "clustune.json").read_text() == before


@pytest.mark.parametrize("name", ["pgd_at", "trades"])
def test_a_baseline_keeps_the_winners_budget_and_threat_model(name):
    """A magnet_adv winner with every research knob: the baseline keeps its adversarial warm
    start, epochs, batch, norm and radius; the winner's attack target and head term go."""
    from search._confirm import baseline_config
    from trainable import TrainConfig

    winner = TrainConfig.model_validate({
        "data": {"dataset": "digits"}, "clusters": {"k": 2, "l": 8, "m": 6, "d": 4},
        "attack": {"norm": "l2", "steps": 3, "target": "head"},
        "objective": {"variant": "magnet_adv", "lam": 3.0, "lam_head_adv": 1.0},
        "warm_start": {"ce_epochs": 2, "variant": "trades", "eps_ramp": True},
        "optim": {"epochs": 5, "batches_per_epoch": 7}})
    baseline = baseline_config(winner, name)
    assert baseline.objective.variant == name and baseline.objective.lam_head_adv == 0
    assert baseline.warm_start == winner.warm_start and baseline.optim == winner.optim
    assert baseline.batch_size == winner.batch_size == 24
    assert (baseline.attack.norm, baseline.eps, baseline.attack.steps) == \
        ("l2", winner.eps, 3)
    assert baseline.attack.target == "magnet"  # the default, unused by the baselines
    assert name != "trades" or baseline.objective.lam == 3.0
