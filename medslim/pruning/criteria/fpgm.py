"""FPGM: He, Liu, Wang, Hu, Yang, "Filter Pruning via Geometric Median for Deep
Convolutional Neural Networks Acceleration", CVPR 2019.

The filters closest to the geometric median of their layer are the most
replaceable by the others. As in the authors' code
(``Mask.get_filter_similar``), the distance to the median is approximated by
the sum of Euclidean distances to all filters of the layer:
score_j = Σ_k ||F_j − F_k||₂, smallest = pruned first. For a group with several
producers each channel's filter is the concatenation of its producers'
filters, so distances see every weight removed with the channel.
"""

from __future__ import annotations

import torch
from torch import nn

from medslim.pruning.criteria.base import Criterion, Scores, producer_filters
from medslim.pruning.graph import DependencyGraph


class FPGM(Criterion):
    """score_j = Σ_k ||F_j − F_k||₂ over the group's (concatenated) filters."""

    name = "fpgm"

    def __init__(self, normalize: str = "none"):
        super().__init__(normalize)

    def _scores(self, model: nn.Module, graph: DependencyGraph, data=None) -> Scores:
        out = {}
        for g in graph.prunable_groups():
            filters = torch.cat(producer_filters(model, g), dim=1).double()
            out[g.id] = torch.cdist(filters, filters).sum(dim=1)
        return out
