"""Random scores: the baseline any criterion has to beat to be worth its cost."""

from __future__ import annotations

import torch
from torch import nn

from medslim.errors import ConfigError
from medslim.pruning.criteria.base import Criterion, Scores
from medslim.pruning.graph import DependencyGraph


class RandomScores(Criterion):
    """Uniform [0, 1) scores from a generator seeded with ``seed``, groups in id order."""

    name = "random"
    rank_normalize = "none"

    def __init__(self, seed: int = 0):
        super().__init__()
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"option seed must be an int, got {seed!r}")
        self.seed = seed

    def _scores(self, model: nn.Module, graph: DependencyGraph, data=None) -> Scores:
        gen = torch.Generator().manual_seed(self.seed)
        return {g.id: torch.rand(g.size, generator=gen) for g in graph.prunable_groups()}
