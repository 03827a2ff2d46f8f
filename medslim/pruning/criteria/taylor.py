"""First-order Taylor criteria: the loss change when a channel's output is zeroed.

All four observe a channel's feature map a (the group's post-activation site,
see :mod:`base`) and the gradient g of the loss with respect to it, over a few
batches, in eval mode. They differ in how a·g is pooled:

* ``taylor``: Molchanov, Tyree, Karras, Aila, Kautz, "Pruning Convolutional
  Neural Networks for Resource Efficient Inference", ICLR 2017:
  Θ = |mean over positions and samples of a·g|, then layer-wise L2
  normalisation Θ / ||Θ||₂ so layers can be ranked together.
* ``taylor_gate``: Molchanov, Mallya, Tyree, Frosio, Kautz, "Importance
  Estimation for Neural Network Pruning", CVPR 2019: I = (Σ_s g_s w_s)² for a
  gate w = 1 on the channel, whose gradient is Σ_positions a·g. With the site
  after a ReLU this equals the paper's best variant (gate after BN), since
  Σ y·g·1[y>0] = Σ ReLU(y)·g. No per-layer normalisation (as the paper).
* ``taylor_gn``: Sapkota, Poudel, Regmi, Panthi, Bhattarai, "Neural Network
  Pruning for Real-time Polyp Segmentation", MIUA 2023, and Sapkota &
  Bhattarai, "Importance Estimation with Random Gradient for Neural Network
  Pruning", arXiv 2310.20203: the gradient at the network output is rescaled
  per sample to unit L2 norm (+1e-5) before back-propagation, so every sample
  weighs the same; I = mean_n |s_n| (``abs``) or mean_n s_n² (``sq``) with
  s_n = Σ_positions a·g.
* ``taylor_rand``: the same with a random unit-norm gradient at the output
  instead of the loss gradient: label-free.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from medslim.errors import ConfigError
from medslim.pruning.criteria.base import (DataCriterion, LossFn, Scores, choice, default_loss,
                                           observe)
from medslim.pruning.graph import DependencyGraph


def _per_sample(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """s[n, c] = Σ_positions a·g: the gradient of a gate on channel c, sample n."""
    return (a * g).flatten(2).sum(2) if a.dim() > 2 else a * g


def _unit_per_sample(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each sample's gradient over all outputs scaled to unit L2 norm (Sapkota 2023)."""
    sq = sum(g.flatten(1).pow(2).sum(1) for g in grads)
    scale = sq.sqrt() + 1e-5
    return [g / scale.view(-1, *[1] * (g.dim() - 1)) for g in grads]


class _Gradient(DataCriterion):
    """Back-propagate from the outputs and pool a·g per channel; subclasses pool."""

    rank_normalize = "none"  # the Taylor papers rank their scores globally as they are

    def __init__(self, batches: int = 8, loss_fn: Optional[LossFn] = None,
                 normalize: str = "none"):
        super().__init__(batches, normalize)
        if loss_fn is not None and not callable(loss_fn):
            raise ConfigError(f"option loss_fn must be a callable (output, label) -> loss, "
                              f"got {type(loss_fn).__name__}")
        self.loss_fn = loss_fn
        self._loss: Optional[LossFn] = None

    def _loss_grad(self, outs: list[torch.Tensor], y: Optional[torch.Tensor]) -> list[torch.Tensor]:
        if y is None:
            raise ConfigError(f"pruning method {self.name!r} needs labels in its data batches "
                              f"(use taylor_rand for label-free scoring)")
        if self._loss is None:
            self._loss = self.loss_fn or default_loss(y)
        loss = self._loss(outs if len(outs) > 1 else outs[0], y)
        return list(torch.autograd.grad(loss, outs, retain_graph=True))

    def _out_grad(self, outs: list[torch.Tensor], y: Optional[torch.Tensor]) -> list[torch.Tensor]:
        return self._loss_grad(outs, y)

    def _pool(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """One batch's contribution, (C,)."""
        raise NotImplementedError

    def _finish(self, total: torch.Tensor, batches: int, samples: int) -> torch.Tensor:
        return total / batches

    def _scores(self, model: nn.Module, graph: DependencyGraph, data: Any) -> Scores:
        self._loss = None
        total: dict[int, torch.Tensor] = {}
        samples = [0]

        def on_batch(acts: dict, grads: dict) -> None:
            for gid, a in acts.items():
                total[gid] = total.get(gid, 0) + self._pool(a, grads[gid])
            samples[0] += next(iter(acts.values())).shape[0] if acts else 0

        batches = observe(model, graph, data, self.batches, on_batch, self._out_grad)
        return {gid: self._finish(t, batches, samples[0]) for gid, t in total.items()}


class Taylor(_Gradient):
    """Θ = |mean_{n, positions} a·g|, L2-normalised per group (Molchanov et al. 2017)."""

    name = "taylor"

    def __init__(self, batches: int = 8, loss_fn: Optional[LossFn] = None,
                 normalize: str = "l2"):
        super().__init__(batches, loss_fn, normalize)

    def _pool(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (a * g).transpose(0, 1).flatten(1).mean(1)

    def _finish(self, total: torch.Tensor, batches: int, samples: int) -> torch.Tensor:
        return (total / batches).abs()


class TaylorGate(_Gradient):
    """I = (Σ_positions a·g)² (Molchanov et al. 2019), averaged over batches.

    ``per="batch"`` (default) squares the minibatch gate gradient (Σ over
    samples first), as the authors' code does with a gate parameter shared by
    the batch; ``per="sample"`` squares each sample's value and sums them.
    """

    name = "taylor_gate"

    def __init__(self, batches: int = 8, loss_fn: Optional[LossFn] = None,
                 per: str = "batch", normalize: str = "none"):
        super().__init__(batches, loss_fn, normalize)
        self.per = choice("per", per, ("sample", "batch"))

    def _pool(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        s = _per_sample(a, g)
        return s.pow(2).sum(0) if self.per == "sample" else s.sum(0).pow(2)


class TaylorGN(_Gradient):
    """Gradient-normalised TaylorFO (Sapkota et al. 2023): mean_n |s_n| or mean_n s_n²."""

    name = "taylor_gn"

    def __init__(self, batches: int = 8, loss_fn: Optional[LossFn] = None, mode: str = "abs",
                 normalize: str = "none"):
        super().__init__(batches, loss_fn, normalize)
        self.mode = choice("mode", mode, ("abs", "sq"))

    def _out_grad(self, outs: list[torch.Tensor], y: Optional[torch.Tensor]) -> list[torch.Tensor]:
        return _unit_per_sample(self._loss_grad(outs, y))

    def _pool(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        s = _per_sample(a, g)
        return (s.abs() if self.mode == "abs" else s.pow(2)).sum(0)

    def _finish(self, total: torch.Tensor, batches: int, samples: int) -> torch.Tensor:
        return total / max(samples, 1)


class TaylorRand(TaylorGN):
    """Label-free TaylorFO (Sapkota & Bhattarai 2023): a random unit-norm output gradient.

    The gradient is N(0, 1) noise from a generator seeded with ``seed``,
    scaled per sample to unit norm, so scores are reproducible.
    """

    name = "taylor_rand"

    def __init__(self, batches: int = 8, mode: str = "abs", seed: int = 0,
                 normalize: str = "none"):
        super().__init__(batches, None, mode, normalize)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"option seed must be an int, got {seed!r}")
        self.seed = seed
        self._gen: Optional[torch.Generator] = None

    def _scores(self, model: nn.Module, graph: DependencyGraph, data: Any) -> Scores:
        self._gen = torch.Generator().manual_seed(self.seed)
        return super()._scores(model, graph, data)

    def _out_grad(self, outs: list[torch.Tensor], y: Optional[torch.Tensor]) -> list[torch.Tensor]:
        noise = [torch.randn(o.shape, generator=self._gen).to(o) for o in outs]
        return _unit_per_sample(noise)
