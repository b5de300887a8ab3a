"""Per-class k-means, the global sigma^2 and the loss-weighted cluster sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from trainable import Clusters, ClusterSampler, fit_clusters, kmeans


def make_blobs(n_per: int, centres: np.ndarray, spread: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    pts = np.concatenate([c + spread * rng.standard_normal((n_per, centres.shape[1]))
                          for c in centres])
    return torch.tensor(pts, dtype=torch.float32)


def inertia(points: torch.Tensor, centres: torch.Tensor, assign: torch.Tensor) -> float:
    p, c = points.double().numpy(), centres.double().numpy()
    return float(sum(((p[i] - c[a]) ** 2).sum() for i, a in enumerate(assign.tolist())))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_matches_sklearn_on_separated_blobs(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    centres = rng.uniform(-10, 10, size=(4, 3))
    points = make_blobs(30, centres, 0.5, seed)
    c, assign = kmeans(points, 4, generator=torch.Generator().manual_seed(seed))
    ours = inertia(points, c, assign)
    ref = KMeans(4, n_init=10, random_state=seed).fit(points.double().numpy())
    assert ours == pytest.approx(ref.inertia_, rel=1e-3)
    # every point at its nearest centre, and each centre the mean of its points
    dist = ((points[:, None, :] - c[None]) ** 2).sum(-1)
    assert torch.equal(assign, dist.argmin(1))
    for j in range(4):
        torch.testing.assert_close(c[j], points[assign == j].mean(0), rtol=1e-5, atol=1e-5)
    assert torch.bincount(assign, minlength=4).min() > 0


def test_kmeans_is_deterministic_per_generator_and_validates_n() -> None:
    points = make_blobs(10, np.eye(3) * 5, 1.0, 0)
    a = kmeans(points, 3, generator=torch.Generator().manual_seed(4))
    b = kmeans(points, 3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="k=5"):
        kmeans(points[:4], 5)


def test_kmeans_keeps_every_cluster_with_duplicate_points() -> None:
    # three distinct points, each repeated: k-means++ must not seed two centres on one point
    points = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]]).repeat(4, 1)
    c, assign = kmeans(points, 3, generator=torch.Generator().manual_seed(0))
    assert torch.bincount(assign, minlength=3).tolist() == [4, 4, 4]


def labelled_embeddings(num_classes: int = 5, n_per: int = 24, seed: int = 0):
    """Embeddings whose classes each form two sub-blobs, with interleaved label order."""
    rng = np.random.default_rng(seed)
    emb, labels = [], []
    for c in range(num_classes):
        for _sub in range(2):
            centre = rng.uniform(-8, 8, size=4)
            emb.append(centre + 0.4 * rng.standard_normal((n_per // 2, 4)))
            labels += [c] * (n_per // 2)
    emb = torch.tensor(np.concatenate(emb), dtype=torch.float32)
    labels = torch.tensor(labels)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return emb[perm], labels[perm]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fit_clusters_assignment_ids_and_sigma2(k: int) -> None:
    emb, labels = labelled_embeddings()
    cl = fit_clusters(emb, labels, 5, k, generator=torch.Generator().manual_seed(0))
    assert cl.centroids.shape == (5 * k, 4)
    assert torch.equal(cl.centroid_class, torch.arange(5).repeat_interleave(k))
    # cluster id = class*K + i: every example sits in a cluster of its own class ...
    assert torch.equal(cl.assignment // k, labels)
    # ... and at the nearest centre among its class's K centres
    e, cent = emb.double().numpy(), cl.centroids.double().numpy()
    for n in range(len(labels)):
        y = int(labels[n])
        own = [((e[n] - cent[y * k + i]) ** 2).sum() for i in range(k)]
        assert int(cl.assignment[n]) == y * k + int(np.argmin(own))
    # sigma^2: mean squared distance to the own centre
    sq = [((e[n] - cent[int(a)]) ** 2).sum() for n, a in enumerate(cl.assignment.tolist())]
    assert float(cl.sigma2) == pytest.approx(float(np.mean(sq)), rel=1e-5)
    assert cl.sizes.sum() == len(labels) and cl.sizes.min() > 0
    assert not cl.sigma2.requires_grad


def test_fit_clusters_k2_finds_the_two_sub_blobs() -> None:
    emb, labels = labelled_embeddings()
    cl = fit_clusters(emb, labels, 5, 2, generator=torch.Generator().manual_seed(1))
    assert cl.sizes.tolist() == [12] * 10


# ------------------------------------------------------------------ sampler


def sampler_fixture(m: int = 4, d: int = 3, seed: int = 0, k: int = 2):
    emb, labels = labelled_embeddings(seed=seed)
    cl = fit_clusters(emb, labels, 5, k, generator=torch.Generator().manual_seed(seed))
    return cl, ClusterSampler(cl, m, d, torch.Generator().manual_seed(seed))


def nearest_impostors(cl: Clusters, seed: int, count: int) -> list[int]:
    cent = cl.centroids.double().numpy()
    cls = cl.centroid_class.tolist()
    others = [j for j in range(len(cls)) if cls[j] != cls[seed]]
    return sorted(others, key=lambda j: float(((cent[j] - cent[seed]) ** 2).sum()))[:count]


def test_sampler_batch_invariants() -> None:
    m, d = 4, 3
    cl, sampler = sampler_fixture(m, d)
    seen_seeds = set()
    for _ in range(50):
        idx, slot_cluster = sampler.sample()
        assert idx.shape == (m * d,) and slot_cluster.shape == (m,)
        seed = int(slot_cluster[0])
        seen_seeds.add(seed)
        cls = cl.centroid_class[slot_cluster]
        assert (cls[1:] != cls[0]).all()  # the other M-1 are of other classes
        assert slot_cluster[1:].tolist() == nearest_impostors(cl, seed, m - 1)
        # the D examples listed under each batch cluster belong to it
        assert torch.equal(cl.assignment[idx].view(m, d),
                           slot_cluster[:, None].expand(m, d))
    assert len(seen_seeds) > 5


def test_sampler_uniform_before_any_loss() -> None:
    _, sampler = sampler_fixture()
    assert torch.equal(sampler.weights(), torch.ones(10))
    counts = torch.bincount(torch.stack([sampler.sample()[1][0] for _ in range(2000)]),
                            minlength=10)
    assert counts.min() > 130 and counts.max() < 270  # expected 200 each


def test_sampler_loss_weights_bias_the_seed() -> None:
    _, sampler = sampler_fixture()
    losses = torch.ones(10)
    losses[3] = 100.0
    sampler.load_state_dict({"cluster_loss": losses})
    seeds = torch.stack([sampler.sample()[1][0] for _ in range(2000)])
    share = (seeds == 3).float().mean().item()
    assert share > 0.8  # expected 100 / 109
    assert (seeds != 3).any()  # the others are still drawn


def test_sampler_weights_never_reach_zero() -> None:
    _, sampler = sampler_fixture()
    sampler.load_state_dict({"cluster_loss": torch.zeros(10)})
    assert (sampler.weights() > 0).all()
    losses = torch.zeros(10)
    losses[0] = 1e6
    sampler.load_state_dict({"cluster_loss": losses})
    w = sampler.weights()
    assert (w > 0).all() and w[0] > 100 * w[1:].max()
    # clusters without a recorded loss count as the mean of the known ones
    losses = torch.full((10,), float("nan"))
    losses[:2] = torch.tensor([2.0, 4.0])
    sampler.load_state_dict({"cluster_loss": losses})
    w = sampler.weights()
    assert torch.isfinite(w).all() and (w > 0).all()
    assert w[5].item() == pytest.approx(3.0 + sampler.floor * 4.0)


def test_sampler_record_keeps_a_running_mean_per_cluster() -> None:
    m, d = 4, 3
    _, sampler = sampler_fixture(m, d)
    slot_cluster = torch.tensor([0, 3, 5, 7])
    per = torch.arange(m * d, dtype=torch.float32)
    sampler.record(slot_cluster, per)
    first = per.view(m, d).mean(1)
    torch.testing.assert_close(sampler.cluster_loss[slot_cluster], first)
    assert torch.isnan(sampler.cluster_loss[[1, 2, 4, 6, 8, 9]]).all()
    sampler.record(slot_cluster, torch.zeros(m * d))
    torch.testing.assert_close(sampler.cluster_loss[slot_cluster],
                               sampler.momentum * first)


def test_sampler_state_dict_round_trip() -> None:
    cl, a = sampler_fixture()
    for _ in range(5):
        _, bcs = a.sample()
        a.record(bcs, torch.rand(12, generator=torch.Generator().manual_seed(int(bcs[0]))))
    state = a.state_dict()
    b = ClusterSampler(cl, 4, 3, torch.Generator())
    b.load_state_dict(state)
    b.generator.set_state(a.generator.get_state())
    a.cluster_loss[:] = 123.0  # the saved state is a copy, not a view
    a.load_state_dict(state)
    for _ in range(20):
        ia, ca = a.sample()
        ib, cb = b.sample()
        assert torch.equal(ia, ib) and torch.equal(ca, cb)


def test_sampler_skips_empty_clusters() -> None:
    # k-means can leave a cluster empty when embeddings collapse; the sampler must never list
    # examples of another cluster under it (nor index past the end for the last cluster)
    emb, labels = labelled_embeddings()
    cl = fit_clusters(emb, labels, 5, 2, generator=torch.Generator().manual_seed(0))
    assignment = cl.assignment.clone()
    assignment[assignment == 9] = 8  # the last cluster empties into its sibling
    assignment[assignment == 2] = 3
    empty = Clusters(cl.centroids, cl.centroid_class, assignment, cl.sigma2)
    sampler = ClusterSampler(empty, 4, 3, torch.Generator().manual_seed(0))
    assert sampler.weights()[[2, 9]].tolist() == [0.0, 0.0]
    for _ in range(200):
        idx, bcs = sampler.sample()
        assert not set(bcs.tolist()) & {2, 9}
        assert torch.equal(assignment[idx].view(4, 3), bcs[:, None].expand(4, 3))


def test_sampler_refuses_too_few_populated_impostors() -> None:
    emb, labels = labelled_embeddings()
    cl = fit_clusters(emb, labels, 5, 2, generator=torch.Generator().manual_seed(0))
    collapsed = cl.assignment - cl.assignment % 2  # every class in its first cluster only
    clusters = Clusters(cl.centroids, cl.centroid_class, collapsed, cl.sigma2)
    ClusterSampler(clusters, 5, 3, torch.Generator())  # 4 populated clusters of other classes
    with pytest.raises(ValueError, match="clusters.m=6"):
        ClusterSampler(clusters, 6, 3, torch.Generator())


def test_collapsed_embeddings_still_give_valid_batches() -> None:
    # identical embeddings leave one cluster per class empty: batches must stay consistent
    labels = torch.arange(5).repeat_interleave(6)
    cl = fit_clusters(torch.ones(30, 4), labels, 5, 2, generator=torch.Generator().manual_seed(0))
    assert (cl.sizes == 0).sum() == 5
    sampler = ClusterSampler(cl, 5, 2, torch.Generator().manual_seed(0))
    for _ in range(100):
        idx, bcs = sampler.sample()
        assert torch.equal(cl.assignment[idx].view(5, 2), bcs[:, None].expand(5, 2))
        assert torch.equal(labels[idx].view(5, 2), cl.centroid_class[bcs][:, None].expand(5, 2))
