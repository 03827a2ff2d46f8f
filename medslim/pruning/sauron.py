"""Sauron: prune a network while it trains (Valverde, Shatillo, Tohka).

Two distances are measured on the feature maps of every prunable channel
group (its post-activation output, found by the dependency graph, so any
network the engine traces works, not only one hand-written U-Net):

- ``delta_opt`` (added to the loss, weight ``lam``): distance of every map to
  the group's channel 0, after min-max normalising each map and average
  pooling by ``pool``. Minimising it pulls maps into clusters.
- ``delta_prune`` (thresholded): distance of every raw, pooled map to a
  random reference channel, divided by the largest such distance in the
  sample, averaged over samples.

At the end of every epoch, the channels whose ``delta_prune`` is under their
group's threshold ``tau`` are removed through the engine (optimizer state
sliced alongside). ``tau`` starts at ``tau_init`` and rises one step on a
``linspace(tau_init, tau_max, tau_steps + 1)`` ladder when the training loss
is on a plateau and the group lost few channels in the last epoch; after a
rise the group waits ``patience`` epochs. Output classes and deep-supervision
heads are never pruned (the graph protects them).

Choices where the paper and its code leave room (see docs/pruning.md):

- ``delta_prune`` is averaged over **every training batch of the epoch**
  against one reference drawn per group at the start of the epoch (the
  reference code uses the single last forward pass, a noisy decision).
- min-max normalisation has an epsilon and spans all spatial axes (the code
  has none, and in 3D reduces only two axes); ``delta_opt`` takes
  ``sqrt(. + eps)`` so identical maps do not give an infinite gradient.
- the regulariser is the mean over the pruned groups (the code also counts
  the output heads, whose term is a constant, which only rescales ``lam``).
- the code's validation-loss condition can never be true as written and is
  left out; nothing is pruned after the last epoch, which would leave no
  training to recover.
- ``stop_after`` (not in the paper) ends pruning early: the epochs after it
  train the final network without the regulariser, a settling phase for
  short budgets where channels are still being removed at the end.
- ``min_width`` (not in the paper) is a floor under a group's width. The
  paper's rule can leave a layer with only its reference channel; with a
  high threshold ceiling the layer feeding the output head fell to 3 of 16
  in the 3D runs that lost a class. Floor a whole level, not one layer: the
  layer before a floored one can become the bottleneck (docs/pruning.md).
  A fraction (``0.25``) floors every group at that share of the width it
  had when pruning began, so one number suits both narrow and wide levels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from medslim.errors import ConfigError
from medslim.pruning.criteria.base import observed_site
from medslim.pruning.graph import ChannelGroup, DependencyGraph, Site, close_names, hook_sites
from medslim.pruning.surgery import prune_channels
from medslim.training.hooks import TrainingHook

EPS = 1e-8


def delta_opt(maps: torch.Tensor, pool: int = 2, eps: float = EPS) -> torch.Tensor:
    """Distance of every map to channel 0 after min-max normalisation: (B, C-1)."""
    flat = maps.flatten(2)
    low = flat.amin(2, keepdim=True)
    high = flat.amax(2, keepdim=True)
    normed = ((flat - low) / (high - low + eps)).view_as(maps)
    pooled = _avg_pool(normed, pool).flatten(2)
    diff = pooled[:, 1:] - pooled[:, :1]
    return torch.sqrt(diff.pow(2).mean(2) + eps)


def delta_prune(maps: torch.Tensor, ref: int, pool: int = 2) -> torch.Tensor:
    """Per-sample distance of every raw map to map ``ref``, over the largest: (B, C)."""
    pooled = _avg_pool(maps, pool).flatten(2)
    dist = (pooled - pooled[:, ref:ref + 1]).pow(2).mean(2).sqrt()
    return dist / (dist.amax(1, keepdim=True) + 1e-15)


def _avg_pool(maps: torch.Tensor, size: int) -> torch.Tensor:
    spatial = maps.dim() - 2
    if size <= 1 or spatial < 1 or min(maps.shape[2:]) < size:
        return maps
    return getattr(F, f"avg_pool{spatial}d")(maps, size)


@dataclass
class GroupState:
    """A group's threshold and history, kept across surgeries by its key."""

    tau: float
    patience: int = 0
    widths: list[int] = field(default_factory=list)


class Sauron(TrainingHook):
    """In-training pruning as a :class:`TrainingHook` for ``medslim.training.fit``.

    Args:
        example_input: a tensor of the training input shape (batch 1 is fine),
            used to trace the network's channel groups.
        lam: weight of ``delta_opt`` in the loss (paper: 0.5; 0 gives the
            paper's "Sauron lambda=0" ablation, which still prunes).
        tau_init / tau_max / tau_steps: the threshold ladder (paper: 0.001,
            0.3, 15 steps).
        patience: epochs a group waits after its threshold rose (paper: 5);
            also the plateau window of the training loss.
        min_drop: the threshold only rises when the group lost fewer than
            ``ceil(min_drop * width)`` channels in the last epoch (paper: 2 %).
        plateau: the threshold also waits for the training loss to stop
            improving (paper: yes). The paper trains 500-1000 epochs; for a
            budget of tens of epochs, ``plateau=False, patience=0`` lets a
            threshold climb one step in every epoch its group sheds little
            (docs/pruning.md).
        pool: average pooling before both distances (paper: 2).
        ignored, round_to: as for :class:`DependencyGraph`.
        seed: for the random reference channels.
        stop_after: the last epoch that removes channels (default: every
            epoch but the last); later epochs train without the regulariser.
        min_width: the fewest channels a group keeps (default 1, the paper's
            rule): a whole number of channels, or a fraction in (0, 1) of the
            group's width when pruning began (``0.25``: a quarter of every
            layer). One value for every group, or layer paths mapped to
            values, e.g. ``{"decoder.2.3": 8}``: a path covers the layers
            under it (``""`` the whole model) and a group takes the largest
            floor among its producer layers. Rounded up to the group's
            divisor; a group already at or under its floor is left whole.

    Example::

        >>> hook = Sauron(torch.zeros(1, 3, 128, 128), lam=0.5)
        >>> fit(model, data, cfg, workdir, hook=hook)   # model shrinks every epoch
    """

    keep_last = True

    def __init__(self, example_input: torch.Tensor, lam: float = 0.5, tau_init: float = 1e-3,
                 tau_max: float = 0.3, tau_steps: int = 15, patience: int = 5,
                 min_drop: float = 0.02, plateau: bool = True, pool: int = 2,
                 ignored: Sequence = (), round_to: int = 1, seed: int = 0,
                 stop_after: Optional[int] = None, min_width: Union[float, Mapping[str, float]] = 1):
        _check_options(lam, tau_init, tau_max, tau_steps, patience, min_drop, pool, stop_after)
        self.min_width = _check_min_width(min_width)
        self.stop_after = stop_after
        self.example_input = example_input
        self.lam, self.pool, self.seed = float(lam), int(pool), int(seed)
        self.ladder = torch.linspace(tau_init, tau_max, tau_steps + 1).tolist()
        self.patience, self.min_drop, self.plateau = int(patience), float(min_drop), bool(plateau)
        self.ignored, self.round_to = ignored, round_to
        self.groups: dict[str, GroupState] = {}
        self.losses: list[float] = []
        self.graph: Optional[DependencyGraph] = None
        self._handles: list = []
        self._terms: list[torch.Tensor] = []
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._refs: dict[str, int] = {}
        self._epoch = 0

    # ------------------------------------------------------------------ hook interface

    def begin(self, model: nn.Module) -> None:
        self.model = model
        self.graph = DependencyGraph(model, self.example_input, ignored=self.ignored,
                                     round_to=self.round_to)
        _check_floor_paths(model, self.min_width)
        for group in self._prunable():
            self.groups.setdefault(group.key, GroupState(tau=self.ladder[0]))
        self._new_epoch(self._epoch)
        if not self._settling(self._epoch):
            self._attach()

    def extra_loss(self) -> Optional[torch.Tensor]:
        terms, self._terms = self._terms, []
        if self.lam == 0 or not terms:
            return None
        return self.lam * torch.stack(terms).mean()

    def end_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                  train_loss: float, last: bool) -> dict[str, Any]:
        self.losses.append(float(train_loss))
        groups = self._prunable()
        for group in groups:
            state = self.groups[group.key]
            state.widths.append(group.size)
            self._update_tau(state)
        removed = 0 if last or self._settling(epoch - 1) else self._remove(model, optimizer, groups)
        self._epoch = epoch
        self._new_epoch(epoch)
        if self._settling(epoch):
            self.close()  # no more maps to measure: the regulariser and its cost end here
        return {"sauron": self._summary(model, removed)}

    def _settling(self, epoch: int) -> bool:
        """Whether epochs after ``epoch`` (1-based, 0 before training) only train."""
        return self.stop_after is not None and epoch >= self.stop_after

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._terms = []

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "losses": self.losses,
                "groups": {k: asdict(v) for k, v in self.groups.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self._epoch = int(state["epoch"])
        self.losses = [float(x) for x in state["losses"]]
        self.groups = {k: GroupState(**v) for k, v in state["groups"].items()}

    # ------------------------------------------------------------------ thresholds

    def _update_tau(self, state: GroupState) -> None:
        """The plateau rule of the reference code (``_end_epoch_prune``)."""
        if state.patience > 0:
            state.patience -= 1
        elif self._converged(state):
            state.patience = self.patience
            state.tau = next((t for t in self.ladder if t > state.tau + 1e-12), self.ladder[-1])

    def _converged(self, state: GroupState) -> bool:
        if len(state.widths) < 2:
            return False
        before, now = state.widths[-2], state.widths[-1]
        settled = (before - now) < math.ceil(self.min_drop * before)
        return settled and (not self.plateau or self._loss_on_plateau())

    def _loss_on_plateau(self) -> bool:
        """The last training loss is neither a new best nor worse than all of the window."""
        size = max(self.patience, 1)
        window = self.losses[-(size + 1):-1]
        if len(window) < size:
            return False
        return min(window) <= self.losses[-1] <= max(window)

    # ------------------------------------------------------------------ removal

    def _remove(self, model: nn.Module, optimizer, groups: list[ChannelGroup]) -> int:
        keep, removed = {}, 0
        for group in groups:
            key = group.key
            if group.size <= 1 or not self._counts.get(key):
                continue
            delta = self._sums[key] / self._counts[key]
            kept = self._kept(group, delta, self.groups[key].tau, self._refs[key],
                              self._floor(group, self.groups[key]))
            if kept.numel() < group.size:
                keep[group.id] = kept
                removed += group.size - kept.numel()
        if keep:
            self.close()
            prune_channels(model, self.graph, keep, optimizer=optimizer)
            self.graph.rebuild()
            self._attach()
        return removed

    def _floor(self, group: ChannelGroup, state: GroupState) -> int:
        """The largest ``min_width`` among the group's producer layers, in channels."""
        producers = {p.module for p in group.producers}
        # widths[0] is the width before the first removal (end_epoch records it first)
        start = state.widths[0] if state.widths else group.size
        hits = [n if isinstance(n, int) else math.ceil(n * start - 1e-9)
                for path, n in self.min_width.items()
                if path == "" or any(m == path or m.startswith(path + ".") for m in producers)]
        return max(hits, default=1)

    @staticmethod
    def _kept(group: ChannelGroup, delta: torch.Tensor, tau: float, ref: int,
              floor: int = 1) -> torch.Tensor:
        """Channels at or above ``tau`` (the reference always), at least ``floor`` of them;
        widths stay multiples of the divisor."""
        below = delta < tau
        below[ref] = False
        kept = max(group.size - int(below.sum()), floor)
        kept = max(math.ceil(kept / group.divisor) * group.divisor, group.divisor)
        drop = group.size - kept
        if drop <= 0:
            return torch.arange(group.size)
        order = torch.argsort(torch.where(below, delta, torch.full_like(delta, math.inf)))
        return torch.sort(order[drop:]).values

    # ------------------------------------------------------------------ feature-map taps

    def _prunable(self) -> list[ChannelGroup]:
        return [g for g in self.graph.prunable_groups() if g.sites]

    def _new_epoch(self, epoch: int) -> None:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        self._sums, self._counts = {}, {}
        self._refs = {g.key: int(torch.randint(g.size, (1,), generator=gen))
                      for g in self._prunable()}

    def _attach(self) -> None:
        members = [(group, observed_site(group)) for group in self._prunable()]
        self._handles += hook_sites(self.model, members, self._tap)

    def _tap(self, group: ChannelGroup, site: Site, out: torch.Tensor, module: nn.Module) -> None:
        if module.training and group.size > 1:  # validation forwards do not count
            self._measure(group, out[:, site.offset:site.offset + group.size])

    def _measure(self, group: ChannelGroup, maps: torch.Tensor) -> None:
        key = group.key
        if self.lam and maps.requires_grad:
            self._terms.append(delta_opt(maps.float(), self.pool).mean())
        with torch.no_grad():
            d = delta_prune(maps.detach().float(), self._refs[key], self.pool).sum(0)
        self._sums[key] = self._sums.get(key, 0) + d
        self._counts[key] = self._counts.get(key, 0) + maps.shape[0]

    def _summary(self, model: nn.Module, removed: int) -> dict[str, Any]:
        from medslim.cost import count_flops, count_params

        widths, taus = {}, {}
        for group in self._prunable():
            key = group.key
            widths[key], taus[key] = group.size, round(self.groups[key].tau, 5)
        with torch.no_grad():
            flops = count_flops(model, self.example_input)
        return {"removed": removed, "flops": flops, "params": count_params(model),
                "widths": widths, "tau": taus}


def _check_min_width(min_width) -> dict[str, float]:
    """``min_width`` as {layer path: floor}; one value is the floor of the whole model ("")."""
    def valid(n) -> bool:
        if isinstance(n, bool):
            return False
        return (isinstance(n, int) and n >= 1) or (isinstance(n, float) and 0 < n < 1)

    floors = {"": min_width} if not isinstance(min_width, Mapping) else dict(min_width)
    for path, n in floors.items():
        if not isinstance(path, str) or not valid(n):
            raise ConfigError(f"sauron option min_width={min_width!r}: give a whole number of channels "
                              ">= 1 or a fraction of the width between 0 and 1, or layer paths mapped "
                              "to such values")
    return floors


def _check_floor_paths(model: nn.Module, floors: dict[str, float]) -> None:
    for path in floors:
        try:
            model.get_submodule(path)
        except AttributeError:
            raise ConfigError(f"sauron option min_width names {path!r}, which is not a layer of the "
                              f"{type(model).__name__}{close_names(model, path)}") from None


def _check_options(lam, tau_init, tau_max, tau_steps, patience, min_drop, pool, stop_after) -> None:
    checks = [("lam", lam, lam >= 0), ("tau_init", tau_init, 0 <= tau_init < 1),
              ("tau_max", tau_max, tau_init <= tau_max <= 1),
              ("tau_steps", tau_steps, isinstance(tau_steps, int) and tau_steps >= 1),
              ("patience", patience, isinstance(patience, int) and patience >= 0),
              ("min_drop", min_drop, 0 <= min_drop <= 1),
              ("pool", pool, isinstance(pool, int) and pool >= 1),
              ("stop_after", stop_after, stop_after is None or (isinstance(stop_after, int) and stop_after >= 1))]
    for name, value, ok in checks:
        if not ok:
            raise ConfigError(f"sauron option {name}={value!r} is out of range")
