"""Change the channel widths of layers in place, from tensors or saved shapes.

A pruned network is saved as its original spec plus smaller weights. To load
it without pickle and without re-tracing, :func:`resize_to_state` rebuilds the
original network and shrinks every layer whose saved tensors are smaller; the
values then come from ``load_state_dict``. The pruning surgery uses the same
:func:`set_module_tensors`, so "a layer of this width" means the same thing in
both places: the tensors have the new shapes *and* the attributes that
``forward`` and ``repr`` read (``in_channels``, ``out_channels``, ``groups``
of a depthwise conv, ``num_features``, ``num_channels``, ``num_parameters``,
``in_features``, ``out_features``) agree with them.

Only layers whose width is defined by their tensors can be resized: conv and
transposed conv (1-3D, grouped and depthwise), Linear, batch/instance norm,
GroupNorm and PReLU. Anything else with a different shape is a different
network, and the error names the tensor.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from medslim.errors import ArtifactError

RESIZABLE = (_ConvNd, nn.Linear, _NormBase, nn.GroupNorm, nn.PReLU)
# Set on a model by the pruning surgery: {"widths": {path: width}} for layers
# without tensors, whose width the weights file cannot tell. ``save`` writes it
# into the manifest so ``load`` knows to resize.
PRUNED_ATTR = "_medslim_pruned"


def resize_to_state(model: nn.Module, state: Mapping[str, torch.Tensor],
                    widths: Mapping[str, int] | None = None) -> list[str]:
    """Resize the layers of ``model`` whose tensors in ``state`` have other shapes.

    ``widths`` gives the width of layers that hold no tensors at all (an
    instance norm without affine parameters or running stats), which the
    state cannot tell; the pruning surgery records them. Returns the paths of
    the resized modules. Raises :class:`ArtifactError` naming the first tensor
    that no width change explains (missing or extra names, another kernel
    size, a layer that cannot change width).
    """
    own = model.state_dict()
    _check_names(own, state)
    changed: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            path, _, name = key.rpartition(".")
            changed.setdefault(path, {})[name] = torch.empty(
                tuple(state[key].shape), dtype=value.dtype, device=value.device)
    for path in widths or {}:
        changed.setdefault(path, {})
    for path, tensors in changed.items():
        module = _submodule(model, path)
        set_module_tensors(module, tensors, path=path, width=(widths or {}).get(path))
    return sorted(changed)


def set_module_tensors(module: nn.Module, tensors: Mapping[str, torch.Tensor], *,
                       path: str = "", width: int | None = None) -> None:
    """Replace some of ``module``'s own parameters/buffers and update its width attributes.

    New parameters are new ``nn.Parameter`` objects with the old
    ``requires_grad``; buffers are replaced as they are. ``width`` sets the
    width of a norm layer that has no tensors. Shapes are checked against the
    layer type first, so a failed call leaves the module unchanged.
    """
    label = f"{path or '<root>'} ({type(module).__name__})"
    unknown = [n for n in tensors if n not in module._parameters and n not in module._buffers]
    if unknown:
        raise ArtifactError(f"module {label} has no tensor {unknown[0]!r}")
    shapes = {n: tuple(t.shape) for n, t in _own_tensors(module).items()}
    shapes.update({n: tuple(t.shape) for n, t in tensors.items()})
    if not isinstance(module, RESIZABLE):
        _require_unchanged(module, shapes, path, label)
        return
    attrs = _attributes(module, shapes, width, path, label)
    for name, tensor in tensors.items():
        if name in module._parameters:
            old = module._parameters[name]
            module._parameters[name] = nn.Parameter(tensor, requires_grad=old.requires_grad)
        else:
            module._buffers[name] = tensor
    for attr, value in attrs.items():
        setattr(module, attr, value)


def _check_names(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> None:
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing:
        raise ArtifactError(f"the weights lack tensor {missing[0]!r} of the model "
                            f"({len(missing)} missing): a different network")
    if extra:
        raise ArtifactError(f"the weights hold tensor {extra[0]!r} that the model does not have "
                            f"({len(extra)} extra): a different network")


def _submodule(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ArtifactError(f"the model has no module {path!r}") from None


def _own_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    found = {n: p for n, p in module._parameters.items() if p is not None}
    found.update({n: b for n, b in module._buffers.items() if b is not None})
    return found


def _require_unchanged(module: nn.Module, shapes: dict, path: str, label: str) -> None:
    for name, tensor in _own_tensors(module).items():
        if shapes[name] != tuple(tensor.shape):
            raise ArtifactError(
                f"tensor {_key(path, name)!r} has shape {shapes[name]} but the model's is "
                f"{tuple(tensor.shape)}, and {label} cannot change width: a different network")


def _key(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _attributes(module: nn.Module, shapes: dict, width: int | None, path: str, label: str) -> dict:
    """The width attributes implied by ``shapes``, after checking them against the layer type."""
    if isinstance(module, _ConvNd):
        return _conv_attributes(module, shapes, path, label)
    if isinstance(module, nn.Linear):
        out_f, in_f = shapes["weight"]
        _expect(shapes, "bias", (out_f,), path, label)
        return {"in_features": in_f, "out_features": out_f}
    n = _per_channel_width(module, shapes, width, path, label)
    if isinstance(module, nn.GroupNorm):
        if n % module.num_groups:
            raise ArtifactError(f"{label}: {n} channels are not divisible by its "
                                f"{module.num_groups} groups")
        return {"num_channels": n}
    if isinstance(module, nn.PReLU):
        return {"num_parameters": n}
    return {"num_features": n}


def _conv_attributes(module: _ConvNd, shapes: dict, path: str, label: str) -> dict:
    """Conv weights are (out, in/groups, k...); transposed ones (in, out/groups, k...)."""
    weight = shapes["weight"]
    old = tuple(module.weight.shape)
    if len(weight) != len(old) or weight[2:] != old[2:]:
        raise ArtifactError(f"tensor {_key(path, 'weight')!r} has shape {weight} but the model's "
                            f"is {old}: another kernel or dimension, a different network")
    depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
    if depthwise:
        if weight[1] != 1:
            raise ArtifactError(f"tensor {_key(path, 'weight')!r} has shape {weight}: "
                                f"{label} is depthwise and needs 1 channel per group")
        n = weight[0]
        attrs = {"in_channels": n, "out_channels": n, "groups": n}
    else:
        g = module.groups
        ins, outs = (weight[0], weight[1] * g) if module.transposed else (weight[1] * g, weight[0])
        if ins % g or outs % g:
            raise ArtifactError(f"tensor {_key(path, 'weight')!r} has shape {weight}, which does "
                                f"not fit {label} with groups={g}")
        attrs = {"in_channels": ins, "out_channels": outs}
    _expect(shapes, "bias", (attrs["out_channels"],), path, label)
    return attrs


def _per_channel_width(module: nn.Module, shapes: dict, width: int | None, path: str,
                       label: str) -> int:
    """Norms and PReLU: every 1-D tensor has one entry per channel and they must agree."""
    sizes = {name: s[0] for name, s in shapes.items() if len(s) == 1}
    found = set(sizes.values())
    if len(found) > 1:
        raise ArtifactError(f"{label}: its tensors disagree on the number of channels: "
                            + ", ".join(f"{_key(path, n)} {s}" for n, s in sizes.items()))
    if found:
        n = found.pop()
        if width is not None and width != n:
            raise ArtifactError(f"{label}: recorded width {width} but its tensors have "
                                f"{n} channels")
        return n
    if width is None:
        return getattr(module, "num_features", getattr(module, "num_channels", 0))
    return int(width)


def _expect(shapes: dict, name: str, shape: tuple, path: str, label: str) -> None:
    if name in shapes and shapes[name] != shape:
        raise ArtifactError(f"tensor {_key(path, name)!r} has shape {shapes[name]}, "
                            f"but {label} needs {shape}")
