"""Magnet loss against an independent high-precision (mpmath) reference."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

from trainable import MagnetLoss, magnet_loss

OLD_CAP = -math.log(1e-8)  # 18.42: the most the original -log(x + 1e-8) could return


def reference(emb: torch.Tensor, example_slot: torch.Tensor, slot_class: torch.Tensor,
              alpha: float, sigma_denominator: str = "B-1") -> tuple[list, object]:
    """Per-example magnet losses and their mean, by explicit loops at 60 significant digits."""
    with mpmath.workdps(60):
        e = [[mpmath.mpf(float(v)) for v in row] for row in emb.tolist()]
        bc, cc = example_slot.tolist(), slot_class.tolist()
        b, dim, m = len(e), len(e[0]), len(cc)
        means = []
        for j in range(m):
            members = [n for n in range(b) if bc[n] == j]
            means.append([mpmath.fsum(e[n][k] for n in members) / len(members)
                          for k in range(dim)])
        dist = [[mpmath.fsum((e[n][k] - means[j][k]) ** 2 for k in range(dim)) for j in range(m)]
                for n in range(b)]
        own = [dist[n][bc[n]] for n in range(b)]
        denominator = b - 1 if sigma_denominator == "B-1" else b
        sigma2 = mpmath.fsum(own) / denominator
        per = []
        for n in range(b):
            y = cc[bc[n]]
            total = mpmath.mpf(0)
            for j in range(m):
                if cc[j] != y:
                    total += mpmath.exp(-dist[n][j] / (2 * sigma2))
            value = alpha + own[n] / (2 * sigma2) + mpmath.log(total)
            per.append(max(value, mpmath.mpf(0)))
        return per, mpmath.fsum(per) / b


def blobs(m: int, d: int, dim: int, spread: float, seed: int,
          dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """M clusters of D points each around random centres; rows grouped by cluster."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(m, dim, generator=g, dtype=dtype)
    emb = centres.repeat_interleave(d, 0) + spread * torch.randn(m * d, dim, generator=g,
                                                                 dtype=dtype)
    return emb, torch.arange(m).repeat_interleave(d)


def assert_matches(per: torch.Tensor, ref_per: list, rtol: float, atol: float) -> None:
    expected = torch.tensor([float(v) for v in ref_per], dtype=torch.float64)
    torch.testing.assert_close(per.double(), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("alpha", [0.0, 1.0, 12.5])
def test_matches_mpmath_reference_on_random_inputs(seed: int, alpha: float) -> None:
    # clusters overlap (spread 0.8), so both the hinge and the impostor term matter
    emb, bc = blobs(m=5, d=4, dim=3, spread=0.8, seed=seed)
    cc = torch.tensor([0, 1, 2, 0, 3])  # two batch clusters share class 0
    loss, per = magnet_loss(emb, bc, cc, alpha=alpha)
    ref_per, ref_mean = reference(emb, bc, cc, alpha)
    assert per.shape == (20,)
    assert_matches(per, ref_per, rtol=1e-10, atol=1e-12)
    assert loss.item() == pytest.approx(float(ref_mean), rel=1e-10, abs=1e-12)


def test_random_inputs_hit_both_sides_of_the_hinge() -> None:
    # the parametrised comparison above is only meaningful if some losses are clipped at 0
    emb, bc = blobs(m=5, d=4, dim=3, spread=0.8, seed=0)
    _, per = magnet_loss(emb, bc, torch.tensor([0, 1, 2, 0, 3]), alpha=0.0)
    assert (per == 0).any() and (per > 0).any()


def test_sigma2_uses_b_minus_one() -> None:
    emb, bc = blobs(m=4, d=3, dim=2, spread=0.7, seed=5)
    cc = torch.arange(4)
    _, per = magnet_loss(emb, bc, cc, alpha=1.0)
    ref_b1, _ = reference(emb, bc, cc, 1.0, "B-1")
    ref_b, _ = reference(emb, bc, cc, 1.0, "B")
    assert_matches(per, ref_b1, rtol=1e-10, atol=1e-12)
    # the /B definition gives a visibly different loss, so the test can tell them apart
    diff = max(abs(float(a) - float(b)) for a, b in zip(ref_b1, ref_b, strict=True))
    assert diff > 1e-3


def test_sum_reduction_and_module_form() -> None:
    emb, bc = blobs(m=4, d=3, dim=2, spread=0.5, seed=3, dtype=torch.float32)
    cc = torch.tensor([0, 1, 2, 3])
    mean, per = magnet_loss(emb, bc, cc, alpha=1.0)
    total, per_sum = magnet_loss(emb, bc, cc, alpha=1.0, reduction="sum")
    torch.testing.assert_close(per, per_sum)
    assert total.item() == pytest.approx(per.sum().item(), rel=1e-6)
    assert mean.item() == pytest.approx(per.mean().item(), rel=1e-6)
    module = MagnetLoss(alpha=1.0, reduction="sum")
    assert module(emb, bc, cc).item() == pytest.approx(total.item(), rel=1e-6)


def hard_batch(scale: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tight, well separated clusters and one class-0 example sitting on class 1's cluster."""
    emb, bc = blobs(m=4, d=12, dim=4, spread=0.01, seed=7, dtype=torch.float64)
    emb[0] = emb[12] + 0.01  # example 0 (cluster 0) lies in cluster 1
    return (emb * scale).to(dtype), bc, torch.arange(4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_distances_are_finite_and_uncapped(dtype: torch.dtype) -> None:
    emb, bc, cc = hard_batch(scale=1e3, dtype=dtype)
    emb.requires_grad_(True)
    loss, per = magnet_loss(emb, bc, cc, alpha=1.0)
    assert torch.isfinite(per).all() and torch.isfinite(loss)
    ref_per, ref_mean = reference(emb.detach(), bc, cc, 1.0)
    rtol = 1e-4 if dtype == torch.float32 else 1e-9
    assert_matches(per.detach(), ref_per, rtol=rtol, atol=rtol)
    assert loss.item() == pytest.approx(float(ref_mean), rel=rtol)
    # the hard example's loss exceeds what the original capped formula could ever report
    assert per[0].item() > OLD_CAP
    assert float(ref_per[0]) > OLD_CAP
    # easy examples sit so far from impostors that exp() underflows: still exactly 0, no NaN
    assert (per[13:] == 0).all()
    loss.backward()
    assert torch.isfinite(emb.grad).all()
    assert emb.grad[0].abs().sum() > 0


def test_scale_invariance() -> None:
    # sigma^2 scales with the squared distances, so scaling every embedding leaves the loss
    small, bc, cc = hard_batch(scale=1.0, dtype=torch.float64)
    large, _, _ = hard_batch(scale=1e3, dtype=torch.float64)
    torch.testing.assert_close(magnet_loss(small, bc, cc)[1], magnet_loss(large, bc, cc)[1],
                               rtol=1e-8, atol=1e-8)


def test_gradient_matches_finite_differences() -> None:
    emb, bc = blobs(m=3, d=3, dim=2, spread=0.6, seed=11)
    emb.requires_grad_(True)
    cc = torch.tensor([0, 1, 2])
    assert torch.autograd.gradcheck(lambda e: magnet_loss(e, bc, cc, alpha=0.5)[0], (emb,))
