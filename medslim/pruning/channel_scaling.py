"""Channel scaling: select a small classifier from a frozen pretrained network.

Wong, Kashyap and Moradi, "Channel Scaling: A Scale-and-Select Approach for
Transfer Learning", ISBI 2021. The pretrained weights stay frozen; a
trainable scale ``s_c`` multiplies every channel after its activation
(``y_c = s_c * ReLU(BN(conv(x)))_c``). The scales and the classifier head are
trained with cross-entropy plus ``lam * sum |s|``; channels whose scale ends
under ``threshold`` are removed through the pruning engine; the rest of the
scales are folded into the weights, so nothing extra remains at inference.
Rounds repeat (fresh scales at 1) until a parameter target is met, nothing
falls under the threshold, or ``rounds`` is reached.

Which channels get a scale comes from the dependency graph, so VGG, MONAI
DenseNet121 and ResNet all work: a group gets one if it has one producer,
at most one norm (with an affine weight) and exactly one post-activation
output, a ReLU or LeakyReLU. Then scaling that output gates every use of
the channel (removing a channel equals ``s_c = 0``) and a kept scale folds
exactly into the norm's weight and bias (or the producer's, without a norm),
because ``s * relu(z) = relu(s * z)`` for ``s >= 0``. Groups a residual sum
or a dense concat spreads over several activations (ResNet's identity
stream, DenseNet's growth channels) keep their channels; the report lists
them.

Choices where the paper is silent (docs/channel_scaling.md):

- the forward uses ``|s|``, so a scale that crosses zero cannot flip a
  channel's sign and folding stays exact;
- the scales are re-created at 1 each round (the paper's patent removes the
  CS layers after selection); the weights of kept channels change only by
  the folded positive factor;
- frozen batch norms keep their pretrained running statistics (eval mode);
- after the last removal one more round trains the head and scales without
  removing anything (``settle``), so the head sees the final architecture.
"""

from __future__ import annotations

import copy
import heapq
import math
import time
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from medslim.errors import ConfigError
from medslim.pretrained import classifier_head
from medslim.pruning.graph import ChannelGroup, DependencyGraph, PruningError, Site, hook_sites
from medslim.pruning.pruner import CostModel, PruneReport, layer_widths
from medslim.pruning.surgery import prune_channels
from medslim.training.hooks import TrainingHook

SCALES_ATTR = "medslim_channel_scales"
# activations for which a positive scale commutes: s * act(z) = act(s * z)
HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU)
TrainRound = Callable[[nn.Module, TrainingHook, int], None]


class ChannelScales(nn.Module):
    """The CS layers of one round: a vector of scales per gated group, started at 1."""

    def __init__(self, sizes: Sequence[int]):
        super().__init__()
        self.scales = nn.ParameterList([nn.Parameter(torch.ones(n)) for n in sizes])

    def l1(self) -> torch.Tensor:
        return sum(s.abs().sum() for s in self.scales)


class ScaleTraining(TrainingHook):
    """Applies the scales to the gated activations and adds ``lam * sum |s|`` to the loss."""

    keep_last = True  # the sparsest scales are the last ones, not the best validation epoch

    def __init__(self, gates: list[tuple[ChannelGroup, Site]], scales: ChannelScales, lam: float):
        self.gates, self.scales, self.lam = gates, scales, lam
        self._handles: list = []

    def begin(self, model: nn.Module) -> None:
        self.close()
        self._handles = hook_sites(model, [(i, site) for i, (_, site) in enumerate(self.gates)], self._scale)

    def _scale(self, i: int, site: Site, out: torch.Tensor, module: nn.Module) -> torch.Tensor:
        scale = self.scales.scales[i].abs().to(out.dtype)
        factor = torch.ones(out.shape[1], dtype=out.dtype, device=out.device)
        factor = torch.cat([factor[:site.offset], scale, factor[site.offset + scale.numel():]])
        return out * factor.view(1, -1, *([1] * (out.dim() - 2)))

    def extra_loss(self) -> Optional[torch.Tensor]:
        return self.lam * self.scales.l1() if self.lam else None

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def channel_scaling(model: nn.Module, example_input, train: TrainRound, *, lam: float = 1e-3,
                    threshold: float = 0.05, rounds: int = 10, params_ratio: float | None = None,
                    head: str | None = None, ignored: Sequence = (), round_to: int = 1,
                    settle: bool = True, inplace: bool = False,
                    progress: Callable[[dict], None] | None = None) -> nn.Module:
    """Select channels of a frozen pretrained classifier by trained scales; returns the smaller model.

    Args:
        model: a classifier whose weights (all but the head) are pretrained.
        example_input: a tensor of the input shape (batch 1 is fine).
        train: ``train(model, hook, round)`` trains the model's trainable
            parameters (the head and the scales; everything else is frozen
            here) with ``hook`` plugged into the loop, e.g.
            ``lambda m, h, r: fit(m, data, cfg, folder / f"round{r}", hook=h)``.
        lam: weight of the L1 norm of the scales (paper: lambda).
        threshold: channels whose ``|s|`` ends below it are removed.
        rounds: the most selection rounds.
        params_ratio: stop once the model has at most this fraction of its
            parameters (the last round removes no more than needed).
        head: path of the classifier head (default: the last Linear's container).
        ignored, round_to: as for :class:`DependencyGraph`.
        settle: after the last removal, one round that trains without removing.

    Example::

        >>> small = channel_scaling(net, torch.zeros(1, 1, 64, 64),
        ...                         train=lambda m, hook, r: fit(m, data, cfg, Path(f"r{r}"), hook=hook),
        ...                         params_ratio=0.05)
        >>> small.medslim_pruning.rounds   # per round: removed, params, seconds
    """
    from medslim.cost import count_flops, count_params

    _check_options(lam, threshold, rounds, params_ratio)
    model = model if inplace else copy.deepcopy(model)
    head = head or classifier_head(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    flops0, params0 = count_flops(model, example_input), count_params(model)
    history: list[dict[str, Any]] = []
    notes: list[str] = []
    try:
        for r in range(1, rounds + 2):
            reached = params_ratio is not None and count_params(model) <= params_ratio * params0 * (1 + 1e-9)
            last_removed = history[-1]["removed"] if history else None
            selecting = r <= rounds and not reached and last_removed != 0
            if not selecting and (not settle or last_removed in (None, 0)):
                break
            row = _round(model, example_input, train, r, lam, threshold, head, ignored, round_to,
                         params_ratio * params0 if params_ratio is not None else None,
                         selecting, notes)
            if row is None:
                break
            row.update(params=count_params(model), flops=count_flops(model, example_input))
            history.append(row)
            if progress:
                progress(row)
            if not selecting:
                break
    finally:
        _remove_scales(model)
        for name, p in model.named_parameters():
            p.requires_grad_(flags.get(name, True))
    model.medslim_pruning = PruneReport(
        "channel_scaling", {"params": params_ratio} if params_ratio is not None else {},
        flops0, count_flops(model, example_input), params0, count_params(model),
        steps=sum(1 for h in history if h["selecting"]), scope="global", widths=layer_widths(model),
        notes=notes, rounds=history)
    return model


def _round(model, example_input, train, r, lam, threshold, head, ignored, round_to, params_cap,
           selecting: bool, notes: list[str]) -> dict[str, Any] | None:
    """Train fresh scales and the head; remove channels under the threshold (when ``selecting``); fold."""
    start = time.perf_counter()
    graph = DependencyGraph(model, example_input, ignored=ignored, round_to=round_to)
    gates, skipped = gated_groups(model, graph, head)
    if not gates and r > 1:
        return None  # every scaled group is down to its last channel
    if not gates:
        raise PruningError("channel scaling found no channel group it can scale: it needs groups "
                           "with one producer and one ReLU output; " + "; ".join(skipped[:3]))
    if r == 1 and skipped:
        notes.append(f"{len(skipped)} channel groups have no single activation to scale and keep "
                     f"their channels, e.g. {skipped[0]}")
    scales = ChannelScales([g.size for g, _ in gates])
    for name, p in model.named_parameters():
        p.requires_grad_(name == head or name.startswith(head + "."))
    model.add_module(SCALES_ATTR, scales)
    try:
        train(model, ScaleTraining(gates, scales, lam), r)
    finally:
        _remove_scales(model)
    values = [s.detach().abs() for s in scales.scales]
    below = sum(int((v < threshold).sum()) for v in values)
    keep = _select(model, graph, example_input, gates, values, threshold, params_cap) if selecting else {}
    _fold(model, gates, values)
    if keep:
        prune_channels(model, graph, keep)
    removed = sum(g.size - len(keep[g.id]) for g, _ in gates if g.id in keep)
    return {"round": r, "selecting": selecting, "below_threshold": below, "removed": removed,
            "gated_channels": sum(g.size for g, _ in gates), "seconds": time.perf_counter() - start}


def gated_groups(model: nn.Module, graph: DependencyGraph,
                 head: str = "") -> tuple[list[tuple[ChannelGroup, Site]], list[str]]:
    """The groups one scale after one activation can gate exactly, and why the others cannot.

    Groups produced inside ``head`` (hidden layers of an MLP head) are the
    trainable head's own and are neither scaled nor listed.
    """
    gates, skipped = [], []
    for group in graph.prunable_groups():
        if head and any(p.module == head or p.module.startswith(head + ".") for p in group.producers):
            continue
        why = _why_not_gated(model, group)
        if why:
            skipped.append(f"{group.describe()}: {why}")
        else:
            gates.append((group, next(s for s in group.sites if s.activation)))
    return gates, skipped


def _why_not_gated(model: nn.Module, group: ChannelGroup) -> str:
    acts = [s for s in group.sites if s.activation]
    if len(acts) != 1:
        return f"{len(acts)} activation outputs"
    if len(group.producers) != 1 or group.producers[0].depthwise:
        return "a residual sum or depthwise layer shares it"
    if len(group.norms) > 1:
        return "several norms"
    if not isinstance(model.get_submodule(acts[0].module), HOMOGENEOUS):
        return f"activation {type(model.get_submodule(acts[0].module)).__name__} does not commute with a scale"
    if group.norms and getattr(model.get_submodule(group.norms[0].module), "weight", None) is None:
        return "its norm has no affine weight to fold a scale into"
    return ""


def _select(model, graph, example_input, gates, values, threshold, params_cap) -> dict[int, torch.Tensor]:
    """Channels to keep: those at or above the threshold, fewer removed if the cap is met sooner."""
    cost = CostModel(model, graph, example_input) if params_cap is not None else None
    heap = []
    dropped = {}
    for (group, _), v in zip(gates, values):
        order = torch.argsort(v)
        dropped[group.id] = (order, 0, _max_drop(group, int((v < threshold).sum())))
        if dropped[group.id][2] > 0:
            heapq.heappush(heap, (float(v[order[0]]), group.id, group.divisor))
    groups = {g.id: g for g, _ in gates}
    value_of = {g.id: v for (g, _), v in zip(gates, values)}
    while heap and (cost is None or cost.total_params() > params_cap):
        _, gid, unit = heapq.heappop(heap)
        order, n, limit = dropped[gid]
        n += unit
        dropped[gid] = (order, n, limit)
        if cost is not None:
            cost.drop(gid, unit)
        if n + groups[gid].divisor <= limit:
            heapq.heappush(heap, (float(value_of[gid][order[n]]), gid, groups[gid].divisor))
    return {gid: torch.sort(order[n:]).values for gid, (order, n, _) in dropped.items() if n}


def _max_drop(group: ChannelGroup, below: int) -> int:
    """Channels under the threshold that may go: at least ``divisor`` stay, widths stay multiples of it."""
    d = group.divisor
    kept = max(d, math.ceil((group.size - below) / d) * d)
    return max(0, group.size - kept) if group.size % d == 0 else 0


@torch.no_grad()
def _fold(model: nn.Module, gates: list[tuple[ChannelGroup, Site]], values: list[torch.Tensor]) -> None:
    """Multiply each gated channel's last affine step by its scale: the output is unchanged."""
    for (group, _), scale in zip(gates, values):
        if group.norms:
            norm = group.norms[0]
            module = model.get_submodule(norm.module)
            targets = [(module.weight, 0, norm.offset), (getattr(module, "bias", None), 0, norm.offset)]
        else:
            prod = group.producers[0]
            module = model.get_submodule(prod.module)
            targets = [(module.weight, prod.dim, prod.offset), (getattr(module, "bias", None), 0, prod.offset)]
        for tensor, dim, offset in targets:
            if tensor is None:
                continue
            part = tensor.narrow(dim, offset, scale.numel())
            shape = [1] * tensor.dim()
            shape[dim] = -1
            part.mul_(scale.to(tensor.dtype).view(shape))


def _remove_scales(model: nn.Module) -> None:
    if SCALES_ATTR in model._modules:
        del model._modules[SCALES_ATTR]


def _check_options(lam, threshold, rounds, params_ratio) -> None:
    checks = [("lam", lam, isinstance(lam, (int, float)) and lam >= 0),
              ("threshold", threshold, isinstance(threshold, (int, float)) and 0 < threshold < 1),
              ("rounds", rounds, isinstance(rounds, int) and not isinstance(rounds, bool) and rounds >= 1),
              ("params_ratio", params_ratio, params_ratio is None or (
                  isinstance(params_ratio, (int, float)) and 0 < params_ratio <= 1))]
    for name, value, ok in checks:
        if not ok:
            raise ConfigError(f"channel_scaling option {name}={value!r} is out of range")
