"""Per-class k-means on embeddings, the global sigma^2, and the loss-weighted cluster sampler."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Clusters", "kmeans", "fit_clusters", "ClusterSampler"]


def kmeans(points: torch.Tensor, k: int, iters: int = 20,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding, on the points' device.

    Returns (centres [k, d], assignment [n]). An emptied cluster is re-seeded at the point
    farthest from its centre, so every cluster keeps at least one member (unless the points
    coincide: with fewer distinct points than k, some centres stay empty).
    """
    n = points.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, got {n}")
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [points[first]]
    closest = ((points - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        probs = closest / closest.sum() if closest.sum() > 0 else torch.full_like(closest, 1 / n)
        pick = int(torch.multinomial(probs.cpu(), 1, generator=generator))
        centres.append(points[pick])
        closest = torch.minimum(closest, ((points - points[pick]) ** 2).sum(1))
    c = torch.stack(centres)
    assign = torch.zeros(n, dtype=torch.long, device=points.device)
    for _ in range(iters):
        dist = torch.cdist(points, c).pow(2)
        assign = dist.argmin(1)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, assign, points)
        new = sums / counts.clamp(min=1)[:, None].to(points.dtype)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            far = int(dist.gather(1, assign[:, None]).squeeze(1).argmax())
            new[empty] = points[far]
            assign[far] = empty
        if torch.allclose(new, c):
            c = new
            break
        c = new
    assign = torch.cdist(points, c).argmin(1)
    return c, assign


@dataclass
class Clusters:
    """C*K centroids (cluster id = class*K + i), each training example's cluster, sigma^2."""

    centroids: torch.Tensor  # [C*K, d]
    centroid_class: torch.Tensor  # [C*K]
    assignment: torch.Tensor  # [N] cluster id of every training example
    sigma2: torch.Tensor  # scalar: mean squared distance to own centre (detached)

    @property
    def sizes(self) -> torch.Tensor:
        return torch.bincount(self.assignment, minlength=self.centroids.shape[0])


@torch.no_grad()
def fit_clusters(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int,
                 iters: int = 20, generator: torch.Generator | None = None) -> Clusters:
    """Per-class k-means with K centres per class, and the global sigma^2 for inference."""
    d = embeddings.shape[1]
    centroids = torch.empty(num_classes * k, d, device=embeddings.device, dtype=embeddings.dtype)
    assignment = torch.empty_like(labels)
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        centres, assign = kmeans(embeddings[members], k, iters, generator)
        centroids[c * k:(c + 1) * k] = centres
        assignment[members] = c * k + assign
    own = ((embeddings - centroids[assignment]) ** 2).sum(1)
    sigma2 = own.mean().clamp(min=1e-12)
    centroid_class = torch.arange(num_classes, device=embeddings.device).repeat_interleave(k)
    return Clusters(centroids, centroid_class, assignment, sigma2)


class ClusterSampler:
    """Magnet-loss batches: a seed cluster drawn by its recent loss, its M-1 nearest impostors.

    The seed is drawn with probability proportional to the cluster's running mean loss
    (uniform before any loss is seen, floored so no weight reaches zero); the M-1 clusters of
    other classes whose centroids are nearest the seed's are added; D examples are drawn from
    each cluster (with replacement, so small clusters still fill their slots). Clusters that
    k-means left empty are never drawn.
    """

    def __init__(self, clusters: Clusters, m: int, d: int, generator: torch.Generator,
                 momentum: float = 0.9, floor: float = 1e-3) -> None:
        self.m, self.d, self.generator = m, d, generator
        self.momentum, self.floor = momentum, floor
        self.cluster_loss = torch.full((clusters.centroids.shape[0],), float("nan"))
        self.set_clusters(clusters)

    def set_clusters(self, clusters: Clusters) -> None:
        """Use refreshed clusters; loss weights carry over (cluster ids keep their meaning)."""
        self.clusters = clusters
        assignment = clusters.assignment.cpu()
        self._order = torch.argsort(assignment)
        sizes = torch.bincount(assignment, minlength=clusters.centroids.shape[0])
        self._sizes = sizes
        self._starts = torch.cumsum(sizes, 0) - sizes
        cent = clusters.centroids.detach().float().cpu()
        dist = torch.cdist(cent, cent)
        cls = clusters.centroid_class.cpu()
        dist[cls[:, None] == cls[None, :]] = float("inf")  # impostors come from other classes
        dist[:, sizes == 0] = float("inf")  # an empty cluster (collapsed embeddings) has none
        self._impostors = dist.argsort(1)[:, : self.m - 1]
        short = (sizes > 0) & dist.gather(1, self._impostors).isinf().any(1)
        if short.any():
            have = int(torch.isfinite(dist[short.nonzero()[0, 0]]).sum())
            raise ValueError(f"clusters.m={self.m} needs M-1 populated clusters of other classes "
                             f"but k-means left only {have} (collapsed embeddings?)")

    def weights(self) -> torch.Tensor:
        known = ~torch.isnan(self.cluster_loss)
        populated = (self._sizes > 0).float()  # never seed from an empty cluster
        if not known.any():
            return populated
        w = torch.where(known, self.cluster_loss, self.cluster_loss[known].mean())
        return (w.clamp(min=0) + self.floor * max(float(w.max()), 1.0)) * populated

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (example indices [M*D], cluster id of each of the M batch clusters [M])."""
        seed = torch.multinomial(self.weights(), 1, generator=self.generator)
        slot_cluster = torch.cat([seed, self._impostors[seed.item()]])
        u = torch.rand(self.m, self.d, generator=self.generator)
        offs = (u * self._sizes[slot_cluster][:, None]).long()
        idx = self._order[self._starts[slot_cluster][:, None] + offs].flatten()
        return idx, slot_cluster

    def record(self, slot_cluster: torch.Tensor, per_example_loss: torch.Tensor) -> None:
        """Fold the batch's per-example losses into each batch cluster's running mean loss."""
        per_cluster = per_example_loss.detach().float().cpu().view(self.m, self.d).mean(1)
        old = self.cluster_loss[slot_cluster]
        self.cluster_loss[slot_cluster] = torch.where(
            torch.isnan(old), per_cluster, self.momentum * old + (1 - self.momentum) * per_cluster)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"cluster_loss": self.cluster_loss.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.cluster_loss = state["cluster_loss"].clone()
