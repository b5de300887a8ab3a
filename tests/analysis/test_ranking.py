"""The ranking every command shares: audited trials by worst-case robust accuracy, flagged ones
below every unflagged one, then unaudited ones by the proxy; flags demote only above their
thresholds."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from analysis import (
    best_configs,
    export_experiment,
    flags_of,
    load_experiment,
    rank_trials,
    write_report,
)
from search.cli import main

ZERO_GRAD = ("there are {} points with zero gradient! This might lead to unreliable evaluation "
             "with gradient-based attacks. See flags_doc.md for details.")
SQUARE = ("Square Attack has decreased the robust accuracy of {:.2f}%. This might indicate that "
          "the robustness evaluation using AutoAttack is unreliable.")


def _result(trial_id: str, head: str, aa: float, flags: list[str], n: int = 100,
            adaptive: float | None = None) -> dict:
    return {"schema_version": "clustune-robustness-v1", "trial_id": trial_id, "head": head,
            "dataset": "digits", "eps": 0.1, "norm": "Linf", "version": "standard",
            "n_examples": n, "batch_size": n, "clean_acc": 0.9, "autoattack_acc": aa,
            "ce_only_acc": aa + 0.01, "adaptive_acc": adaptive,
            "worst_case_acc": min(aa, adaptive if adaptive is not None else aa) - 0.005,
            "per_attack_acc": {"apgd-ce": aa + 0.01, "square": aa}, "masking_flags": flags}


@pytest.mark.parametrize(("message", "code", "demotes"), [
    (ZERO_GRAD.format(4), "aa_zero_grad", False),  # an honest model: a handful of points
    (ZERO_GRAD.format(19), "aa_zero_grad", False),
    (ZERO_GRAD.format(20), "aa_zero_grad", True),
    (ZERO_GRAD.format(100), "aa_zero_grad", True),  # a masked one: every point checked
    (SQUARE.format(0.5), "aa_square_gain", False),
    (SQUARE.format(6.3), "aa_square_gain", True),
    ("with only 2 classes it is not possible to use the DLR loss!", "aa_classes", False),
    ('it seems to be a randomized defense! Please use version="rand".', "aa_randomized", True),
    ("a warning nobody has seen before", "aa_other", True),
    ("ce_gap", "ce_gap", True),
    ("adaptive_gap", "adaptive_gap", True),
])
def test_flags_demote_only_above_their_thresholds(message, code, demotes):
    (flag,) = flags_of(_result("t", "logprob", 0.3, [message]))
    assert (flag.code, flag.demotes, flag.message) == (code, demotes, message)


def test_zero_gradient_evidence_counts_the_checked_batch():
    """AutoAttack checks its first batch: 500 of 1,000 images in batches of 500 is all of it."""
    result = {**_result("t", "raw", 0.5, [ZERO_GRAD.format(500)], n=1000), "batch_size": 500}
    (flag,) = flags_of(result)
    assert flag.evidence == "500 of 500 points checked" and flag.demotes


@pytest.fixture
def masked_first(fake_experiment, tmp_path):
    """The proxy's best trial (a1b2c3d4, 0.30) is masked and looks the most robust under
    AutoAttack; b2c3d4e5 (proxy 0.20) is sound with an honest handful of zero-gradient
    points; c3d4e5f6 (0.18) was not audited."""
    fake = fake_experiment(tmp_path)
    final = fake.path / "final"
    for file in final.iterdir():
        file.unlink()
    results = [_result("a1b2c3d4", "logprob", 0.60, [ZERO_GRAD.format(100)]),
               _result("a1b2c3d4", "raw", 0.55, [], adaptive=0.58),
               _result("b2c3d4e5", "logprob", 0.40, [ZERO_GRAD.format(4)])]
    for r in results:
        (final / f"{r['trial_id']}-{r['head']}.json").write_text(json.dumps(r))
    return fake.path


def test_a_masked_proxy_winner_ranks_below_a_sound_trial(masked_first):
    experiment = load_experiment(masked_first)
    assert experiment.proxy_ranked()[0].trial_id == "a1b2c3d4"
    ranking = rank_trials(experiment)
    assert [(r.trial.trial_id, r.ranked_by) for r in ranking] == [
        ("b2c3d4e5", "audit"), ("a1b2c3d4", "audit, flagged"), ("c3d4e5f6", "proxy")]
    assert ranking[0].audited_acc == pytest.approx(0.395)  # worst case, not AutoAttack's 0.40
    assert ranking[1].audited_acc == pytest.approx(0.545)  # the worse of its two heads
    assert not ranking[0].flagged and ranking[0].flags[0].code == "aa_zero_grad"
    assert ranking[1].flag_codes == "aa_zero_grad"


def test_every_command_ranks_the_masked_trial_below(masked_first, tmp_path, capsys):
    files = best_configs(masked_first, top=3, out=tmp_path / "best")
    assert [f.name for f in files] == ["01-b2c3d4e5.yaml", "02-c3d4e5f6.yaml"]
    assert "rank 1 by the audit (audited 0.395 worst case)" in files[0].read_text()
    assert "rank 3 by the proxy" in files[1].read_text()
    assert main(["best", str(masked_first), "--out", str(tmp_path / "all"),
                 "--include-flagged"]) == 0
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == [
        "01-b2c3d4e5.yaml", "02-a1b2c3d4.yaml", "03-c3d4e5f6.yaml"]

    rows = pq.read_table(export_experiment(masked_first, tmp_path / "export")["trials"])
    table = rows.select(["trial_id", "rank", "ranked_by", "flagged"]).to_pylist()
    assert table[:2] == [
        {"trial_id": "b2c3d4e5", "rank": 1, "ranked_by": "audit", "flagged": False},
        {"trial_id": "a1b2c3d4", "rank": 2, "ranked_by": "audit, flagged", "flagged": True}]
    again = rank_trials(load_experiment(tmp_path / "export"))
    assert [r.trial.trial_id for r in again] == ["b2c3d4e5", "a1b2c3d4", "c3d4e5f6"]

    report = write_report(masked_first, tmp_path / "report.md").read_text()
    trials = report.split("## All trials")[1]
    assert trials.index("| 1 | b2c3d4e5") < trials.index("| 2 | a1b2c3d4")
    assert "aa_zero_grad (below threshold)" in report and "there are 4 points" not in report
    html = write_report(masked_first, tmp_path / "report.html").read_text()
    assert "flagged by the audit (masking)" in html and "x-thin-open" in html

    capsys.readouterr()
    assert main(["status", str(masked_first)]) == 0
    out = capsys.readouterr().err  # the trial table goes to the console (stderr)
    assert out.index("b2c3d4e5") < out.index("a1b2c3d4") < out.index("c3d4e5f6")
