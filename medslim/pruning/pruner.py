"""How much to prune and when: targets, ranking scope and schedules.

The three ideas of a pruner live in three places: :mod:`graph` says which
channels are coupled, :mod:`criteria` says how important each channel is, and
this module decides how many channels go, where and in how many steps.

Targets are met with an analytic cost model: the FLOPs and parameters of every
conv/linear layer (measured once with PyTorch's flop counter) scale with the
fraction of its input and output channels kept, and every prunable group
knows the layers it touches. That makes choosing the channels cheap; the
achieved ratio is then measured on the pruned model and a short correction
pass removes more if the model was off.
"""

from __future__ import annotations

import copy
import heapq
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
from torch import nn

from medslim.errors import ConfigError, unknown_name
from medslim.pruning.graph import ChannelGroup, DependencyGraph, PruningError
from medslim.pruning.surgery import prune_channels

if TYPE_CHECKING:
    from medslim.pruning.criteria import Criterion

SCOPES = ("global", "local")
NORMALIZERS = ("mean", "max", "l2", "none")


@dataclass
class PruneReport:
    """What a pruning call did; attached to the model as ``medslim_pruning``."""

    method: str
    target: dict[str, float]
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    steps: int
    scope: str
    widths: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)  # methods that train in rounds

    @property
    def flops_ratio(self) -> float:
        return self.flops_after / self.flops_before

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "target": self.target, "scope": self.scope, "steps": self.steps,
                "flops_before": self.flops_before, "flops_after": self.flops_after,
                "flops_ratio": self.flops_ratio, "params_before": self.params_before,
                "params_after": self.params_after, "params_ratio": self.params_ratio,
                "widths": self.widths, "notes": self.notes,
                **({"rounds": self.rounds} if self.rounds else {})}


def prune(model: nn.Module, example_input, method: str | Criterion = "l1", flops_ratio: float | None = None,
          params_ratio: float | None = None, data: Iterable | None = None, *,
          latency_ms: float | None = None, latency_threads: int = 1, scope: str = "global",
          max_fraction: float = 0.9, round_to: int = 1, ignored: Sequence = (), steps: int = 1,
          finetune: Callable[[nn.Module, int], None] | None = None, normalize: str | None = None,
          optimizer: torch.optim.Optimizer | None = None, inplace: bool = False,
          stop_when: Callable[[nn.Module], bool] | None = None,
          **criterion_options) -> nn.Module:
    """Return a physically smaller copy of ``model`` that meets the target.

    Args:
        model: any network the dependency graph can trace (the original is
            left untouched unless ``inplace``).
        example_input: a tensor of the shape the model will see (batch 1 is fine).
        method: a criterion name (``medslim.pruning.criteria.CRITERIA``), a
            :class:`~medslim.pruning.criteria.Criterion` object (your own
            scores: subclass it and implement ``_scores``), or ``"uniform"``:
            every layer keeps the same fraction and the weights are
            re-initialised, the uniform-width baseline trained from scratch.
        flops_ratio / params_ratio: the fraction of FLOPs / parameters to keep.
        latency_ms: instead, a measured PyTorch latency at the example's batch
            with ``latency_threads`` threads: the FLOPs ratio is found by
            bisection, each candidate pruned and timed.
        data: batches for data-driven criteria (Taylor, HRank).
        scope: ``"global"`` ranks channels across all layers; ``"local"``
            removes the same fraction from every layer.
        max_fraction: the most any one layer may lose.
        round_to: widths are kept multiples of this (8 suits CPU kernels).
        ignored: modules (paths or objects) never pruned.
        steps: iterative pruning in this many steps with geometric targets;
            ``finetune(model, step)`` runs after each step.
        normalize: per-group score normalisation before global ranking
            (``mean``, ``max``, ``l2``, ``none``; default: the criterion's
            ``rank_normalize``).
        optimizer: sliced alongside the model (for pruning inside training);
            only with ``inplace=True``.
        stop_when: checked after each step (and its fine-tuning); when it
            returns True, that step is undone and pruning stops there, e.g.
            "the validation Dice fell more than 1 point". Not with ``inplace``.

    Example::

        >>> small = prune(net, torch.zeros(1, 3, 128, 128), method="l1", flops_ratio=0.25)
    """
    from medslim.cost import count_flops, count_params
    from medslim.cost.counting import as_inputs, require_module

    require_module(model, "prune")
    as_inputs(example_input)
    if latency_ms is not None:
        return _prune_to_latency(model, example_input, method, data, latency_ms, latency_threads,
                                 scope=scope, max_fraction=max_fraction, round_to=round_to,
                                 ignored=ignored, steps=steps, finetune=finetune, normalize=normalize,
                                 **criterion_options)
    target = check_target(flops_ratio, params_ratio)
    check_options(scope, max_fraction, steps, normalize, optimizer, inplace)
    if stop_when is not None and inplace:
        raise ConfigError("stop_when undoes a step on a copy: it cannot be used with inplace=True")
    uniform = method == "uniform"
    criterion = None if uniform else _criterion_for(method, data, criterion_options)
    model = model if inplace else copy.deepcopy(model)
    was_training = model.training
    flops0, params0 = None, count_params(model)
    notes: list[str] = []
    scope = "local" if uniform else scope
    steps_done, flops_now = 0, None
    original: dict[str, int] = {}  # widths before step 1: max_fraction holds across steps
    for step in range(1, steps + 1):
        before = copy.deepcopy(model) if stop_when is not None else None
        fraction = step / steps
        step_target = {k: v ** fraction for k, v in target.items()}
        graph = DependencyGraph(model, example_input, ignored=ignored, round_to=round_to)
        notes += [n for n in graph.notes if n not in notes]
        original = original or {g.key: g.size for g in graph.groups}
        scores = _uniform_scores(graph) if uniform else criterion.scores(model, graph, data)
        scores = _normalized(scores, normalize or (criterion.rank_normalize if criterion else "none"),
                             scope)
        cost = CostModel(model, graph, example_input)
        flops0 = flops0 if flops0 is not None else cost.measured  # the same count, one forward less
        keep = select(graph, scores, cost, step_target, flops0, params0, scope, max_fraction, original)
        prune_channels(model, graph, keep, optimizer=optimizer)
        flops_now = _correct(model, example_input, step_target, flops0, params0, ignored, round_to,
                             scope, max_fraction, optimizer, notes, original)
        if uniform:  # before fine-tuning: that training is then the from-scratch one
            reinitialize(model)
        if finetune is not None:
            finetune(model, step)
        if before is not None and stop_when(model):
            notes.append(f"stopped after step {step - 1} of {steps}: step {step} went past the "
                         f"tolerance and was undone")
            model, flops_now = before, (count_flops(before, example_input) if step > 1 else flops0)
            break
        steps_done = step
    model.train(was_training)
    report = PruneReport(_method_name(method), target, flops0, flops_now, params0, count_params(model),
                         steps_done, scope, layer_widths(model), notes)
    model.medslim_pruning = report
    return model


def _prune_to_latency(model, example_input, method, data, latency_ms, threads, **kwargs) -> nn.Module:
    """The largest FLOPs ratio whose pruned model runs within ``latency_ms`` (bisection, 6 rounds).

    Latency is noisy, so each candidate is timed with 15 repeats and judged by
    its median; the report records the measured latency of the model chosen.
    """
    from medslim.cost import latency_torch

    if not isinstance(latency_ms, (int, float)) or latency_ms <= 0:
        raise ConfigError(f"latency_ms must be a positive number, got {latency_ms!r}")

    def timed(net):
        return latency_torch(net, example_input, threads=threads, repeats=15)["median_ms"]

    if timed(model) <= latency_ms:
        best, best_ms = prune(model, example_input, method, flops_ratio=1.0, data=data, **kwargs), None
    else:
        lo, hi, best, best_ms = 0.0, 1.0, None, None
        for _ in range(6):
            mid = (lo + hi) / 2
            try:
                candidate = prune(model, example_input, method, flops_ratio=mid, data=data, **kwargs)
            except PruningError:
                lo = mid  # below what the protected layers allow
                continue
            ms = timed(candidate)
            if ms <= latency_ms:
                best, best_ms, lo = candidate, ms, mid
            else:
                hi = mid
        if best is None:
            raise PruningError(f"latency_ms={latency_ms:g} cannot be reached: the smallest model "
                               f"tried (flops_ratio={hi:.3f}) still takes longer")
    best.medslim_pruning.target = {"latency_ms": float(latency_ms), "threads": threads}
    best.medslim_pruning.notes.append(f"measured latency {best_ms if best_ms is not None else timed(best):.2f} ms "
                                      f"({threads} thread(s), median of 15)")
    return best


# ----------------------------------------------------------------------------- cost model


class CostModel:
    """FLOPs and parameters of a model as a function of how many channels each group drops.

    FLOPs of a conv/linear layer scale with (kept inputs / inputs) x (kept
    outputs / outputs), a depthwise conv's with its kept channels; parameters
    of every tensor scale with the kept fraction along each channel axis.
    Cost outside conv/linear layers (matmuls in attention) stays constant.
    Layers are keyed by object, not name: a module registered under two names
    (DynUNet's skip layers) is one layer.
    """

    def __init__(self, model: nn.Module, graph: DependencyGraph, example_input):
        named = dict(model.named_modules(remove_duplicate=False))
        self.flops, self.const_flops = _module_flops(model, example_input, named)
        self.measured = int(sum(self.flops.values()) + self.const_flops)  # the counter's total
        self.params = {id(m): _param_sizes(m) for m in model.modules() if _param_sizes(m)}
        self.width: dict[tuple[int, str], int] = {}
        self.touch: dict[int, list[tuple[int, str, int]]] = {}  # group -> (layer, axis, channels per unit)
        self.depthwise: set[int] = set()
        for g in graph.groups:
            entries = [(id(named[p.module]), "out", 1) for p in g.producers]
            entries += [(id(named[c.module]), "in", c.factor) for c in g.consumers]
            entries += [(id(named[n.module]), "norm", 1) for n in g.norms]
            self.touch[g.id] = entries
            self.depthwise |= {id(named[p.module]) for p in g.producers if p.depthwise}
            for p in (*g.producers, *g.consumers, *g.norms):
                module = named[p.module]
                for key, axis in ((id(module), a) for a in ("out", "in", "norm")):
                    self.width.setdefault((key, axis), _axis_width(module, axis))
        self.dropped: dict[tuple[int, str], int] = {k: 0 for k in self.width}

    def drop(self, gid: int, n: int) -> None:
        for key, axis, factor in self.touch.get(gid, []):
            self.dropped[(key, axis)] += n * factor

    def kept(self, key: int, axis: str) -> float:
        width = self.width.get((key, axis))
        if not width:
            return 1.0
        return (width - self.dropped[(key, axis)]) / width

    def total_flops(self) -> float:
        total = float(self.const_flops)
        for key, flops in self.flops.items():
            if key in self.depthwise:
                total += flops * self.kept(key, "out")
            else:
                total += flops * self.kept(key, "in") * self.kept(key, "out")
        return total

    def total_params(self) -> float:
        total = 0.0
        for key, sizes in self.params.items():
            for role, numel in sizes:
                if role == "weight" and key not in self.depthwise:
                    total += numel * self.kept(key, "in") * self.kept(key, "out")
                elif role in ("weight", "bias"):
                    total += numel * self.kept(key, "out")
                else:  # norm / PReLU tensors
                    total += numel * self.kept(key, "norm")
        return total


def _module_flops(model: nn.Module, example_input, named: dict[str, nn.Module]) -> tuple[dict[int, int], int]:
    """FLOPs of each conv/linear layer (by object) from PyTorch's flop counter, and the rest."""
    from medslim.cost.counting import flop_counts

    counts = flop_counts(model, example_input)
    root = type(model).__name__
    layers: dict[int, int] = {}
    for name, module in named.items():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            # the counter names a layer by one of its aliases: take whichever holds the count
            layers[id(module)] = max(layers.get(id(module), 0), counts.get(f"{root}.{name}", 0))
    return layers, max(0, counts.get("Global", 0) - sum(layers.values()))


def _param_sizes(module: nn.Module) -> list[tuple[str, int]]:
    sizes = []
    is_layer = isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))
    for name, p in module.named_parameters(recurse=False):
        role = name if is_layer and name in ("weight", "bias") else "norm"
        sizes.append((role, p.numel()))
    return sizes


def _axis_width(module: nn.Module, axis: str) -> int:
    if axis == "out":
        return getattr(module, "out_channels", getattr(module, "out_features", 0))
    if axis == "in":
        return getattr(module, "in_channels", getattr(module, "in_features", 0))
    for attr in ("num_features", "num_channels", "num_parameters"):
        if hasattr(module, attr):
            return getattr(module, attr)
    return 0


# ----------------------------------------------------------------------------- selection


def select(graph: DependencyGraph, scores: dict[int, torch.Tensor], cost: CostModel,
           target: dict[str, float], flops0: int, params0: int, scope: str,
           max_fraction: float, original: dict[str, int] | None = None) -> dict[int, torch.Tensor]:
    """Channels to keep per group so the cost model meets ``target``.

    ``original`` maps group keys to their widths before any pruning step, so
    that ``max_fraction`` bounds the total loss of an iterative schedule.
    """
    groups = {g.id: g for g in graph.prunable_groups() if g.id in scores}
    limits = {gid: _max_drop(g, max_fraction, (original or {}).get(g.key, g.size))
              for gid, g in groups.items()}
    _check_reachable(cost, limits, target, flops0, params0)
    order = {gid: torch.argsort(scores[gid], stable=True) for gid in groups}
    if scope == "local":
        dropped = _local_counts(groups, limits, cost, target, flops0, params0)
    else:
        dropped = _global_counts(groups, limits, order, scores, cost, target, flops0, params0)
    keep = {}
    for gid, n in dropped.items():
        if n:
            keep[gid] = torch.sort(order[gid][n:]).values
    return keep


def _met(cost: CostModel, target: dict[str, float], flops0: int, params0: int) -> bool:
    ok = True
    if "flops" in target:
        ok &= cost.total_flops() <= target["flops"] * flops0 * (1 + 1e-9)
    if "params" in target:
        ok &= cost.total_params() <= target["params"] * params0 * (1 + 1e-9)
    return ok


def _max_drop(group: ChannelGroup, max_fraction: float, original: int | None = None) -> int:
    """The most channels a group may lose: the kept width stays a multiple of its divisor."""
    d = group.divisor
    min_keep = max(d, math.ceil((original or group.size) * (1 - max_fraction) / d) * d)
    return max(0, group.size - min_keep)


def _allowed_drop(group: ChannelGroup, wanted: int) -> int:
    """The largest drop count <= ``wanted`` that leaves a width divisible by the divisor."""
    d, first = group.divisor, group.size % group.divisor
    if wanted < (first or d):
        return 0
    return first + (wanted - first) // d * d


def _check_reachable(cost, limits, target, flops0, params0) -> None:
    for gid, n in limits.items():
        cost.drop(gid, n)
    reachable = {"flops": cost.total_flops() / flops0, "params": cost.total_params() / params0}
    for gid, n in limits.items():
        cost.drop(gid, -n)
    for key, wanted in target.items():
        if reachable[key] > wanted:
            raise PruningError(f"{key}_ratio={wanted:g} cannot be reached: with the protected layers "
                               f"(outputs, inputs, ignored) and the per-layer limit, the smallest "
                               f"reachable {key}_ratio is {reachable[key]:.3f}")


def _global_counts(groups, limits, order, scores, cost, target, flops0, params0) -> dict[int, int]:
    """Drop the globally least important unit (``divisor`` channels) until the target is met."""
    dropped = {gid: 0 for gid in groups}
    heap = []

    def push(gid):
        g, n = groups[gid], dropped[gid]
        unit = (g.size % g.divisor or g.divisor) if n == 0 else g.divisor
        if n + unit <= limits[gid]:
            heapq.heappush(heap, (scores[gid][order[gid][n:n + unit]].mean().item(), gid, unit))

    for gid in groups:
        push(gid)
    while heap and not _met(cost, target, flops0, params0):
        _, gid, unit = heapq.heappop(heap)
        dropped[gid] += unit
        cost.drop(gid, unit)
        push(gid)
    return dropped


def _local_counts(groups, limits, cost, target, flops0, params0) -> dict[int, int]:
    """The smallest common fraction dropped from every group that meets the target (bisection)."""

    def counts(f):
        return {gid: _allowed_drop(g, min(limits[gid], int(f * g.size))) for gid, g in groups.items()}

    def meets(f):
        c = counts(f)
        for gid, n in c.items():
            cost.drop(gid, n)
        ok = _met(cost, target, flops0, params0)
        for gid, n in c.items():
            cost.drop(gid, -n)
        return ok

    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if meets(mid) else (mid, hi)
    result = counts(hi)
    for gid, n in result.items():
        cost.drop(gid, n)
    return result


def _correct(model, example_input, target, flops0, params0, ignored, round_to, scope,
             max_fraction, optimizer, notes: list[str], original: dict[str, int] | None = None) -> int:
    """If the measured cost misses the target (cost outside conv layers), prune a little more.

    Returns the FLOPs measured last, so callers need not count again.

    The extra channels are chosen by L1 norm: the main criterion already made
    the big choice, and this pass only trims what the cost model missed.
    """
    from medslim.cost import count_flops, count_params
    from medslim.pruning.criteria import get_criterion

    for _ in range(3):
        now = {"flops": count_flops(model, example_input), "params": count_params(model)}
        base = {"flops": flops0, "params": params0}
        if all(now[k] <= target[k] * base[k] * 1.001 for k in target):
            return now["flops"]
        graph = DependencyGraph(model, example_input, ignored=ignored, round_to=round_to)
        scores = _normalized(get_criterion("l1").scores(model, graph, None), "mean", scope)
        sub_target = {k: min(1.0, target[k] * base[k] / now[k]) for k in target}
        try:
            keep = select(graph, scores, CostModel(model, graph, example_input), sub_target,
                          now["flops"], now["params"], scope, max_fraction, original)
        except PruningError as err:
            notes.append(f"the measured cost is above the target and cannot be trimmed further: {err}")
            return now["flops"]
        prune_channels(model, graph, keep, optimizer=optimizer)
    return count_flops(model, example_input)


# ----------------------------------------------------------------------------- helpers


def _uniform_scores(graph: DependencyGraph) -> dict[int, torch.Tensor]:
    # which channels go does not matter: the uniform baseline is re-initialised
    return {g.id: -torch.arange(g.size, dtype=torch.float32) for g in graph.prunable_groups()}


def _normalized(scores: dict[int, torch.Tensor], how: str, scope: str) -> dict[int, torch.Tensor]:
    if scope == "local" or how == "none":
        return scores
    out = {}
    for gid, s in scores.items():
        s = s.float()
        denom = {"mean": s.abs().mean(), "max": s.abs().max(), "l2": s.norm()}[how]
        out[gid] = s / (denom + 1e-12)
    return out


def reinitialize(model: nn.Module) -> None:
    """Fresh weights for every layer: the pruned widths trained from scratch."""
    for module in model.modules():
        if hasattr(module, "reset_parameters") and module is not model:
            module.reset_parameters()


def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """[in, out] channels (or features) of every conv and linear layer, by module path."""
    return {name: [m.in_channels, m.out_channels] if hasattr(m, "in_channels")
            else [m.in_features, m.out_features]
            for name, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}


def _criterion_for(method, data, options: dict):
    """The scoring criterion ``method`` names (or is), refused here if it cannot run as called."""
    from medslim.pruning.criteria import Criterion

    if isinstance(method, Criterion):
        if options:
            raise ConfigError(f"options {sorted(options)} go to the criterion's constructor when "
                              f"method is a Criterion object, not to prune()")
        criterion = method
    else:
        criterion = _named_criterion(method, options)
    if criterion.needs_data and data is None:
        raise ConfigError(f"pruning method {_method_name(method)!r} needs data: pass data=<batches>")
    return criterion


def _named_criterion(method, options: dict):
    from medslim.pruning.criteria import CRITERIA, get_criterion

    if not isinstance(method, str):
        raise ConfigError(f"method must be a criterion name or a Criterion object, got {method!r:.60}")
    if method == "channel_scaling":
        raise ConfigError("channel_scaling trains while it prunes: call medslim.pruning.channel_scaling"
                          "(model, example_input, train=...) or `medslim prune RUN --method channel_scaling`")
    if method not in CRITERIA:
        raise unknown_name("pruning method", method, [*CRITERIA, "uniform", "channel_scaling"])
    return get_criterion(method, **options)


def _method_name(method) -> str:
    """What the report records: the name, or a Criterion object's ``name`` (else its class)."""
    return method if isinstance(method, str) else (getattr(method, "name", "") or type(method).__name__)


def check_target(flops_ratio, params_ratio) -> dict[str, float]:
    """{"flops": r, "params": r} from the ratios given; a ConfigError unless each is in (0, 1]."""
    target = {}
    for key, value in (("flops", flops_ratio), ("params", params_ratio)):
        if value is None:
            continue
        if not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ConfigError(f"{key}_ratio must be in (0, 1], got {value!r}")
        target[key] = float(value)
    if not target:
        raise ConfigError("give a target: flops_ratio=... or params_ratio=...")
    return target


def check_options(scope, max_fraction, steps, normalize, optimizer=None, inplace=False) -> None:
    """A ConfigError naming the first of the pruner's settings that is out of its range."""
    if scope not in SCOPES:
        raise ConfigError(f"scope={scope!r} is not one of: {', '.join(SCOPES)}")
    if isinstance(max_fraction, bool) or not isinstance(max_fraction, (int, float)) or not 0 < max_fraction < 1:
        raise ConfigError(f"max_fraction must be in (0, 1), got {max_fraction!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    if normalize is not None and normalize not in NORMALIZERS:
        raise ConfigError(f"normalize={normalize!r} is not one of: {', '.join(NORMALIZERS)}")
    if optimizer is not None and not inplace:
        raise ConfigError("an optimizer can only be sliced when pruning in place (inplace=True)")
