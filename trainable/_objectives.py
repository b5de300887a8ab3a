"""Training objectives, one function per ``objective.variant``, and the warm start's loss.

Each takes a :class:`Batch` and returns (loss, named terms, per-example magnet loss or None).
Attacks run under :func:`frozen` and differentiate only with respect to the input, in the
config's threat model (``attack.norm``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._attacks import embedding_margin_loss, frozen, pgd, project
from ._config import TrainConfig
from ._heads import ClusterHead
from ._magnet import magnet_loss
from ._models import Backbone

__all__ = ["Batch", "OBJECTIVES", "consistency", "head_adversarial", "warm_start_loss"]


@dataclass
class Batch:
    model: Backbone
    head: ClusterHead | None
    cfg: TrainConfig
    x: torch.Tensor  # [B, C, H, W] in [0, 1], augmented
    y: torch.Tensor
    # a clustering batch has M slots, one sampled cluster each, D examples per slot
    example_slot: torch.Tensor | None  # [B] the slot (0..M-1) of each example
    slot_class: torch.Tensor | None  # [M] the class of each slot's cluster
    generator: torch.Generator
    slot_cluster: torch.Tensor | None = None  # [M] each slot's cluster id (for the sampler)

    def magnet(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return magnet_loss(emb, self.example_slot, self.slot_class, self.cfg.clusters.alpha)

    def attack(self, loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        a = self.cfg.attack
        with frozen(self.model):
            return pgd(loss_fn, self.x, self.cfg.eps, a.step_size, a.steps, a.norm,
                       generator=self.generator)


Result = tuple[torch.Tensor, dict[str, float], torch.Tensor | None]


def consistency(kind: str, emb: torch.Tensor, z: torch.Tensor, emb_adv: torch.Tensor,
                z_adv: torch.Tensor, reduction: str) -> torch.Tensor:
    """QTRADES consistency between clean and adversarial outputs, per example then reduced.

    ce: CE between the detached clean vote p(x) and softmax(z(x_adv)); mse: squared error
    between embeddings (mean over dimensions); kl: KL(p(x) || softmax(z(x_adv))).
    """
    log_q = F.log_softmax(z_adv, dim=1)
    if kind == "ce":
        per = -(F.softmax(z, dim=1).detach() * log_q).sum(1)
    elif kind == "mse":
        per = (emb_adv - emb).pow(2).mean(1)
    else:
        log_p = F.log_softmax(z, dim=1)
        per = (log_p.exp() * (log_p - log_q)).sum(1)
    return per.mean() if reduction == "mean" else per.sum()


def _ce(b: Batch) -> Result:
    loss = F.cross_entropy(b.model.linear_logits(b.x), b.y)
    return loss, {"ce": loss.item()}, None


Attack = Callable[[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]  # loss -> x_adv


def _pgd_at_loss(model: Backbone, y: torch.Tensor, attack: Attack
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """Madry et al.: CE of the linear head at the point that maximises it."""
    x_adv = attack(lambda xa: F.cross_entropy(model.linear_logits(xa), y))
    loss = F.cross_entropy(model.linear_logits(x_adv), y)
    return loss, {"ce_adv": loss.item()}


def _trades_loss(model: Backbone, x: torch.Tensor, y: torch.Tensor, beta: float,
                 attack: Attack) -> tuple[torch.Tensor, dict[str, float]]:
    """Zhang et al.: CE(x) + beta * KL(p(x) || p(x_adv)), x_adv maximising the KL."""
    with torch.no_grad(), frozen(model):
        p_clean = F.softmax(model.linear_logits(x), dim=1)

    def kl_to_clean(xa: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(model.linear_logits(xa), 1), p_clean, reduction="sum")

    x_adv = attack(kl_to_clean)
    logits = model.linear_logits(x)
    ce = F.cross_entropy(logits, y)
    kl = F.kl_div(F.log_softmax(model.linear_logits(x_adv), 1), F.softmax(logits, 1),
                  reduction="batchmean")
    return ce + beta * kl, {"ce": ce.item(), "kl": kl.item()}


def _pgd_at(b: Batch) -> Result:
    loss, terms = _pgd_at_loss(b.model, b.y, b.attack)
    return loss, terms, None


def _trades(b: Batch) -> Result:
    loss, terms = _trades_loss(b.model, b.x, b.y, b.cfg.objective.lam, b.attack)
    return loss, terms, None


def warm_start_loss(model: Backbone, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                    eps: float, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """The warm start's loss on a batch: CE, or PGD-AT or TRADES (beta ``warm_start.beta``) of
    the linear head against ``warm_start.attack_steps`` steps of 2.5 eps / steps in the
    config's norm, at radius eps (ramped by the caller when asked)."""
    ws = cfg.warm_start
    if ws.variant == "ce":
        loss = F.cross_entropy(model.linear_logits(x), y)
        return loss, {"ce": loss.item()}

    def attack(loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        with frozen(model):
            return pgd(loss_fn, x, eps, 2.5 * eps / ws.attack_steps, ws.attack_steps,
                       cfg.attack.norm, generator=generator)

    if ws.variant == "pgd_at":
        return _pgd_at_loss(model, y, attack)
    return _trades_loss(model, x, y, ws.beta, attack)


def head_adversarial(kind: str, z: torch.Tensor, z_adv: torch.Tensor, y: torch.Tensor
                     ) -> torch.Tensor:
    """The adversarial term on the head (``objective.lam_head_adv``): ``ce`` is
    CE(z(x_adv), y); ``kl`` is TRADES' KL(softmax z(x) || softmax z(x_adv)), batch mean, with
    gradients through both."""
    if kind == "ce":
        return F.cross_entropy(z_adv, y)
    return F.kl_div(F.log_softmax(z_adv, 1), F.softmax(z, 1), reduction="batchmean")


def _with_head_adversarial(b: Batch, loss: torch.Tensor, terms: dict[str, float],
                           emb: torch.Tensor, emb_adv: torch.Tensor) -> torch.Tensor:
    obj = b.cfg.objective
    if obj.lam_head_adv == 0:
        return loss
    term = head_adversarial(obj.head_adv_loss, b.head(emb), b.head(emb_adv), b.y)
    terms["head_adv"] = term.item()
    return loss + obj.lam_head_adv * term


def _magnet(b: Batch) -> Result:
    loss, per = b.magnet(b.model.embed(b.x))
    return loss, {"magnet": loss.item()}, per


def _qtrades(b: Batch) -> Result:
    obj = b.cfg.objective
    with torch.no_grad(), frozen(b.model):
        emb_c = b.model.embed(b.x)
        z_c = b.head(emb_c)

    def attack_loss(xa: torch.Tensor) -> torch.Tensor:
        emb_a = b.model.embed(xa)
        return consistency(b.cfg.attack.loss, emb_c, z_c, emb_a, b.head(emb_a), "sum")

    x_adv = b.attack(attack_loss)
    emb = b.model.embed(b.x)
    magnet, per = b.magnet(emb)
    z = b.head(emb)
    emb_adv = b.model.embed(x_adv)
    cons = consistency(obj.consistency, emb, z, emb_adv, b.head(emb_adv), obj.reduction)
    loss = magnet + obj.lam * cons
    terms = {"magnet": magnet.item(), "consistency": cons.item()}
    if obj.lam_ce > 0:
        ce = F.cross_entropy(z, b.y)
        loss = loss + obj.lam_ce * ce
        terms["ce"] = ce.item()
    return _with_head_adversarial(b, loss, terms, emb, emb_adv), terms, per


def _attack_target(b: Batch) -> Callable[[torch.Tensor], torch.Tensor]:
    """What magnet_adv's attack maximises (``attack.target``)."""
    target = b.cfg.attack.target
    if target == "magnet":
        return lambda xa: b.magnet(b.model.embed(xa))[0]
    if target == "head":
        return lambda xa: F.cross_entropy(b.head(b.model.embed(xa)), b.y, reduction="sum")
    return embedding_margin_loss(b.model.embed, b.head.centroids, b.head.centroid_class, b.y)


def _magnet_adv(b: Batch) -> Result:
    x_adv = b.attack(_attack_target(b))
    emb = b.model.embed(b.x)
    magnet, per = b.magnet(emb)
    emb_adv = b.model.embed(x_adv)
    magnet_adv, _ = b.magnet(emb_adv)
    loss = magnet + b.cfg.objective.lam * magnet_adv
    terms = {"magnet": magnet.item(), "magnet_adv": magnet_adv.item()}
    if b.cfg.objective.lam_ce > 0:
        ce = F.cross_entropy(b.head(emb), b.y)
        loss = loss + b.cfg.objective.lam_ce * ce
        terms["ce"] = ce.item()
    return _with_head_adversarial(b, loss, terms, emb, emb_adv), terms, per


def free_magnet_adv_replay(b: Batch, delta: torch.Tensor) -> tuple[Result, torch.Tensor]:
    """One replay of free adversarial training: a single backward serves weights and delta.

    The loss is magnet(x) + lam * magnet(x + delta); the caller steps the optimiser on the
    weights' gradients, and delta takes a signed step of size eps (Shafahi et al. 2019).
    """
    eps = b.cfg.eps
    delta = delta.detach().requires_grad_(True)
    x_adv = (b.x + delta).clamp(0, 1)
    magnet, per = b.magnet(b.model.embed(b.x))
    magnet_adv, _ = b.magnet(b.model.embed(x_adv))
    loss = magnet + b.cfg.objective.lam * magnet_adv
    loss.backward()
    new_delta = project(b.x + delta.detach() + eps * delta.grad.sign(), b.x, eps) - b.x
    terms = {"magnet": magnet.item(), "magnet_adv": magnet_adv.item()}
    return (loss.detach(), terms, per), new_delta.detach()


OBJECTIVES: dict[str, Callable[[Batch], Result]] = {
    "ce": _ce, "pgd_at": _pgd_at, "trades": _trades,
    "magnet": _magnet, "qtrades": _qtrades, "magnet_adv": _magnet_adv,
}
