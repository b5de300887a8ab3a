"""Cluster heads against an independent float64 cluster-vote reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainable import HEADS, ClusterHead
from trainable._heads import EMPTY_CLASS_LOGIT

C, K, DIM = 4, 3, 5


def setup(kind: str, top_l: int, seed: int = 0, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    centroids = torch.randn(C * K, DIM, generator=g, dtype=dtype)
    sigma2 = torch.tensor(0.7, dtype=dtype)
    emb = centroids[torch.randint(C * K, (16,), generator=g)] + 0.8 * torch.randn(
        16, DIM, generator=g, dtype=dtype)
    head = ClusterHead(kind, C, K, top_l, DIM).to(dtype)
    head.set_clusters(centroids, sigma2)
    return head, emb, centroids.numpy(), float(sigma2)


def reference_vote(emb: np.ndarray, centroids: np.ndarray, sigma2: float, top_l: int,
                   scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(p [B, C] the normalised vote of the top-L clusters, raw [B, C] unnormalised sums)."""
    p = np.zeros((len(emb), C))
    raw = np.zeros((len(emb), C))
    for b, e in enumerate(emb):
        s = [scale * -float(((e - mu) ** 2).sum()) / (2 * sigma2) for mu in centroids]
        kept = sorted(range(len(s)), key=lambda j: s[j], reverse=True)[:top_l]
        total = sum(math.exp(s[j]) for j in kept)
        for c in range(C):
            raw[b, c] = sum(math.exp(s[j]) for j in kept if j // K == c)
            p[b, c] = raw[b, c] / total
    return p, raw


@pytest.mark.parametrize("top_l", [1, 2, 5, C * K])
@pytest.mark.parametrize("seed", [0, 1])
def test_logprob_softmax_is_the_cluster_vote(top_l: int, seed: int) -> None:
    head, emb, centroids, sigma2 = setup("logprob", top_l, seed)
    z = head(emb)
    p, _ = reference_vote(emb.numpy(), centroids, sigma2, top_l)
    np.testing.assert_allclose(torch.softmax(z, 1).numpy(), p, rtol=1e-10, atol=1e-12)
    # the logits themselves are log p(c) where the class has a kept cluster
    has_vote = p > 0
    np.testing.assert_allclose(z.numpy()[has_vote], np.log(p[has_vote]), rtol=1e-9, atol=1e-12)


def test_logprob_float32_matches_vote() -> None:
    head, emb, centroids, sigma2 = setup("logprob", 5, 3, torch.float32)
    p, _ = reference_vote(emb.double().numpy(), centroids.astype(np.float64), sigma2, 5)
    np.testing.assert_allclose(torch.softmax(head(emb), 1).double().numpy(), p, atol=1e-5)


@pytest.mark.parametrize("top_l", [1, 4, C * K])
def test_raw_scores_are_kept_exponential_sums_in_0_k(top_l: int) -> None:
    head, emb, centroids, sigma2 = setup("raw", top_l)
    z = head(emb)
    _, raw = reference_vote(emb.numpy(), centroids, sigma2, top_l)
    np.testing.assert_allclose(z.numpy(), raw, rtol=1e-10, atol=1e-300)
    assert (z >= 0).all() and (z <= K).all()


def test_raw_scores_reach_k_at_a_class_with_coincident_centres() -> None:
    head = ClusterHead("raw", C, K, C * K, DIM)
    centroids = torch.randn(C * K, DIM)
    centroids[0:K] = 0.0  # every centre of class 0 at the origin
    head.set_clusters(centroids, torch.tensor(1.0))
    z = head(torch.zeros(1, DIM))
    assert z[0, 0].item() == pytest.approx(K)
    assert (z <= K).all()


@pytest.mark.parametrize("top_l", [1, 3, C * K])
def test_heads_agree_on_the_prediction(top_l: int) -> None:
    preds = {}
    for kind in HEADS:
        head, emb, _, _ = setup(kind, top_l, seed=4)
        preds[kind] = head(emb).argmax(1)
    assert torch.equal(preds["raw"], preds["logprob"])
    assert torch.equal(preds["learned"], preds["logprob"])
    assert len(set(preds["logprob"].tolist())) > 1  # not a degenerate single-class case


def test_fresh_learned_head_equals_logprob() -> None:
    learned, emb, _, _ = setup("learned", 5, seed=2)
    logprob, _, _, _ = setup("logprob", 5, seed=2)
    torch.testing.assert_close(learned(emb), logprob(emb))


def test_learned_head_applies_temperature_and_map() -> None:
    head, emb, centroids, sigma2 = setup("learned", 5, seed=6)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        head.map.weight.copy_(torch.randn(C, C * K, generator=g, dtype=torch.float64))
        head.map.bias.copy_(torch.randn(C, generator=g, dtype=torch.float64))
        head.log_temperature.fill_(math.log(0.5))
    p, _ = reference_vote(emb.numpy(), centroids, sigma2, 5, scale=0.5)
    s = -0.5 * ((emb.numpy()[:, None, :] - centroids[None]) ** 2).sum(-1) / (2 * sigma2)
    mapped = s @ head.map.weight.detach().numpy().T + head.map.bias.detach().numpy()
    log_p = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), EMPTY_CLASS_LOGIT)
    np.testing.assert_allclose(head(emb).detach().numpy(), log_p + mapped, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["logprob", "learned"])
def test_empty_classes_get_finite_constant(kind: str) -> None:
    head, emb, centroids, sigma2 = setup(kind, 2, seed=1)
    z = head(emb)
    p, _ = reference_vote(emb.numpy(), centroids, sigma2, 2)
    empty = p == 0
    assert empty.sum(1).min() >= C - 2  # top-2 clusters name at most 2 classes
    assert torch.isfinite(z).all()
    assert (z.detach().numpy()[empty] == EMPTY_CLASS_LOGIT).all()


@pytest.mark.parametrize("kind", HEADS)
def test_gradients_are_finite_with_empty_classes(kind: str) -> None:
    head, emb, _, _ = setup(kind, 2, seed=1, dtype=torch.float32)
    emb.requires_grad_(True)
    z = head(emb)
    torch.nn.functional.cross_entropy(z, torch.arange(16) % C).backward()
    assert torch.isfinite(emb.grad).all()
    assert emb.grad.abs().sum() > 0
    for p in head.parameters():
        assert torch.isfinite(p.grad).all()


def test_top_l_bounds_are_validated() -> None:
    with pytest.raises(ValueError, match="L=0"):
        ClusterHead("logprob", C, K, 0, DIM)
    with pytest.raises(ValueError, match=f"L={C * K + 1}"):
        ClusterHead("logprob", C, K, C * K + 1, DIM)
    with pytest.raises(ValueError, match="unknown head"):
        ClusterHead("softmax", C, K, 2, DIM)
    assert ClusterHead("raw", C, K, C * K, DIM).top_l == C * K


def test_set_clusters_copies_values() -> None:
    head = ClusterHead("logprob", C, K, 2, DIM)
    centroids, sigma2 = torch.randn(C * K, DIM), torch.tensor(3.0)
    head.set_clusters(centroids, sigma2)
    centroids.zero_()
    assert head.centroids.abs().sum() > 0
    assert head.sigma2.item() == 3.0
    s = head.cluster_scores(head.centroids[:1])
    assert s[0, 0].item() == 0.0 and (s[0, 1:] < 0).all()
