"""Pruning criteria: channel importance scores per channel group, by name.

``get_criterion("taylor", batches=4).scores(model, graph, data)`` returns
{group id: tensor of one score per channel} for every prunable group of the
:class:`~medslim.pruning.DependencyGraph`; higher = keep. How many channels go
where (per layer or global ranking, schedule) is decided elsewhere.
"""

from __future__ import annotations

import inspect
from typing import Any

from medslim.errors import ConfigError, unknown_name
from medslim.pruning.criteria.base import Criterion, DataCriterion, per_producer_sum
from medslim.pruning.criteria.bn_scale import Slimming, bn_l1_penalty, slimming_subgradient
from medslim.pruning.criteria.bn_stats import BNStats
from medslim.pruning.criteria.fpgm import FPGM
from medslim.pruning.criteria.hrank import HRank
from medslim.pruning.criteria.magnitude import L1Norm, L2Norm
from medslim.pruning.criteria.random import RandomScores
from medslim.pruning.criteria.taylor import Taylor, TaylorGate, TaylorGN, TaylorRand

CRITERIA: dict[str, type[Criterion]] = {cls.name: cls for cls in (
    L1Norm, L2Norm, FPGM, Taylor, TaylorGate, TaylorGN, TaylorRand, HRank, Slimming, BNStats,
    RandomScores)}


def criterion_options(name: str) -> list[str]:
    """The keyword options a criterion accepts."""
    if name not in CRITERIA:
        raise unknown_name("pruning method", name, CRITERIA)
    params = inspect.signature(CRITERIA[name].__init__).parameters
    return [p for p in params if p != "self"]


def get_criterion(name: str, **options: Any) -> Criterion:
    """The criterion called ``name``, built with ``options``; ConfigError for unknown ones."""
    allowed = criterion_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown option {', '.join(map(repr, unknown))} for pruning method "
                          f"{name!r}; allowed options: {', '.join(allowed) or 'none'}")
    return CRITERIA[name](**options)


__all__ = ["CRITERIA", "Criterion", "DataCriterion", "bn_l1_penalty", "criterion_options",
           "get_criterion", "per_producer_sum", "slimming_subgradient"]
