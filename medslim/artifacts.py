"""Saving and loading models without pickle: safetensors weights plus a JSON manifest.

The manifest records how to rebuild the network (the spec given to
:func:`medslim.models.build_model`), so ``load`` never executes code from the
file. A folder holds ``model.json`` and ``model.safetensors``; a run folder is
such a folder too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from medslim import __version__
from medslim._io import json_default, atomic_path, write_text
from medslim.errors import ArtifactError, ConfigError, MedslimError
from medslim.models import build_model, model_spec
from medslim.models.reshape import PRUNED_ATTR, resize_to_state

MANIFEST = "model.json"
WEIGHTS = "model.safetensors"
FORMAT = "medslim-model"
FORMAT_VERSION = 1


def save(model: nn.Module, path: str | os.PathLike, spec: dict | None = None,
         extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into the folder ``path``.

    ``spec`` is needed only for models that :func:`build_model` did not build.
    ``extra`` (task, input size, metrics...) is stored in the manifest as is.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"save: model must be a torch.nn.Module, got {type(model).__name__}")
    spec = spec or model_spec(model)
    if spec is None:
        raise ArtifactError("this model was not built by medslim.build_model, so its "
                            "architecture is unknown: pass spec={'name': ..., ...}")
    folder = _as_path(path, "save: path")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medslim_version": __version__,
        "model": spec,
        "extra": extra or {},
    }
    pruned = getattr(model, PRUNED_ATTR, None)
    if pruned is not None:
        # the weights are smaller than the spec: load() resizes the rebuilt
        # network to them (widths of layers without tensors are kept here)
        manifest["pruned"] = pruned
    # serialise before writing anything: a bad ``extra`` must not leave new
    # weights next to an old manifest
    try:
        text = json.dumps(manifest, indent=2, default=json_default) + "\n"
    except (TypeError, ValueError) as err:
        raise ConfigError(f"save: spec and extra must be JSON-serialisable: {err}") from None
    _make_folder(folder)
    save_tensors(folder / WEIGHTS, model.state_dict())
    write_text(folder / MANIFEST, text)
    return folder


def _make_folder(folder: Path) -> None:
    """Create the model folder, or say why ``path`` cannot be one."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"save: {folder} is a file; a saved model is a folder "
                          f"(holding {MANIFEST} and {WEIGHTS}), so give a new or existing folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"save: cannot create the folder {folder}: {err.strerror or err}") from None


def _as_path(path: Any, what: str) -> Path:
    """``path`` as a Path; anything else (None, a number, a model) is the caller's mistake."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"{what} must be a str or os.PathLike, got {type(path).__name__}")
    if not os.fspath(path):
        raise ConfigError(f"{what} is empty")
    return Path(path)


def load(path: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
    """Rebuild a saved model (in eval mode) from its folder, manifest or weights file."""
    folder = _artifact_folder(_as_path(path, "load: path"))
    manifest = load_manifest(folder)
    try:
        model = build_model(manifest["model"])
    except MedslimError as err:
        raise ArtifactError(f"{folder / MANIFEST}: cannot rebuild the model: {err}") from err
    state = load_tensors(folder / WEIGHTS, map_location)
    if manifest.get("pruned") is not None:
        resize_pruned(model, state, manifest["pruned"], folder / WEIGHTS, record=folder / MANIFEST)
    load_state_checked(model, state, folder / WEIGHTS)
    model.medslim_manifest = manifest
    return model.eval()


def resize_pruned(model: nn.Module, state: dict[str, torch.Tensor], pruned: dict,
                  source: Path, record: Path | None = None) -> None:
    """A pruned model: shrink the rebuilt network to the saved widths, never guess beyond.

    ``record`` is the file holding ``pruned`` (the manifest); errors about
    that field name it, or the weights' folder when it is not given.
    """
    widths = pruned_widths(pruned, record or source.parent)
    try:
        resize_to_state(model, state, widths=widths)
    except ArtifactError as err:
        raise ArtifactError(f"{source} does not fit the pruned model: {err}") from None
    setattr(model, PRUNED_ATTR, {"widths": widths})


def pruned_widths(pruned: Any, where: Path) -> dict[str, int]:
    """The layer widths of a "pruned" record: {"widths": {module path: positive int}}.

    A malformed record used to be ignored, loading the model at widths nobody
    saved, so every part of it is checked.
    """
    if not isinstance(pruned, dict):
        raise ArtifactError(f"{where}: field 'pruned' must be an object like "
                            f"{{\"widths\": {{...}}}}, got {_short(pruned)}")
    widths = pruned.get("widths")
    if widths is None:
        return {}
    if not isinstance(widths, dict):
        raise ArtifactError(f"{where}: field 'pruned.widths' must map module paths to "
                            f"channel counts, got {_short(widths)}")
    for path, width in widths.items():
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ArtifactError(f"{where}: field 'pruned.widths' gives module {path!r} the width "
                                f"{_short(width)}; a width is a positive integer")
    return dict(widths)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_manifest(path: str | os.PathLike) -> dict:
    folder = _artifact_folder(_as_path(path, "load_manifest: path"))
    file = folder / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"no model manifest at {file}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{file} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{file} is not a medslim model manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ArtifactError(f"{file} was written by a newer medslim "
                            f"(format {manifest['format_version']}); upgrade medslim")
    return manifest


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    # clone: safetensors refuses tensors that share storage (views, tied weights)
    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def load_tensors(path: Path, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.exists():
        raise ArtifactError(f"no weights file at {path}")
    try:
        tensors = load_file(str(path), device=map_location)
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ArtifactError(f"{path} is not a readable safetensors file: {err}") from None
    check_finite(tensors, path)
    return tensors


def check_finite(tensors: Mapping[str, torch.Tensor], source: Path) -> None:
    """Refuse NaN or infinite weights, naming the file and the first such tensor.

    They load without complaint and only show up later as a Dice of 0 or a
    NaN everywhere. Training checkpoints (Adam's moments included) are finite
    too, so every load is checked; one ``isfinite`` pass per float tensor.
    """
    for name, tensor in tensors.items():
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = tensor.numel() - int(finite.sum())
            raise ArtifactError(f"{source}: tensor {name!r} holds {bad} NaN or infinite values "
                                f"(of {tensor.numel()}); these weights are unusable (did training diverge?)")


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load weights, with a message naming the file and the first mismatches."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches (e.g. {'; '.join(wrong[:3])})")
    if problems:
        raise ArtifactError(f"{source} does not match the model: " + "; ".join(problems))
    model.load_state_dict(state)


def _artifact_folder(path: Path) -> Path:
    if path.is_dir():
        return path
    if path.name in (MANIFEST, WEIGHTS):
        return path.parent
    if not path.exists():
        raise ArtifactError(f"no model at {path}")
    raise ArtifactError(f"{path} is not a medslim model folder (expected {MANIFEST} and {WEIGHTS})")
