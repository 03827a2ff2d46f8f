"""HRank: Lin, Ji, Wang, Zhang, Zhang, Tian, Shao, "HRank: Filter Pruning using
High-Rank Feature Map", CVPR 2020.

A feature map of low matrix rank carries little information, and the average
rank of a filter's maps is stable across inputs (the paper's observation), so
a few batches suffice: score_j = mean over samples of rank(map_j), computed on
the post-activation output (the group's first activation site), as the
authors' ``rank_generation.py`` does after each ReLU.

The paper only has 2D maps. For a 3D map (D, H, W) we average the ranks of its
W slices of size D × H (slices along the last axis); a 1D map (L) or a vector
counts as a 1 × L matrix (rank 0 or 1). ``torch.linalg.matrix_rank`` uses its
default tolerance (σ_max · max(m, n) · eps).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medslim.pruning.criteria.base import DataCriterion, Scores, observe
from medslim.pruning.graph import DependencyGraph


def map_ranks(a: torch.Tensor) -> torch.Tensor:
    """Mean rank per (sample, channel) of (N, C, *spatial) maps, shape (N, C)."""
    if a.dim() == 5:
        return torch.linalg.matrix_rank(a.movedim(-1, 2)).float().mean(2)
    while a.dim() < 4:
        a = a.unsqueeze(2)
    return torch.linalg.matrix_rank(a).float()


class HRank(DataCriterion):
    """score_j = average matrix rank of channel j's feature maps over the batches seen."""

    name = "hrank"

    def __init__(self, batches: int = 8, normalize: str = "none"):
        super().__init__(batches, normalize)

    def _scores(self, model: nn.Module, graph: DependencyGraph, data: Any) -> Scores:
        total: dict[int, torch.Tensor] = {}
        count = [0]

        def on_batch(acts: dict, grads: dict) -> None:
            for gid, a in acts.items():
                total[gid] = total.get(gid, 0) + map_ranks(a).sum(0)
            count[0] += next(iter(acts.values())).shape[0] if acts else 0

        observe(model, graph, data, self.batches, on_batch)
        return {gid: t / max(count[0], 1) for gid, t in total.items()}
