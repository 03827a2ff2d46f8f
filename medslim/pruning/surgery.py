"""Remove channels for real, or mask them with the same effect.

:func:`prune_channels` slices every layer of a channel group in place, so the
network keeps its module classes but has genuinely smaller tensors, runs
forward and backward, and trains on (the optimizer's state is sliced too).
:func:`mask_channels` zeroes the same channels instead, for methods that
decide gradually (soft pruning) or to check a decision before committing.

Why masks sit at the consumers' inputs: a dropped channel only influences the
kept ones through the layers that read it (convs, Linear); norms and
activations act per channel. Zeroing it where it is read is therefore exactly
what removing it does, whereas zeroing the producer's weights is not (a batch
norm without affine still adds its running-mean shift, a bias survives, ...).
Group norm mixes channels, so neither a mask nor removal keeps its output;
its groups stay divisible instead.
"""

from __future__ import annotations

from typing import Mapping, Sequence, Union

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from medslim.models.reshape import PRUNED_ATTR, set_module_tensors
from medslim.pruning.graph import MASK_ATTR, ChannelGroup, DependencyGraph, PruningError

Indices = Union[torch.Tensor, Sequence[int]]
Cut = tuple[int, torch.Tensor]  # (dim, kept indices)


def prune_channels(model: nn.Module, graph: DependencyGraph, keep: Mapping[int, Indices],
                   optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
    """Keep only channels ``keep[group_id]`` of each listed group, physically, in place.

    Indices must be sorted, unique and within the group; the kept width must
    be a multiple of the group's ``divisor`` (or the full width). With an
    ``optimizer``, its per-parameter state is sliced alongside and its
    parameter lists point at the new parameters. The graph is stale afterwards
    (``graph.rebuild()``). Returns ``model``.
    """
    _check_graph(model, graph)
    masks = _axis_masks(model, graph, _validated(graph, keep))
    replaced: list[tuple[nn.Parameter, nn.Parameter, list[Cut]]] = []
    widths: dict[str, int] = {}
    for (path, module), axes in _by_module(model, masks).items():
        replaced += _slice_module(path, module, axes, widths)
    if optimizer is not None:
        _update_optimizer(optimizer, replaced)
    record = getattr(model, PRUNED_ATTR, None) or {"widths": {}}
    record["widths"].update(widths)
    setattr(model, PRUNED_ATTR, record)
    graph.stale = True
    return model


class MaskHandle:
    """Undo for :func:`mask_channels`: ``remove()`` takes every mask off."""

    def __init__(self, model: nn.Module, hooks: list):
        self.model = model
        self.hooks = hooks
        self.active = True

    def remove(self) -> None:
        if not self.active:
            return
        for hook in self.hooks:
            hook.remove()
        self.hooks, self.active = [], False
        setattr(self.model, MASK_ATTR, max(0, getattr(self.model, MASK_ATTR, 1) - 1))

    def __enter__(self) -> "MaskHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def mask_channels(model: nn.Module, graph: DependencyGraph,
                  drop: Mapping[int, Indices]) -> MaskHandle:
    """Zero channels ``drop[group_id]`` wherever they are read; same output as pruning them.

    The same rules as :func:`prune_channels` apply to what stays. Forward
    pre-hooks multiply each consumer's input by a 0/1 mask, so gradients of
    the dropped channels are zero too.
    """
    _check_graph(model, graph)
    keep = {gid: _complement(graph.group(gid), idx) for gid, idx in drop.items()}
    masks = _axis_masks(model, graph, _validated(graph, keep))
    hooks = []
    for (path, axis), mask in masks.items():
        if axis == "in":
            module = model.get_submodule(path)
            hooks.append(module.register_forward_pre_hook(_zeroing_hook(mask)))
    setattr(model, MASK_ATTR, getattr(model, MASK_ATTR, 0) + 1)
    return MaskHandle(model, hooks)


# ----------------------------------------------------------------------------- validation


def _check_graph(model: nn.Module, graph: DependencyGraph) -> None:
    if graph.model is not model:
        raise PruningError("the dependency graph was built for another model")
    if graph.stale:
        raise PruningError("the dependency graph is stale (the model was pruned since it was "
                           "traced): call graph.rebuild() first")


def _validated(graph: DependencyGraph, keep: Mapping[int, Indices]) -> dict[int, torch.Tensor]:
    """Kept indices per group that actually shrinks, after checking every rule."""
    out = {}
    for gid, value in keep.items():
        group = graph.group(gid)
        idx = _as_index(group, value)
        if len(idx) == group.size:
            continue
        if not group.prunable:
            raise PruningError(f"{group.describe()} is not prunable: {group.reason}")
        k, d = len(idx), group.divisor
        if k < d or k % d:
            raise PruningError(f"{group.describe()}: keeping {k} channels breaks its divisor "
                               f"{d} (group norm groups / round_to); keep a multiple of {d}")
        out[group.id] = idx
    return out


def _tensor(value: Indices) -> torch.Tensor:
    idx = torch.as_tensor(value)
    return idx.long() if idx.numel() == 0 and not torch.is_tensor(value) else idx


def _as_index(group: ChannelGroup, value: Indices) -> torch.Tensor:
    idx = _tensor(value)
    if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.dim() != 1:
        raise PruningError(f"{group.describe()}: kept channels must be a 1-D list of "
                           f"integer indices, got {tuple(idx.shape)} {idx.dtype}")
    idx = idx.long().cpu()
    if len(idx) == 0:
        raise PruningError(f"{group.describe()}: cannot remove every channel")
    if int(idx.min()) < 0 or int(idx.max()) >= group.size:
        raise PruningError(f"{group.describe()}: indices must be in 0..{group.size - 1}, "
                           f"got {int(idx.min())}..{int(idx.max())}")
    if len(idx) > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise PruningError(f"{group.describe()}: indices must be sorted and unique")
    return idx


def _complement(group: ChannelGroup, drop: Indices) -> torch.Tensor:
    idx = _tensor(drop)
    if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.dim() != 1:
        raise PruningError(f"{group.describe()}: dropped channels must be a 1-D list of "
                           f"integer indices")
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= group.size):
        raise PruningError(f"{group.describe()}: indices must be in 0..{group.size - 1}")
    kept = torch.ones(group.size, dtype=torch.bool)
    kept[idx.long()] = False
    return kept.nonzero().flatten()


# ----------------------------------------------------------------------------- masks per layer


def _axis_masks(model: nn.Module, graph: DependencyGraph,
                keep: dict[int, torch.Tensor]) -> dict[tuple[str, str], torch.Tensor]:
    """For each (module, axis) touched: a bool mask over that axis, True = kept."""
    masks: dict[tuple[str, str], torch.Tensor] = {}
    for gid, idx in keep.items():
        group = graph.group(gid)
        kept = torch.zeros(group.size, dtype=torch.bool)
        kept[idx] = True
        for path, axis, offset, factor in _members(group):
            key = (path, axis)
            if key not in masks:
                masks[key] = torch.ones(_axis_width(model.get_submodule(path), axis),
                                        dtype=torch.bool)
            span = kept.repeat_interleave(factor)
            masks[key][offset:offset + len(span)] &= span
    return masks


def _members(group: ChannelGroup):
    for p in group.producers:
        yield p.module, ("chan" if p.depthwise else "out"), p.offset, 1
    for n in group.norms:
        yield n.module, "chan", n.offset, 1
    for c in group.consumers:
        yield c.module, "in", c.offset, c.factor


def _axis_width(module: nn.Module, axis: str) -> int:
    if isinstance(module, _ConvNd):
        return module.in_channels if axis == "in" else module.out_channels
    if isinstance(module, nn.Linear):
        return module.in_features if axis == "in" else module.out_features
    for attr in ("num_features", "num_channels", "num_parameters"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    raise PruningError(f"cannot tell the width of {type(module).__name__}")


def _tensor_dims(module: nn.Module, axis: str) -> list[tuple[str, int]]:
    """Which of the module's tensors hold ``axis``, and on which dim."""
    if isinstance(module, _ConvNd):
        if axis == "chan":  # depthwise: (C, 1, k...) either way
            dims = [("weight", 0), ("bias", 0)]
        elif axis == "out":
            dims = [("weight", 1 if module.transposed else 0), ("bias", 0)]
        else:
            dims = [("weight", 0 if module.transposed else 1)]
    elif isinstance(module, nn.Linear):
        dims = [("weight", 0), ("bias", 0)] if axis == "out" else [("weight", 1)]
    else:  # norms, PReLU: every 1-D tensor is per channel
        tensors = {**module._parameters, **module._buffers}
        dims = [(n, 0) for n, t in tensors.items() if t is not None and t.dim() == 1]
    present = {**module._parameters, **module._buffers}
    return [(n, d) for n, d in dims if present.get(n) is not None]


def _by_module(model: nn.Module,
               masks: dict) -> dict[tuple[str, nn.Module], dict[str, torch.Tensor]]:
    out: dict = {}
    for (path, axis), mask in masks.items():
        out.setdefault((path, model.get_submodule(path)), {})[axis] = mask
    return out


# ----------------------------------------------------------------------------- slicing


def _slice_module(path: str, module: nn.Module, axes: dict[str, torch.Tensor],
                  widths: dict[str, int]) -> list[tuple[nn.Parameter, nn.Parameter, list[Cut]]]:
    """Slice one module on every axis at once; returns (old, new, cuts) per parameter."""
    cuts: dict[str, list[Cut]] = {}
    for axis, mask in axes.items():
        index = mask.nonzero().flatten()
        for name, dim in _tensor_dims(module, axis):
            cuts.setdefault(name, []).append((dim, index))
    old = {n: p for n, p in module._parameters.items() if p is not None}
    with torch.no_grad():
        tensors = {n: _apply(getattr(module, n).detach(), c) for n, c in cuts.items()}
    width = None
    if not cuts and "chan" in axes:  # a norm without tensors: only its width changes
        width = int(axes["chan"].sum())
        widths[path] = width
    set_module_tensors(module, tensors, path=path, width=width)
    replaced = []
    for name, param in old.items():
        if name in cuts:
            new = module._parameters[name]
            if param.grad is not None:
                new.grad = _apply(param.grad, cuts[name])
            replaced.append((param, new, cuts[name]))
    return replaced


def _apply(tensor: torch.Tensor, cuts: list[Cut]) -> torch.Tensor:
    for dim, index in cuts:
        tensor = tensor.index_select(dim, index.to(tensor.device))
    return tensor.contiguous()


def _update_optimizer(optimizer: torch.optim.Optimizer,
                      replaced: list[tuple[nn.Parameter, nn.Parameter, list[Cut]]]) -> None:
    """Slice state shaped like the parameter (Adam moments, SGD momentum); swap the params."""
    for old, new, cuts in replaced:
        state = optimizer.state.pop(old, None)
        if state is not None:
            optimizer.state[new] = {
                k: _apply(v, cuts) if torch.is_tensor(v) and v.shape == old.shape else v
                for k, v in state.items()}
        for group in optimizer.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]


def _zeroing_hook(mask: torch.Tensor):
    """A pre-hook multiplying input channels (dim 1) by ``mask``."""
    def hook(module: nn.Module, args: tuple):
        x = args[0]
        shape = [1, len(mask)] + [1] * (x.dim() - 2)
        return (x * mask.to(device=x.device, dtype=x.dtype).view(shape),) + tuple(args[1:])
    return hook
