"""`clustune train` on digits with each research knob, and with them all at once: adversarial
warm starts, magnet_adv's attack targets, an adversarial term on the head, the L2 threat model
(for the baselines too)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from analysis.testing import TRAIN
from search.cli import main

ALL_AT_ONCE = ["objective.variant=magnet_adv", "warm_start.variant=pgd_at",
               "warm_start.ce_epochs=1", "attack.norm=l2", "attack.target=head",
               "objective.lam_head_adv=1"]


@pytest.mark.parametrize("settings", [  # with ALL_AT_ONCE, every new option runs
    ["warm_start.variant=trades", "warm_start.eps_ramp=true", "objective.lam_head_adv=1",
     "objective.head_adv_loss=kl"],
    ["objective.variant=magnet_adv", "attack.target=margin"],
    ["objective.variant=trades", "attack.norm=l2"],
    ALL_AT_ONCE,
], ids=lambda s: "+".join(x.split("=")[1] if "variant" in x else x.split(".")[-1] for x in s))
def test_train_runs_each_research_knob_and_all_at_once(tmp_path, settings):
    config = tmp_path / "digits.yaml"
    config.write_text(yaml.safe_dump({**TRAIN, "optim": {**TRAIN["optim"], "epochs": 1}}))
    threads = torch.get_num_threads()
    try:
        code = main(["train", "--config", str(config), "--out", str(tmp_path / "run"),
                     *[arg for s in settings for arg in ("--set", s)]])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    for setting in settings:  # the config trained is the one asked for
        key, _, value = setting.partition("=")
        section, name = key.split(".")
        assert recorded[section][name] == yaml.safe_load(value), setting
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in rows] == [1]
    for r in rows:
        assert math.isfinite(r["train_loss"])
        assert 0 <= r["val_robust_acc"] <= 1 and 0 < r["val_clean_acc"] <= 1
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
