"""Data-free BN-statistics criterion after Oh, Kim, Baik, Hong, Lee, "Batch
Normalization Tells You Which Filter is Important", arXiv 2112.01155 (WACV 2022).

With BN, channel c's pre-activation is y = γ·x̂ + β with x̂ ≈ N(0, 1), so
y ≈ N(β, γ²) and its ReLU is a rectified Gaussian whose expected value follows
from (γ, β) alone, without data:

    E[ReLU(y)] = β·Φ(β/|γ|) + |γ|·φ(β/|γ|)

(Φ, φ: standard normal CDF and density). A channel that is almost always cut
off by the ReLU, or tiny, has a small expected output and is pruned first.

CAVEAT: this is the documented proxy from the paper's idea (abstract); the
paper's exact scoring function was NOT verified. Do not report results as
"the BN-based criterion of Oh et al." before checking it. The formula also
assumes a ReLU after the norm (LeakyReLU's negative slope is ignored).

By default only batch norms count (the paper's setting: γ, β plus normalised
inputs of zero mean and unit variance). ``norms="affine"`` also accepts affine
instance/group norms, whose per-sample normalisation makes x̂ even closer to
zero mean and unit variance. Groups without such a norm fall back to the L1
filter norm, noted, as in :mod:`bn_scale`; several norms in a group are summed.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medslim.pruning.criteria.base import Criterion, Scores, choice
from medslim.pruning.criteria.bn_scale import AFFINE_NORMS, norm_or_l1
from medslim.pruning.graph import DependencyGraph


def expected_relu(gamma: torch.Tensor, beta: torch.Tensor | None) -> torch.Tensor:
    """E[ReLU(y)] for y ~ N(β, γ²); the γ → 0 limit max(β, 0) is exact."""
    beta = torch.zeros_like(gamma) if beta is None else beta
    sigma = gamma.abs().double()
    z = beta.double() / sigma.clamp_min(1e-12)
    density = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return (beta.double() * torch.special.ndtr(z) + sigma * density).float()


class BNStats(Criterion):
    """score_c = E[ReLU(γ_c·x̂ + β_c)], x̂ ~ N(0, 1); data-free (proxy, see module doc)."""

    name = "bn_stats"

    def __init__(self, norms: str = "batch", normalize: str = "none"):
        super().__init__(normalize)
        self.norms = choice("norms", norms, ("batch", "affine"))

    def _scores(self, model: nn.Module, graph: DependencyGraph, data=None) -> Scores:
        kinds = (_BatchNorm,) if self.norms == "batch" else AFFINE_NORMS
        what = "a batch norm" if self.norms == "batch" else "an affine norm layer"
        return norm_or_l1(self, model, graph, kinds, expected_relu, what)
