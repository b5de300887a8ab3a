"""Every training objective trains on digits, in Linf and L2; the consistency terms, the head's
adversarial term, the attack targets and the warm starts match independent computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainable import OBJECTIVES, Trainer, consistency
from trainable._config import CLUSTERING_VARIANTS

CASES = {
    "ce": {},
    "pgd_at": {},
    "trades": {"objective": {"lam": 1.0}},
    "magnet": {},
    "qtrades-ce-mean": {"objective": {"consistency": "ce", "reduction": "mean"}},
    "qtrades-ce-sum": {"objective": {"consistency": "ce", "reduction": "sum"}},
    "qtrades-mse-mean": {"objective": {"consistency": "mse", "reduction": "mean"},
                         "attack": {"loss": "mse"}},
    "qtrades-mse-sum": {"objective": {"consistency": "mse", "reduction": "sum"},
                        "attack": {"loss": "mse"}},
    "qtrades-kl-mean": {"objective": {"consistency": "kl", "reduction": "mean"},
                        "attack": {"loss": "kl", "steps": 3}},
    "qtrades-kl-sum": {"objective": {"consistency": "kl", "reduction": "sum"},
                       "attack": {"loss": "kl"}},
    "qtrades-learned-ce": {"objective": {"lam_ce": 2.0}, "clusters": {"head": "learned"}},
    "qtrades-raw": {"clusters": {"head": "raw"}},
    "magnet_adv-pgd": {"objective": {"adv_mode": "pgd", "lam": 1.0},
                       "attack": {"steps": 2, "step_size": 0.04}},
    "magnet_adv-free": {"objective": {"adv_mode": "free", "free_replays": 2}},
    "magnet_adv-learned-ce": {"objective": {"lam_ce": 1.0}, "clusters": {"head": "learned"}},
    "magnet_adv-head": {"attack": {"target": "head", "steps": 2, "step_size": 0.04},
                        "objective": {"lam_head_adv": 1.0}},
    "magnet_adv-margin-kl": {"attack": {"target": "margin", "steps": 2, "step_size": 0.04},
                             "objective": {"lam_head_adv": 2.0, "head_adv_loss": "kl"}},
    "magnet_adv-l2": {"attack": {"norm": "l2", "steps": 2, "step_size": 0.2},
                      "objective": {"lam_head_adv": 1.0}},
    "qtrades-head-adv": {"objective": {"lam_head_adv": 1.0}},
    "pgd_at-l2": {"attack": {"norm": "l2", "steps": 2, "step_size": 0.2}},
    "trades-l2": {"attack": {"norm": "l2", "steps": 2, "step_size": 0.2},
                  "objective": {"lam": 1.0}},
}


def case_config(tiny_config, name: str):
    variant = name.split("-")[0]
    overrides = {"objective": {"variant": variant}}
    for section, values in CASES[name].items():
        overrides[section] = {**overrides.get(section, {}), **values}
    return tiny_config(overrides)


def test_cases_cover_every_objective() -> None:
    assert {name.split("-")[0] for name in CASES} == set(OBJECTIVES)


@pytest.mark.parametrize("name", list(CASES))
def test_variant_trains_without_nan(tiny_config, name: str) -> None:
    cfg = case_config(tiny_config, name)
    trainer = Trainer(cfg)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = trainer.train_epoch()
    assert metrics["epoch"] == 1
    assert math.isfinite(metrics["train_loss"])
    train_terms = [k for k in metrics if k.startswith("train_") and not k.endswith("_s")]
    assert len(train_terms) >= 2 and all(math.isfinite(metrics[k]) for k in train_terms)
    for key in ("val_clean_acc", "val_pgd_acc", "val_robust_acc"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["val_robust_acc"] <= metrics["val_pgd_acc"]
    # the weights moved, and stayed finite
    after = list(trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert all(torch.isfinite(p).all() for p in after)
    if cfg.is_clustering:
        assert math.isfinite(metrics["sigma2"]) and metrics["sigma2"] > 0
        assert math.isfinite(metrics["val_margin"])
        assert metrics["cluster_size_min"] >= 1
        assert sum(metrics["cluster_sizes"]) == len(trainer.data.y_train)
    else:
        assert "sigma2" not in metrics and "val_margin" not in metrics


def test_clustering_variant_list_matches_config() -> None:
    assert set(CLUSTERING_VARIANTS) == {"magnet", "qtrades", "magnet_adv"}


def test_learned_head_is_trained_by_lam_ce(tiny_config) -> None:
    trainer = Trainer(case_config(tiny_config, "qtrades-learned-ce"))
    assert trainer.head.map.weight.abs().sum() == 0
    metrics = trainer.train_epoch()
    assert "train_ce" in metrics
    assert trainer.head.map.weight.abs().sum() > 0
    assert trainer.head.log_temperature.item() != 0.0


def test_free_mode_keeps_the_perturbation_in_the_ball(tiny_config) -> None:
    trainer = Trainer(case_config(tiny_config, "magnet_adv-free"))
    trainer.train_epoch()
    delta = trainer._free_delta
    assert delta is not None and delta.abs().max() > 0
    assert delta.abs().max().item() <= trainer.cfg.eps + 1e-6


@pytest.mark.parametrize("name", ["pgd_at", "trades", "qtrades-ce-mean", "qtrades-kl-sum",
                                  "qtrades-learned-ce", "magnet_adv-pgd", "magnet_adv-head",
                                  "magnet_adv-margin-kl", "magnet_adv-l2", "pgd_at-l2"])
def test_objective_attack_leaks_no_gradient(tiny_config, name: str) -> None:
    trainer = Trainer(case_config(tiny_config, name))
    if trainer.cfg.is_clustering:
        trainer.refresh_clusters()
        batch = trainer._clustering_batch()
    else:
        x, y = trainer._random_batch(trainer.cfg.batch_size)
        from trainable._objectives import Batch

        batch = Batch(trainer.model, None, trainer.cfg, x, y, None, None, trainer.generator)
    trainer.model.train()
    loss, terms, per = OBJECTIVES[trainer.cfg.objective.variant](batch)
    assert trainer.model.training
    params = list(trainer.model.parameters()) + list(
        trainer.head.parameters() if trainer.head is not None else [])
    assert all(p.grad is None for p in params)  # only the caller's backward may fill them
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())
    assert (per is not None) == trainer.cfg.is_clustering


# ------------------------------------------------------------- consistency


Z = torch.tensor([[0.0, math.log(3.0)], [math.log(4.0), 0.0]])  # p = [1/4, 3/4], [4/5, 1/5]
Z_ADV = torch.tensor([[0.0, 0.0], [0.0, math.log(4.0)]])  # q = [1/2, 1/2], [1/5, 4/5]
EMB = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
EMB_ADV = torch.tensor([[1.0, 0.0, 3.0], [3.0, 0.0, 0.0]])

CE_ROWS = [math.log(2.0), -(0.8 * math.log(0.2) + 0.2 * math.log(0.8))]
KL_ROWS = [0.25 * math.log(0.5) + 0.75 * math.log(1.5),
           0.8 * math.log(4.0) + 0.2 * math.log(0.25)]
MSE_ROWS = [4.0 / 3.0, 9.0 / 3.0]


@pytest.mark.parametrize("kind,rows", [("ce", CE_ROWS), ("kl", KL_ROWS), ("mse", MSE_ROWS)])
def test_consistency_hand_values(kind: str, rows: list[float]) -> None:
    mean = consistency(kind, EMB, Z, EMB_ADV, Z_ADV, "mean")
    total = consistency(kind, EMB, Z, EMB_ADV, Z_ADV, "sum")
    assert mean.item() == pytest.approx(sum(rows) / 2, rel=1e-6)
    assert total.item() == pytest.approx(sum(rows), rel=1e-6)


def test_consistency_is_zero_when_nothing_changes() -> None:
    assert consistency("kl", EMB, Z, EMB, Z, "sum").item() == pytest.approx(0.0, abs=1e-7)
    assert consistency("mse", EMB, Z, EMB, Z, "sum").item() == 0.0
    # ce against itself is the entropy of the clean vote, not zero
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    one = consistency("ce", EMB[:1], Z[:1], EMB[:1], Z[:1], "mean")
    assert one.item() == pytest.approx(entropy, rel=1e-6)


def test_consistency_ce_detaches_the_clean_vote_but_kl_does_not() -> None:
    z = Z.clone().requires_grad_(True)
    z_adv = Z_ADV.clone().requires_grad_(True)
    consistency("ce", EMB, z, EMB_ADV, z_adv, "mean").backward()
    assert z.grad is None and z_adv.grad.abs().sum() > 0
    z = Z.clone().requires_grad_(True)
    consistency("kl", EMB, z, EMB_ADV, Z_ADV, "mean").backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_validation_proxy_is_not_masked_by_a_flat_head(tiny_config) -> None:
    """With L=1 the logprob head is piecewise constant: no input gradient, so PGD through it
    finds nothing (the cpu-ablation search ranked such a trial first; AutoAttack's audit
    flagged it). The robust proxy also attacks the embedding's centroid margin, and does."""
    trainer = Trainer(tiny_config({"objective": {"variant": "magnet"},
                                   "clusters": {"l": 1, "head": "logprob"},
                                   "eval": {"examples": 100, "pgd_steps": 10}}))
    trainer.train_epoch()
    x = trainer.data.x_val[:20].float().div(255).requires_grad_(True)
    loss = F.cross_entropy(trainer.classifier()(x), trainer.data.y_val[:20])
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.count_nonzero(grad) == 0
    metrics = trainer.evaluate()
    assert metrics["val_robust_acc"] < metrics["val_pgd_acc"] - 0.1


# ------------------------------------------------- the head's adversarial term, attack targets


def test_head_adversarial_hand_values() -> None:
    from trainable._objectives import head_adversarial

    y = torch.tensor([1, 0])
    ce = head_adversarial("ce", Z, Z_ADV, y)
    assert ce.item() == pytest.approx((-math.log(0.5) - math.log(0.2)) / 2)
    kl = head_adversarial("kl", Z, Z_ADV, y)
    assert kl.item() == pytest.approx(sum(KL_ROWS) / 2)
    z = Z.clone().requires_grad_(True)
    head_adversarial("kl", z, Z_ADV, y).backward()
    assert z.grad.abs().sum() > 0  # TRADES' KL: gradients through the clean side too


def _batch(trainer):
    trainer.refresh_clusters()
    trainer.model.train()
    return trainer._clustering_batch()


@pytest.mark.parametrize("target", ["magnet", "head", "margin"])
def test_magnet_adv_loss_is_the_sum_of_its_terms_at_its_target(tiny_config, target) -> None:
    """loss = magnet(x) + lam magnet(x_adv) + lam_head_adv CE(z(x_adv), y), x_adv the PGD
    attack on the target's loss, from the batch's random start: recomputed independently."""
    from trainable import embedding_margin_loss, pgd
    from trainable._magnet import magnet_loss

    cfg = case_config(tiny_config, "magnet_adv-head").model_copy(deep=True)
    cfg.attack.target = target
    trainer = Trainer(cfg)
    batch = _batch(trainer)
    start = batch.generator.get_state()
    loss, terms, _ = OBJECTIVES["magnet_adv"](batch)

    model, head, y = trainer.model, trainer.head, batch.y
    alpha = cfg.clusters.alpha

    def magnet(emb):
        return magnet_loss(emb, batch.example_slot, batch.slot_class, alpha)[0]

    target_loss = {
        "magnet": lambda xa: magnet(model.embed(xa)),
        "head": lambda xa: F.cross_entropy(head(model.embed(xa)), y, reduction="sum"),
        "margin": embedding_margin_loss(model.embed, head.centroids,
                                        torch.arange(10).repeat_interleave(cfg.clusters.k), y),
    }[target]
    model.eval()
    x_adv = pgd(target_loss, batch.x, cfg.eps, cfg.attack.step_size, cfg.attack.steps,
                generator=torch.Generator().set_state(start))
    model.train()
    expected = magnet(model.embed(batch.x)) + cfg.objective.lam * magnet(model.embed(x_adv)) \
        + cfg.objective.lam_head_adv * F.cross_entropy(head(model.embed(x_adv)), y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert terms["head_adv"] > 0


def test_the_head_target_attacks_what_the_audit_attacks(tiny_config) -> None:
    """attack.target=head: the training attack raises the head's cross-entropy, which the
    magnet target need not do."""
    cfg = case_config(tiny_config, "magnet_adv-head")
    trainer = Trainer(cfg)
    batch = _batch(trainer)
    from trainable._objectives import _attack_target

    x_adv = batch.attack(_attack_target(batch))
    with torch.no_grad():
        clean = F.cross_entropy(trainer.head(trainer.model.embed(batch.x)), batch.y)
        adv = F.cross_entropy(trainer.head(trainer.model.embed(x_adv)), batch.y)
    assert adv > clean


# ------------------------------------------------------------------ warm starts


@pytest.mark.parametrize("variant", ["pgd_at", "trades"])
def test_adversarial_warm_start_loss_matches_its_definition(tiny_config, variant) -> None:
    from trainable import pgd
    from trainable._objectives import warm_start_loss

    cfg = tiny_config({"warm_start": {"ce_epochs": 1, "variant": variant, "attack_steps": 3},
                       "objective": {"variant": "magnet_adv"}})
    trainer = Trainer(cfg)
    x, y = trainer._random_batch(trainer.cfg.batch_size)
    model, eps = trainer.model, 0.05
    gen = torch.Generator().manual_seed(4)
    loss, _ = warm_start_loss(model, x, y, cfg, eps, torch.Generator().manual_seed(4))
    model.eval()
    if variant == "pgd_at":
        x_adv = pgd(lambda xa: F.cross_entropy(model.linear_logits(xa), y), x, eps, 2.5 * eps / 3,
                    3, generator=gen)
        model.train()
        expected = F.cross_entropy(model.linear_logits(x_adv), y)
    else:
        with torch.no_grad():
            p = F.softmax(model.linear_logits(x), 1)
        x_adv = pgd(lambda xa: F.kl_div(F.log_softmax(model.linear_logits(xa), 1), p,
                                        reduction="sum"), x, eps, 2.5 * eps / 3, 3, generator=gen)
        model.train()
        logits = model.linear_logits(x)
        q = F.log_softmax(model.linear_logits(x_adv), 1)
        expected = F.cross_entropy(logits, y) + cfg.warm_start.beta * (
            F.softmax(logits, 1) * (F.log_softmax(logits, 1) - q)).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_the_eps_ramp_grows_linearly_to_the_radius(tiny_config, monkeypatch) -> None:
    import trainable._trainer as trainer_module

    cfg = tiny_config({"warm_start": {"ce_epochs": 1, "variant": "pgd_at", "eps_ramp": True,
                                      "attack_steps": 1},
                       "objective": {"variant": "magnet_adv"}})
    seen = []
    real = trainer_module.warm_start_loss

    def spy(model, x, y, cfg, eps, generator):
        seen.append(eps)
        return real(model, x, y, cfg, eps, generator)

    monkeypatch.setattr(trainer_module, "warm_start_loss", spy)
    trainer = Trainer(cfg)
    trainer.warm_start()
    n = len(seen)
    assert n >= 2 and seen == pytest.approx([cfg.eps * (i + 1) / n for i in range(n)])
