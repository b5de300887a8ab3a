"""AutoAttack evaluation on tiny digits models: ensemble, audit, threat model, schema, resume.

Budgets are cut down with version="custom" wherever the point is not the standard ensemble.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys

import pyautoattack
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainable
from analysis import (
    ATTACKS,
    SCHEMA_VERSION,
    AttackOptions,
    ClusterGeometry,
    Provenance,
    RobustnessResult,
    evaluate_checkpoint,
    evaluate_robustness,
    load_result,
    save_result,
)
from analysis._autoattack import _build_adversary, _within_threat_model
from analysis._confirmation import STANDARD_ENSEMBLE

CHEAP = {"version": "custom", "n_iter": 10, "n_restarts": 1, "n_target_classes": 3,
         "n_queries": 100, "adaptive_steps": 20}


def cheap(eps: float, attacks: list[str]) -> AttackOptions:
    """These attacks at small budgets: seconds, not minutes."""
    return AttackOptions(eps=eps, attacks=attacks, **CHEAP)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class MLP(trainable.Backbone):
    """A 64-64-16 embedding: trains on digits in a fraction of a second."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__(mean, std, 10)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16))
        self.embedding_dim = 16
        self.linear = nn.Linear(16, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope="module")
def digits() -> trainable.ImageData:
    return trainable.load_data("digits")


@pytest.fixture(scope="module")
def backbone(digits, one_thread) -> MLP:
    torch.manual_seed(0)
    model = MLP(digits.mean, digits.std)
    x, y = digits.x_train.float() / 255, digits.y_train
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(len(y), (128,), generator=gen)
        loss = F.cross_entropy(model.linear_logits(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def clusters(backbone, digits) -> trainable.Clusters:
    with torch.no_grad():
        emb = backbone.embed(digits.x_train.float() / 255)
    return trainable.fit_clusters(emb, digits.y_train, 10, 1, generator=torch.Generator())


def points(digits, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return digits.x_test[:n].float() / 255, digits.y_test[:n]


def cluster_model(backbone, clusters, sigma_scale: float = 1.0,
                  kind: str = "logprob") -> trainable.Classifier:
    """K=1 cluster head; a small sigma_scale saturates its scores (gradient masking)."""
    head = trainable.ClusterHead(kind, 10, 1, 10, 16)
    head.set_clusters(clusters.centroids, clusters.sigma2 * sigma_scale)
    return trainable.Classifier(backbone, head)


class ClampedHead(trainable.ClusterHead):
    """A deliberately masked defence: log-votes clamped from below, so far classes get no
    gradient at all (what ClusterHead itself must never do)."""

    def forward(self, emb):
        return super().forward(emb).clamp(min=trainable.EMPTY_CLASS_LOGIT)


def test_undefended_model_falls_to_standard_autoattack(backbone, digits):
    x, y = points(digits, 12)
    r = evaluate_robustness(trainable.Classifier(backbone), x, y, AttackOptions(eps=0.3))
    assert r.clean_acc >= 0.9
    assert r.autoattack_acc <= 0.1
    assert r.attacks == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert list(r.per_attack_acc) == r.attacks
    assert r.attack_settings["square"]["n_queries"] == 5000
    assert r.attack_settings["apgd-t"]["n_target_classes"] == 9
    assert r.attack_settings["apgd-ce"] == {"n_iter": 100, "n_restarts": 1, "eot_iter": 1}
    assert r.ce_only_acc == r.per_attack_acc["apgd-ce"]  # APGD-CE leads the standard ensemble
    assert r.adaptive_acc is None and r.adaptive_gap is None  # linear head: no centroids
    assert r.within_threat_model and 0 < r.max_perturbation <= 0.3 + 1e-5


@pytest.mark.parametrize("attack", ATTACKS)
def test_every_attack_stays_within_the_threat_model(backbone, clusters, digits, attack):
    x, y = points(digits, 16)
    eps = 0.1
    r = evaluate_robustness(cluster_model(backbone, clusters), x, y,
                            cheap(eps, [attack]))
    assert r.within_threat_model
    assert r.max_perturbation <= eps + 1e-5
    col = r.per_example
    for broken, dist in zip(col["broken_by"], col["perturbation"], strict=True):
        assert dist <= eps + 1e-5
        assert (dist > 0) == (broken is not None)


def test_threat_model_check_rejects_escaping_examples():
    x = torch.full((2, 1, 4, 4), 0.5)
    assert _within_threat_model(x + 0.1, x, 0.1, "Linf")
    assert not _within_threat_model(x + 0.11, x, 0.1, "Linf")
    assert not _within_threat_model(x * 2.1, x, 10.0, "Linf")  # leaves [0, 1]
    assert not _within_threat_model(x.clone().fill_(float("nan")), x, 0.1, "Linf")
    assert _within_threat_model(x + 0.025, x, 0.1, "L2")  # L2 of 16 pixels x 0.025 = 0.1
    assert not _within_threat_model(x + 0.03, x, 0.1, "L2")


def check_columns_match_summary(r: RobustnessResult) -> None:
    col, n = r.per_example, r.n_examples
    assert all(len(v) == n for v in col.values())
    assert col["index"] == list(range(n))
    assert r.clean_acc == sum(col["clean_correct"]) / n
    alive = list(col["clean_correct"])
    for attack in r.attacks:
        alive = [a and b != attack for a, b in zip(alive, col["broken_by"], strict=True)]
        assert r.per_attack_acc[attack] == sum(alive) / n
    assert alive == col["autoattack_robust"]
    assert r.autoattack_acc == sum(alive) / n
    for clean, robust, broken, dist in zip(col["clean_correct"], col["autoattack_robust"],
                                           col["broken_by"], col["perturbation"], strict=True):
        assert not robust or clean
        assert (broken is None) == (robust or not clean)
        assert (dist == 0.0) == (broken is None)
    assert r.ce_only_acc == sum(col["ce_only_robust"]) / n
    assert r.ce_gap == r.ce_only_acc - r.autoattack_acc
    worst = [a and c for a, c in zip(alive, col["ce_only_robust"], strict=True)]
    if r.adaptive_acc is not None:
        assert r.adaptive_acc == sum(col["adaptive_robust"]) / n
        assert r.adaptive_gap == r.autoattack_acc - r.adaptive_acc
        worst = [w and a for w, a in zip(worst, col["adaptive_robust"], strict=True)]
    assert col["worst_case_robust"] == worst
    assert r.worst_case_acc == sum(worst) / n


def test_per_example_outcomes_agree_with_the_summary(backbone, clusters, digits):
    x, y = points(digits, 30)
    model = cluster_model(backbone, clusters)
    r = evaluate_robustness(model, x, y,
                            cheap(0.1, ["apgd-ce", "apgd-t", "square"]))
    check_columns_match_summary(r)
    assert r.per_example["label"] == y.tolist()
    assert len({b for b in r.per_example["broken_by"] if b}) >= 2  # several attacks scored
    # CE-only runs on its own when APGD-CE does not lead the ensemble
    alone = evaluate_robustness(model, x, y, cheap(0.1, ["apgd-t"]))
    check_columns_match_summary(alone)
    assert "apgd-ce (ce-only)" in alone.attack_settings
    assert alone.ce_only_acc == r.ce_only_acc  # same APGD-CE on the same points


def test_batched_driver_matches_one_official_autoattack_call(backbone, clusters, digits):
    x, y = points(digits, 30)
    model = cluster_model(backbone, clusters)
    attacks = ["apgd-ce", "apgd-t"]
    options = AttackOptions(eps=0.1, attacks=attacks, batch_size=7, version="custom",
                            n_iter=10, n_restarts=1, n_target_classes=3, adaptive_steps=1)
    r = evaluate_robustness(model, x, y, options)
    # several batches per attack, and the second attack attacks what the first left over
    assert 0 < r.per_attack_acc["apgd-t"] < r.per_attack_acc["apgd-ce"] < r.clean_acc
    official = _build_adversary(model, options, "cpu")
    x_adv, y_adv = official.run_standard_evaluation(x, y, batch_size=7)
    assert r.per_example["autoattack_robust"] == (y_adv == y).tolist()
    linf = (x_adv - x).flatten(1).abs().amax(1)
    assert r.per_example["perturbation"] == pytest.approx(linf.tolist(), abs=1e-7)


def test_gradient_masked_head_fools_ce_but_not_the_ensemble(backbone, clusters, digits):
    x, y = points(digits, 30)
    masked = cluster_model(backbone, clusters, 1e-2)  # softmax saturates: CE gradient is 0
    r = evaluate_robustness(masked, x, y,
                            cheap(0.2, ["apgd-ce", "apgd-t"]))
    assert r.ce_only_acc >= 0.5
    assert r.autoattack_acc <= 0.1
    assert "ce_gap" in r.masking_flags
    honest = evaluate_robustness(cluster_model(backbone, clusters), x, y,
                                 cheap(0.2, ["apgd-ce", "apgd-t"]))
    assert "ce_gap" not in honest.masking_flags


def test_saturated_head_is_caught_by_the_adaptive_attack(backbone, clusters, digits):
    x, y = points(digits, 30)
    saturated = cluster_model(backbone, clusters, 1e-4)  # logits 0 or clamped: no gradients
    saturated.head.__class__ = ClampedHead
    r = evaluate_robustness(saturated, x, y,
                            cheap(0.1, ["apgd-ce", "apgd-t", "square"]))
    assert r.adaptive_acc < r.autoattack_acc - 0.05
    assert "adaptive_gap" in r.masking_flags
    zero_grad = [f for f in r.autoattack_flags if "zero gradient" in f]
    assert len(zero_grad) == 1 and zero_grad[0] in r.masking_flags
    assert r.worst_case_acc <= r.adaptive_acc


def test_result_json_round_trip_keeps_every_field(backbone, clusters, digits, tmp_path):
    x, y = points(digits, 8)
    r = evaluate_robustness(cluster_model(backbone, clusters), x, y,
                            cheap(0.1, ["apgd-ce"]),
                            provenance=Provenance("digits", "logprob", None, {"seed": 1}))
    path = save_result(r, tmp_path / "out" / "result.json")
    assert load_result(path) == r
    assert RobustnessResult.from_json(r.to_json()) == r
    stored = json.loads(path.read_text())
    assert set(stored) == {f.name for f in dataclasses.fields(RobustnessResult)}
    assert stored["schema_version"] == SCHEMA_VERSION
    with pytest.raises(ValueError, match="schema_version"):
        RobustnessResult.from_json(json.dumps({**stored, "schema_version": "other"}))
    with pytest.raises(ValueError, match="lacks field"):
        RobustnessResult.from_json(json.dumps({k: v for k, v in stored.items() if k != "eps"}))
    with pytest.raises(ValueError, match="unknown field"):
        RobustnessResult.from_json(json.dumps({**stored, "extra": 1}))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        load_result(tmp_path / "bad.json")


@pytest.mark.parametrize(("options", "match"), [
    ({"version": "custom"}, "needs attacks"),
    ({"attacks": ["apgd-ce"]}, "version='custom' only"),
    ({"version": "plus", "attacks": ["apgd-ce"]}, "version='custom' only"),
    ({"version": "custom", "attacks": ["pgd"]}, "unknown attack"),
    ({"version": "custom", "attacks": ["square", "square"]}, "each attack once"),
    ({"n_iter": 5}, "version='custom' only"),
    ({"version": "custom", "attacks": ["square"], "n_queries": 0}, "at least 1"),
    ({"version": "fast"}, "unknown version"),
    ({"norm": "Linf2"}, "unknown norm"),
    ({"eps": 0.0}, "positive"),
    ({"batch_size": 0}, "batch_size"),
    ({"norm": "L1", "geometry": ClusterGeometry(lambda t: t, torch.zeros(10, 16),
                                                torch.arange(10))}, "Linf or L2"),
])
def test_contradictory_options_are_refused(backbone, digits, options, match):
    x, y = points(digits, 4)
    options = {"eps": 0.1, **options}
    geometry = options.pop("geometry", None)
    with pytest.raises(ValueError, match=match) as err:
        evaluate_robustness(trainable.Classifier(backbone), x, y, AttackOptions(**options),
                            geometry=geometry)
    assert "\n" not in str(err.value)


def test_bad_data_is_refused(backbone, digits):
    model = trainable.Classifier(backbone)
    x, y = points(digits, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate_robustness(model, x * 255, y, AttackOptions(eps=0.1))
    with pytest.raises(ValueError, match="labels"):
        evaluate_robustness(model, x, y[:3], AttackOptions(eps=0.1))


class Interrupt(Exception):
    pass


def test_interrupted_evaluation_resumes_from_its_state(backbone, clusters, digits, tmp_path):
    x, y = points(digits, 24)
    model = cluster_model(backbone, clusters)
    options = AttackOptions(eps=0.1, attacks=["apgd-ce", "apgd-t"], batch_size=8, **CHEAP)
    reference = evaluate_robustness(model, x, y, options)
    state = tmp_path / "state.json"

    def stop_in_apgd_t(stage: str, done: int, total: int) -> None:
        if stage == "apgd-t" and (done % 8 == 0 or done == total):  # its first batch saved
            raise Interrupt

    with pytest.raises(Interrupt):
        evaluate_robustness(model, x, y, options, state_path=state, progress=stop_in_apgd_t)
    interrupted_s = json.loads(state.read_text())["elapsed_s"]
    assert interrupted_s > 0
    seen: list[str] = []

    def batches(stage: str, done: int, total: int) -> None:
        if done % 8 == 0 or done == total:  # a batch saved (the other calls move within one)
            seen.append(stage)

    resumed = evaluate_robustness(model, x, y, options, state_path=state, progress=batches)
    assert set(seen) == {"apgd-t", "adaptive"}  # clean pass and APGD-CE were not redone
    apgd_t_batches = math.ceil(round(reference.per_attack_acc["apgd-ce"] * 24) / 8)
    assert apgd_t_batches >= 2
    assert seen.count("apgd-t") == apgd_t_batches - 1  # its first batch was kept too
    assert resumed.wall_time_s > interrupted_s  # time is summed over both runs
    assert dataclasses.replace(resumed, wall_time_s=0) == dataclasses.replace(reference,
                                                                               wall_time_s=0)
    with pytest.raises(ValueError, match="another evaluation"):
        evaluate_robustness(model, x, y, dataclasses.replace(options, eps=0.2),
                            state_path=state)


def test_model_mode_gradients_and_tracing_are_left_as_found(backbone, digits):
    model = trainable.Classifier(MLP(digits.mean, digits.std))
    model.load_state_dict(trainable.Classifier(backbone).state_dict())
    model.train()
    x, y = points(digits, 6)
    calls: list[str] = []

    def tracer(frame, event, arg):  # a stand-in for coverage or a debugger
        calls.append(event)

    sys.settrace(tracer)
    try:
        evaluate_robustness(model, x, y, AttackOptions(eps=0.1, attacks=["fab"],
                                                       version="custom", n_iter=3,
                                                       n_restarts=1))  # FAB calls backward()
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)
    assert model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, one_thread):
    cfg = trainable.build_config({
        "data": {"dataset": "digits", "augment": False},
        "model": {"width": 4, "embedding_dim": 8},
        "clusters": {"k": 1, "l": 10, "m": 4, "d": 5, "kmeans_iters": 2},
        "objective": {"variant": "magnet"},
        "optim": {"epochs": 1, "batches_per_epoch": 2, "lr": 1e-3},
        "eval": {"examples": 4, "pgd_steps": 1},
        "device": "cpu",
    })
    trainer = trainable.Trainer(cfg, device="cpu")
    trainer.train_epoch()
    return trainer.save(tmp_path_factory.mktemp("ckpt") / "state.pt"), cfg


def test_evaluate_checkpoint_fills_dataset_head_and_config(checkpoint, digits):
    path, cfg = checkpoint
    cheap = AttackOptions(version="custom", attacks=["apgd-ce"], n_iter=3, n_restarts=1,
                          adaptive_steps=3)
    r = evaluate_checkpoint(path, cheap, examples=6)
    assert (r.dataset, r.head, r.eps, r.n_examples) == ("digits", "logprob", 0.1, 6)
    assert r.config == cfg.model_dump(mode="json")
    assert r.checkpoint == str(path)
    assert r.per_example["label"] == digits.y_test[:6].tolist()
    assert r.adaptive_acc is not None  # cluster head: the adaptive attack ran
    raw = evaluate_checkpoint(path, dataclasses.replace(cheap, eps=0.05), head="raw",
                              examples=4, split="val")
    assert (raw.head, raw.eps, raw.per_example["label"]) == ("raw", 0.05,
                                                             digits.y_val[:4].tolist())
    with pytest.raises(ValueError, match="split"):
        evaluate_checkpoint(path, split="train")


def test_the_standard_ensemble_label_is_autoattacks_own():
    """Confirmations call an audit "AutoAttack (standard)" by comparing its attacks with this
    constant: it must be the official code's own list for version="standard"."""
    adversary = pyautoattack.AutoAttack(nn.Linear(4, 2), norm="Linf", eps=0.1,
                                        version="standard", device="cpu", seed=0)
    assert tuple(adversary.attacks_to_run) == STANDARD_ENSEMBLE


def test_progress_moves_within_a_batch_and_never_backwards(backbone, clusters, digits):
    """One batch of 24 images per attack: progress still moves as the attack calls the model,
    reaching the whole batch only once its result is saved."""
    x, y = points(digits, 24)
    options = AttackOptions(eps=0.1, attacks=["apgd-ce", "apgd-t"], batch_size=24, **CHEAP)
    calls: dict[str, list[tuple[int, int]]] = {}
    evaluate_robustness(cluster_model(backbone, clusters), x, y, options,
                        progress=lambda stage, done, total: calls.setdefault(stage, []).append(
                            (done, total)))
    apgd = calls["apgd-ce"]
    total = apgd[-1][1]
    assert apgd[-1] == (total, total) and len(apgd) > 2  # moved within the one batch
    assert all(a < b for (a, _), (b, _) in zip(apgd, apgd[1:], strict=False))
    assert all(done < total for done, _ in apgd[:-1])
