"""Filter-norm criteria: Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for
Efficient ConvNets", ICLR 2017.

Li et al. score filter j of a layer by s_j = Σ|W_j| (sum of absolute weights
over C_in × k × k, Sec. 3.1): a small filter produces weak feature maps
compared with the other filters of its layer. ``l2`` uses ||W_j||₂ instead (the
norm Soft Filter Pruning ranks by). Biases are not part of the filter, as in
the paper. Scores are meant for per-layer ranking, as in the paper; use
``normalize`` (``l2`` or ``mean`` per group) before a global ranking.
"""

from __future__ import annotations

from torch import nn

from medslim.pruning.criteria.base import Criterion, Scores, per_producer_sum
from medslim.pruning.graph import DependencyGraph


class L1Norm(Criterion):
    """s_j = Σ_producers Σ|W_j| (Li et al. 2017, Sec. 3.1)."""

    name = "l1"
    order = 1

    def __init__(self, normalize: str = "none"):
        super().__init__(normalize)

    def _scores(self, model: nn.Module, graph: DependencyGraph, data=None) -> Scores:
        return {g.id: per_producer_sum(model, g, lambda w: w.norm(p=self.order, dim=1))
                for g in graph.prunable_groups()}


class L2Norm(L1Norm):
    """s_j = Σ_producers ||W_j||₂."""

    name = "l2"
    order = 2
