"""Network slimming: Liu, Li, Shen, Huang, Yan, Zhang, "Learning Efficient
Convolutional Networks through Network Slimming", ICCV 2017.

Each channel's BN scale γ multiplies its normalised output, so |γ| says how
much the channel contributes; training with an L1 penalty λΣ|γ| (eq. 1 of the
paper) drives unneeded scales to zero, and channels are pruned by |γ|.
Instance and group norms with affine weights play the same role and are used
too (medslim's nnU-Net-style U-Net uses affine instance norm). A group with
several norms (channels added by a residual) scores Σ|γ| over them. A group
without an affine norm (a transposed conv feeding a concat) falls back to its
L1 filter norm (Li et al. 2017), recorded in ``notes``: rank such groups per
layer or normalise, since the two scales differ.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from medslim.errors import ConfigError
from medslim.pruning.criteria.base import Criterion, Scores, affine_norms, per_producer_sum
from medslim.pruning.graph import DependencyGraph

AFFINE_NORMS = (_NormBase, nn.GroupNorm)  # batch and instance norms, group norm


def _affine_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules()
            if isinstance(m, AFFINE_NORMS) and getattr(m, "weight", None) is not None]


def bn_l1_penalty(model: nn.Module, lam: float = 1e-4) -> torch.Tensor:
    """λ Σ|γ| over every affine norm weight: the sparsity term added to the training loss."""
    weights = _affine_weights(model)
    if not weights:
        return torch.zeros(())
    return lam * sum(w.abs().sum() for w in weights)


@torch.no_grad()
def slimming_subgradient(model: nn.Module, lam: float = 1e-4) -> None:
    """Add λ·sign(γ) to each γ.grad after ``backward()``, as the authors' ``updateBN`` does.

    Same update as back-propagating :func:`bn_l1_penalty`, without building
    its graph. A γ without a gradient yet gets λ·sign(γ).
    """
    for w in _affine_weights(model):
        step = lam * torch.sign(w)
        w.grad = step.clone() if w.grad is None else w.grad.add_(step)


def norm_or_l1(criterion: Criterion, model: nn.Module, graph: DependencyGraph, kinds: tuple,
               per_norm, requirement: str) -> Scores:
    """Σ per_norm(γ, β) over the group's norms of ``kinds``; L1 filter norm where none.

    Raises ConfigError if no prunable group has such a norm at all.
    """
    groups = graph.prunable_groups()
    found = {g.id: affine_norms(model, g, kinds) for g in groups}
    if groups and not any(found.values()):
        raise ConfigError(f"pruning method {criterion.name!r} needs {requirement}, and no "
                          f"prunable channel group of this model has one")
    out = {}
    for g in groups:
        if found[g.id]:
            out[g.id] = sum(per_norm(w, b) for w, b in found[g.id])
        else:
            out[g.id] = per_producer_sum(model, g, lambda w: w.abs().sum(1))
            criterion.notes.append(f"{g.describe()} has no {requirement}: scored by its L1 "
                                   f"filter norm instead")
    return out


class Slimming(Criterion):
    """score_j = |γ_j| of the group's affine norm(s) (Liu et al. 2017)."""

    name = "slimming"
    rank_normalize = "none"  # the paper thresholds the scales globally as they are

    def __init__(self, normalize: str = "none"):
        super().__init__(normalize)

    def _scores(self, model: nn.Module, graph: DependencyGraph, data=None) -> Scores:
        return norm_or_l1(self, model, graph, AFFINE_NORMS, lambda w, b: w.abs(),
                          "an affine norm layer (batch/instance/group norm with weights)")
