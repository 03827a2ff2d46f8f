"""What every pruning criterion shares: the interface, weight slices, site hooks, data.

A criterion scores every channel of every prunable :class:`ChannelGroup` of a
:class:`DependencyGraph` (higher = keep). It never re-derives which layers are
coupled: the weights it reads are the group's ``producers`` and ``norms``, the
feature maps it observes are the group's ``sites``, all found by the graph.

Groups with several producers (a residual ``+`` merges the outputs of two
convs; a depthwise conv passes its input group on) get the **sum** of the
per-producer scores: every producer's filter is removed with the channel, so
the channel is worth what its filters are worth together, and a sum keeps the
score of a single-producer group unchanged.

Data-driven criteria observe one site per group: the first post-activation
output if the graph found one (what HRank and Taylor look at), else the first
site. They run the model in **eval mode** with gradients on: BN then uses its
running statistics, so a channel's score does not depend on which samples share
its batch, and scoring does not move the running statistics (a train-mode
forward would). Hooks are removed and parameter gradients are restored to what
they were before, whatever happens.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from torch import nn

from medslim.errors import ConfigError
from medslim.pruning.graph import ChannelGroup, DependencyGraph, PruningError, Site, hook_sites

Scores = dict[int, torch.Tensor]
LossFn = Callable[[Any, torch.Tensor], torch.Tensor]
NORMALIZE = ("none", "l2", "mean")


class Criterion:
    """Channel importance for every prunable group; higher = keep.

    Subclasses implement :meth:`_scores`; :meth:`scores` checks the inputs and
    applies the per-group ``normalize`` option (``none``; ``l2``: divide by the
    group's L2 norm; ``mean``: divide by the group's mean), which matters only
    when groups are ranked against each other.
    """

    name: str = ""
    needs_data: bool = False
    # Rescaling before a global ranking when the caller does not choose one.
    # Magnitude-like scores grow with a layer's fan-in, so by default each
    # group is divided by its mean (as Torch-Pruning does); criteria whose
    # papers rank raw scores across layers set "none".
    rank_normalize: str = "mean"

    def __init__(self, normalize: str = "none"):
        self.normalize = choice("normalize", normalize, NORMALIZE)
        self.notes: list[str] = []

    def scores(self, model: nn.Module, graph: DependencyGraph, data: Any = None) -> Scores:
        """Importance of every channel of every prunable group: {group.id: (group.size,)}."""
        if graph.stale:
            raise PruningError("the dependency graph is stale (the model was pruned since it "
                               "was traced): call graph.rebuild() first")
        if self.needs_data and data is None:
            raise ConfigError(f"pruning method {self.name!r} needs data: pass an iterable of "
                              f"batches (the training loader, or (image, label) tuples)")
        self.notes = []
        raw = self._scores(model, graph, data)
        out = {}
        for group in graph.prunable_groups():
            score = raw[group.id].detach().float().cpu()
            if score.shape != (group.size,):
                raise PruningError(f"{self.name}: got {tuple(score.shape)} scores for "
                                   f"{group.describe()}")
            out[group.id] = normalize(score, self.normalize)
        return out

    def _scores(self, model: nn.Module, graph: DependencyGraph, data: Any) -> Scores:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class DataCriterion(Criterion):
    """A criterion that looks at feature maps of ``batches`` batches of data."""

    needs_data = True

    def __init__(self, batches: int = 8, normalize: str = "none"):
        super().__init__(normalize)
        if not isinstance(batches, int) or isinstance(batches, bool) or batches < 1:
            raise ConfigError(f"option batches must be a positive int, got {batches!r}")
        self.batches = batches


# ----------------------------------------------------------------------------- small helpers


def choice(option: str, value: Any, allowed: Iterable[str]) -> str:
    """``value`` if it is one of ``allowed``, else a ConfigError naming the option."""
    if value not in allowed:
        raise ConfigError(f"option {option} must be one of: {', '.join(allowed)}; got {value!r}")
    return value


def normalize(score: torch.Tensor, how: str) -> torch.Tensor:
    """Per-group rescaling so that scores of different layers are comparable."""
    if how == "none":
        return score
    scale = score.norm() if how == "l2" else score.mean()
    return score / scale if float(scale) > 0 else score


def producer_filters(model: nn.Module, group: ChannelGroup) -> list[torch.Tensor]:
    """Each producer's filters of the group's channels, as (group.size, weights per filter).

    A conv's filter j is ``weight[j]``; a transposed conv keeps its outputs on
    dim 1 (``Producer.dim``), a depthwise conv on dim 0.
    """
    out = []
    for p in group.producers:
        weight = model.get_submodule(p.module).weight.detach()
        dim = 0 if p.depthwise else p.dim
        w = weight.movedim(dim, 0)[p.offset:p.offset + group.size]
        if w.shape[0] != group.size:
            raise PruningError(f"{p.module!r} has fewer channels than {group.describe()}: "
                               f"the graph was traced on another model")
        out.append(w.reshape(group.size, -1).float())
    if not out:
        raise PruningError(f"{group.describe()} has no producer to read filters from")
    return out


def per_producer_sum(model: nn.Module, group: ChannelGroup,
                     fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Sum over producers of ``fn(filters)`` (one value per channel); see the module doc."""
    return sum(fn(w) for w in producer_filters(model, group))


def affine_norms(model: nn.Module, group: ChannelGroup,
                 kinds: tuple[type, ...]) -> list[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """(γ, β) slices of the group's affine norms of the given types (PReLUs are skipped)."""
    out = []
    for n in group.norms:
        layer = model.get_submodule(n.module)
        if isinstance(layer, kinds) and getattr(layer, "weight", None) is not None:
            span = slice(n.offset, n.offset + group.size)
            bias = layer.bias.detach()[span].float() if layer.bias is not None else None
            out.append((layer.weight.detach()[span].float(), bias))
    return out


# ----------------------------------------------------------------------------- data


def iter_batches(data: Any, limit: int) -> Iterator[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """(image, label-or-None) from medslim batch dicts, (x, y) tuples or bare tensors.

    A single tensor or dict is taken as one batch (iterating a tensor would
    yield samples without their batch dim).
    """
    if torch.is_tensor(data) or isinstance(data, dict):
        data = [data]
    count = 0
    for item in itertools.islice(data, limit):
        if isinstance(item, dict):
            x, y = item["image"], item.get("label")
        elif isinstance(item, (tuple, list)):
            x, y = item[0], (item[1] if len(item) > 1 else None)
        else:
            x, y = item, None
        if not torch.is_tensor(x):
            raise ConfigError(f"a data batch must hold an image tensor, got {type(x).__name__}")
        count += 1
        yield x, y
    if not count:
        raise ConfigError("the data for pruning yielded no batch")


def default_loss(label: torch.Tensor) -> nn.Module:
    """medslim's training loss, task guessed from the label: (B, 1, *spatial) = segmentation."""
    from medslim.training.losses import make_loss

    return make_loss("segmentation" if label.dim() >= 3 else "classification")


def outputs_of(out: Any) -> list[torch.Tensor]:
    """Model outputs as a list (deep supervision returns several)."""
    return list(out) if isinstance(out, (list, tuple)) else [out]


# ----------------------------------------------------------------------------- sites


def observed_site(group: ChannelGroup) -> Site:
    """The group's first post-activation output, else its first site."""
    if not group.sites:
        raise PruningError(f"{group.describe()} has no module output to observe")
    return next((s for s in group.sites if s.activation), group.sites[0])


class SiteTaps:
    """Forward hooks keeping, per group, its slice of its site's output for one forward.

    ``acts[gid]`` is a detached copy (a later in-place op cannot change it);
    with ``grads=True`` a tensor hook stores ``grads[gid]``, the gradient of
    the loss with respect to that output (before any in-place change).
    """

    def __init__(self, model: nn.Module, groups: list[ChannelGroup], grads: bool = False):
        self.model, self.want_grads = model, grads
        self.members = [(g, observed_site(g)) for g in groups]
        self.handles: list = []
        self.acts: dict[int, torch.Tensor] = {}
        self.grads: dict[int, torch.Tensor] = {}

    def __enter__(self) -> "SiteTaps":
        self.handles = hook_sites(self.model, self.members, self._store)
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def reset(self) -> None:
        self.acts, self.grads = {}, {}

    def _store(self, group: ChannelGroup, site: Site, out: torch.Tensor, module: nn.Module) -> None:
        span = slice(site.offset, site.offset + group.size)
        self.acts[group.id] = out[:, span].detach().float().clone()
        if self.want_grads and out.requires_grad:
            out.register_hook(self._grad_hook(group.id, span))

    def _grad_hook(self, gid: int, span: slice):
        def store(grad: torch.Tensor) -> None:
            self.grads[gid] = grad[:, span].detach().float()
        return store

    def check(self, groups: list[ChannelGroup]) -> None:
        """Every group must have been seen (and reached by the gradient, if asked)."""
        for g in groups:
            seen = g.id in self.acts and (not self.want_grads or g.id in self.grads)
            if not seen:
                site = observed_site(g)
                raise PruningError(f"{g.describe()}: its site {site.module!r} (call "
                                   f"{site.call}) was not reached in the forward/backward")


@contextmanager
def scoring_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, parameter gradients set aside; both restored afterwards."""
    was_training = model.training
    saved = [(p, p.grad) for p in model.parameters()]
    for p, _ in saved:
        p.grad = None
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        for p, grad in saved:
            p.grad = grad


def model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def observe(model: nn.Module, graph: DependencyGraph, data: Any, batches: int,
            on_batch: Callable[[dict[int, torch.Tensor], dict[int, torch.Tensor]], None],
            out_grad: Optional[Callable[[list[torch.Tensor], Optional[torch.Tensor]],
                                        list[torch.Tensor]]] = None) -> int:
    """Call ``on_batch(acts, grads)`` per batch with {gid: site output slice} and {gid: its grad}.

    Without ``out_grad`` only the forward runs (no autograd). With it,
    ``out_grad(outputs, label)`` gives the gradient to back-propagate from
    each model output (dL/dy, normalised or random); parameter gradients made
    on the way are discarded. Returns the number of batches seen.
    """
    groups = graph.prunable_groups()
    device = model_device(model)
    seen = 0
    with scoring_mode(model), SiteTaps(model, groups, grads=out_grad is not None) as taps:
        for x, y in iter_batches(data, batches):
            taps.reset()
            x = x.to(device)
            y = y.to(device) if y is not None else None
            if out_grad is None:
                with torch.no_grad():
                    model(x)
            else:
                with torch.enable_grad():
                    outs = outputs_of(model(x.detach().requires_grad_(True)))
                    torch.autograd.backward(outs, out_grad(outs, y))
                for p in model.parameters():
                    p.grad = None
            taps.check(groups)
            on_batch(taps.acts, taps.grads)
            seen += 1
    return seen
