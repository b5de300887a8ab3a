"""PGD in Linf and L2: stays in the eps-ball and [0, 1], raises the loss, leaks nothing into the
model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainable import build_config, embedding_margin_loss, frozen, pgd
from trainable._objectives import Batch

EPS = 0.1


class TinyBN(nn.Module):
    """Conv, BatchNorm, ReLU, linear: small enough to attack in milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def inputs(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 6, 6, generator=g)
    x[:, :, 0] = 0.0  # pixels on the box boundary: clipping to [0, 1] must bind
    x[:, :, 1] = 1.0
    return x, torch.randint(3, (n,), generator=g)


def warmed_model() -> TinyBN:
    model = TinyBN()
    with torch.no_grad():  # non-trivial running statistics
        model(torch.rand(32, 1, 6, 6, generator=torch.Generator().manual_seed(2)) * 3)
    return model


def bn_state(model: TinyBN) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.bn.state_dict().items()}


@pytest.mark.parametrize("random_start", [True, False])
@pytest.mark.parametrize("step_size", [0.03, 0.5])  # 0.5 > eps: projection must bind
def test_stays_in_eps_ball_and_box(random_start: bool, step_size: float) -> None:
    model = warmed_model().eval()
    x, y = inputs()
    x_adv = pgd(lambda xa: F.cross_entropy(model(xa), y), x, EPS, step_size, 5,
                     random_start=random_start, generator=torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= EPS + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert (x_adv - x).abs().max().item() > EPS / 2  # it did move


def test_loss_increases_over_clean() -> None:
    model = warmed_model().eval()
    x, y = inputs(64)
    clean = F.cross_entropy(model(x), y).item()
    x_adv = pgd(lambda xa: F.cross_entropy(model(xa), y), x, EPS, EPS / 4, 10,
                     generator=torch.Generator().manual_seed(0))
    adv = F.cross_entropy(model(x_adv), y).item()
    noise = (x + EPS * (2 * torch.rand(x.shape, generator=torch.Generator()) - 1)).clamp(0, 1)
    assert adv > clean + 0.05
    assert adv > F.cross_entropy(model(noise), y).item()  # better than random noise


def test_linear_objective_reaches_the_optimal_corner() -> None:
    # maximising <w, x> over the eps-ball intersected with [0, 1]: x + eps*sign(w), clipped
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 10, generator=g)
    w = torch.randn(10, generator=g)
    x_adv = pgd(lambda xa: (xa * w).sum(), x, EPS, 0.04, 5, random_start=False)
    torch.testing.assert_close(x_adv, (x + EPS * w.sign()).clamp(0, 1))


L2_EPS = 0.5


@pytest.mark.parametrize("random_start", [True, False])
@pytest.mark.parametrize("step_size", [0.1, 2.0])  # 2.0 > eps: the projection must bind
def test_l2_stays_in_the_ball_and_box(random_start: bool, step_size: float) -> None:
    model = warmed_model().eval()
    x, y = inputs()
    x_adv = pgd(lambda xa: F.cross_entropy(model(xa), y), x, L2_EPS, step_size, 5, "l2",
                random_start=random_start, generator=torch.Generator().manual_seed(0))
    distance = (x_adv - x).flatten(1).norm(dim=1)
    assert distance.max().item() <= L2_EPS + 1e-5
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert (distance > 0).all()


def test_l2_projection_against_a_hand_computation() -> None:
    """Inside the ball: unchanged; outside: scaled onto the sphere along the same direction
    (then clipped to [0, 1]), per example."""
    from trainable import project

    x = torch.full((2, 1, 2, 2), 0.5)
    delta = torch.tensor([[0.1, 0.0, 0.0, 0.0], [0.3, 0.4, 0.0, 0.0]]).view(2, 1, 2, 2)
    out = project(x + delta, x, 0.25, "l2")
    torch.testing.assert_close(out[0], (x + delta)[0])  # |delta| = 0.1 < 0.25
    torch.testing.assert_close(out[1], x[1] + delta[1] * (0.25 / 0.5))  # |delta| = 0.5


def test_linear_objective_reaches_the_l2_optimum() -> None:
    # maximising <w, x> over the L2 ball (far from the box edges): x + eps * w / |w|
    g = torch.Generator().manual_seed(3)
    x = 0.4 + 0.2 * torch.rand(4, 10, generator=g)
    w = torch.randn(10, generator=g)
    x_adv = pgd(lambda xa: (xa * w).sum(), x, 0.1, 0.05, 5, "l2", random_start=False)
    torch.testing.assert_close(x_adv, x + 0.1 * w / w.norm(), atol=1e-6, rtol=0)


def test_random_start_is_seeded() -> None:
    model = warmed_model().eval()
    x, y = inputs()

    def attack(seed: int) -> torch.Tensor:
        return pgd(lambda xa: F.cross_entropy(model(xa), y), x, EPS, 0.02, 1,
                   generator=torch.Generator().manual_seed(seed))

    assert torch.equal(attack(5), attack(5))
    assert not torch.equal(attack(5), attack(6))


def test_attack_leaks_no_gradients_or_bn_updates() -> None:
    model = warmed_model().train()
    before_bn = bn_state(model)
    before_params = [p.detach().clone() for p in model.parameters()]
    x, y = inputs()
    with frozen(model):
        assert not model.training and not model.bn.training
        pgd(lambda xa: F.cross_entropy(model(xa), y), x, EPS, 0.03, 3)
    assert model.training and model.bn.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    for k, v in bn_state(model).items():
        assert torch.equal(v, before_bn[k]), k
    for p, q in zip(model.parameters(), before_params, strict=True):
        assert torch.equal(p, q)


def test_prepopulated_gradients_are_unchanged() -> None:
    model = warmed_model().train()
    x, y = inputs()
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    with frozen(model):
        pgd(lambda xa: F.cross_entropy(model(xa), y), x, EPS, 0.03, 3)
    for p, g in zip(model.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)


def test_frozen_restores_mode_on_error_and_keeps_eval() -> None:
    model = warmed_model().train()
    with pytest.raises(RuntimeError), frozen(model):
        raise RuntimeError("attack failed")
    assert model.training and model.bn.training
    model.eval()
    with frozen(model):
        pass
    assert not model.training


def test_objective_batch_attack_is_frozen() -> None:
    # the objectives attack through Batch.attack: same guarantees on the training model
    model = warmed_model().train()
    before_bn = bn_state(model)
    cfg = build_config({"data": {"dataset": "digits"},
                        "attack": {"eps": EPS, "steps": 3, "step_size": 0.5},
                        "objective": {"variant": "pgd_at"}})
    x, y = inputs()
    b = Batch(model, None, cfg, x, y, None, None, torch.Generator().manual_seed(0))
    x_adv = b.attack(lambda xa: F.cross_entropy(model(xa), y))
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    for k, v in bn_state(model).items():
        assert torch.equal(v, before_bn[k]), k
    assert (x_adv - x).abs().max().item() <= EPS + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


def test_embedding_margin_loss_matches_a_hand_computation() -> None:
    """Per image: the distance to the nearest own-class centroid minus the distance to the
    nearest other-class centroid, summed; computed here independently with NumPy."""
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    centroids = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    centroid_class = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    y = torch.tensor([0, 1, 2, 3, 0, 2])
    loss = embedding_margin_loss(lambda x: x, centroids, centroid_class, y)(emb)
    e, c, cls = emb.numpy(), centroids.numpy(), centroid_class.numpy()
    dist = np.sqrt(((e[:, None, :] - c[None]) ** 2).sum(-1))
    expected = sum(dist[i, cls == t].min() - dist[i, cls != t].min()
                   for i, t in enumerate(y.numpy()))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
