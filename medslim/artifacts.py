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
from typing import Any

import torch
from torch import nn

from medslim import __version__
from medslim._io import atomic_path, write_json
from medslim.errors import ArtifactError, MedslimError
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
    spec = spec or model_spec(model)
    if spec is None:
        raise ArtifactError("this model was not built by medslim.build_model, so its "
                            "architecture is unknown: pass spec={'name': ..., ...}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
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
    save_tensors(folder / WEIGHTS, model.state_dict())
    write_json(folder / MANIFEST, manifest)
    return folder


def load(path: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
    """Rebuild a saved model (in eval mode) from its folder, manifest or weights file."""
    folder = _artifact_folder(Path(path))
    manifest = load_manifest(folder)
    try:
        model = build_model(manifest["model"])
    except MedslimError as err:
        raise ArtifactError(f"{folder / MANIFEST}: cannot rebuild the model: {err}") from err
    state = load_tensors(folder / WEIGHTS, map_location)
    if manifest.get("pruned") is not None:
        resize_pruned(model, state, manifest["pruned"], folder / WEIGHTS)
    load_state_checked(model, state, folder / WEIGHTS)
    model.medslim_manifest = manifest
    return model.eval()


def resize_pruned(model: nn.Module, state: dict[str, torch.Tensor], pruned: dict,
                   source: Path) -> None:
    """A pruned model: shrink the rebuilt network to the saved widths, never guess beyond."""
    widths = pruned.get("widths") if isinstance(pruned, dict) else None
    try:
        resize_to_state(model, state, widths=widths or {})
    except ArtifactError as err:
        raise ArtifactError(f"{source} does not fit the pruned model: {err}") from None
    setattr(model, PRUNED_ATTR, {"widths": dict(widths or {})})


def load_manifest(path: str | os.PathLike) -> dict:
    folder = _artifact_folder(Path(path))
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
        return load_file(str(path), device=map_location)
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ArtifactError(f"{path} is not a readable safetensors file: {err}") from None


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
