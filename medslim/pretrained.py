"""Pretrained weights from a user's file, mapped onto a medslim network by name.

Transfer learning starts from weights trained on another task. They come as

- a medslim model folder (``model.json`` + ``model.safetensors``), or a
  ``.safetensors`` file;
- a PyTorch state dict (``.pth``/``.pt``/``.bin``), e.g. torchvision's
  ``vgg16_bn`` weights, read with ``torch.load(weights_only=True)`` so that
  the file cannot run code. A checkpoint dict holding the state dict under
  ``state_dict`` or ``model`` works too, and a ``module.`` prefix is dropped.

Tensors map by name. The classifier head (the container of the network's last
``nn.Linear``) is task-specific: it keeps its fresh initialisation and the
file's head tensors are ignored. Everything else must match, so a file of
another architecture fails with the names that differ instead of loading
half a network. One adaptation is made, as timm does: a first convolution
trained on RGB loads into a one-channel network by summing its input
channels (a grey image copied to three channels gives the same output), and
a one-channel one into an RGB network by spreading it over the three.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medslim.errors import ArtifactError, ConfigError

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def classifier_head(model: nn.Module) -> str:
    """Path of the classifier head: the container of the last ``nn.Linear`` (or that layer).

    ``VGGClassifier`` -> ``"classifier"``, MONAI ``DenseNet121`` ->
    ``"class_layers"``, MONAI ``ResNet`` -> ``"fc"``.
    """
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ConfigError(f"{type(model).__name__} has no classifier head (no nn.Linear layer); "
                          "a frozen backbone with a trained head needs a classification network")
    parent = last.rpartition(".")[0]
    return parent or last


def freeze_backbone(model: nn.Module, head: str | None = None) -> list[str]:
    """Make every parameter outside ``head`` untrainable; returns the trainable names.

    The training loop keeps norms whose parameters are all frozen in eval
    mode, so their running statistics stay the pretrained ones too.
    """
    head = head or classifier_head(model)
    trainable = []
    for name, p in model.named_parameters():
        inside = _under(name, head)
        p.requires_grad_(inside)
        if inside:
            trainable.append(name)
    return trainable


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a medslim model folder, a safetensors file or a PyTorch state dict."""
    from medslim.artifacts import MANIFEST, WEIGHTS, load_tensors

    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ConfigError(f"pretrained weights: expected a file or folder path, got {path!r:.60}")
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"pretrained weights not found: {path}")
    if path.is_dir() or path.name == MANIFEST:
        folder = path if path.is_dir() else path.parent
        if not (folder / WEIGHTS).exists():
            raise ArtifactError(f"{folder} is not a medslim model folder (no {WEIGHTS})")
        return load_tensors(folder / WEIGHTS)
    if path.suffix == ".safetensors":
        return load_tensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return _torch_state(path)
    raise ArtifactError(f"{path}: unknown weights format; give a medslim model folder, a "
                        f".safetensors file or a PyTorch state dict ({', '.join(TORCH_SUFFIXES)})")


def _torch_state(path: Path) -> dict[str, torch.Tensor]:
    import pickle
    import zipfile

    from medslim.artifacts import check_finite

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise ArtifactError(f"{path} is not a readable PyTorch state dict (read with "
                            f"weights_only=True, so files holding code are refused): {err}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise ArtifactError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    check_finite(state, path)  # safetensors files are checked by load_tensors
    return state


def load_pretrained(model: nn.Module, path: str | os.PathLike, head: str | None = None) -> dict[str, Any]:
    """Copy the weights in ``path`` into ``model`` (all but its head); returns what was done.

    Raises ArtifactError, naming the file and the first differing tensors,
    when the file does not hold this backbone.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"load_pretrained: model must be a torch.nn.Module, got {type(model).__name__}")
    source = read_weights(path)
    head = head or classifier_head(model)
    own = model.state_dict()
    loaded, adapted, problems = {}, [], []
    for name, tensor in own.items():
        if _under(name, head):
            continue
        if name not in source:
            problems.append(f"{name} missing from the file")
            continue
        value = source[name]
        if value.shape != tensor.shape:
            value = _adapt_input_channels(value, tensor)
            if value is None:
                problems.append(f"{name}: file {tuple(source[name].shape)} vs model {tuple(tensor.shape)}")
                continue
            adapted.append(name)
        loaded[name] = value.to(tensor.dtype)
    extra = sorted(k for k in source if k not in own and not _under(k, head))
    problems += [f"{k} is in the file but not in the model" for k in extra[:3]]
    if problems or not loaded:
        count = len(problems) + max(0, len(extra) - 3)
        raise ArtifactError(f"{path} does not hold weights for this network "
                            f"({type(model).__name__}, head {head!r} excluded): {count} differences, "
                            f"e.g. {'; '.join(problems[:3]) or 'no tensor in common'}")
    model.load_state_dict(loaded, strict=False)
    return {"file": str(path), "loaded": len(loaded), "adapted_input_channels": adapted,
            "head_left_fresh": head,
            "head_tensors_ignored": sorted(k for k in source if _under(k, head))}


def _adapt_input_channels(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
    """A first conv's weight for 1 <-> 3 input channels, or None for any other mismatch."""
    if value.dim() < 3 or value.dim() != like.dim() or value.shape[0] != like.shape[0] \
            or value.shape[2:] != like.shape[2:]:
        return None
    have, want = value.shape[1], like.shape[1]
    if (have, want) == (3, 1):
        return value.sum(1, keepdim=True)
    if (have, want) == (1, 3):
        return value.repeat(1, 3, *([1] * (value.dim() - 2))) / 3
    return None


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")
