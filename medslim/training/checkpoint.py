"""Resumable training checkpoints, stored without pickle.

Model and optimizer tensors go to safetensors; the optimizer's numbers and
hyper-parameters and the loop's counters go to JSON. The checkpoint folder is
replaced atomically, so a kill during saving leaves the previous one intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medslim._io import atomic_dir, write_json
from medslim.artifacts import load_state_checked, load_tensors, resize_pruned, save_tensors
from medslim.errors import ArtifactError
from medslim.models.reshape import PRUNED_ATTR


def save_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> None:
    tensors, numbers = _split_optimizer_state(optimizer.state_dict())
    with atomic_dir(folder, overwrite=True) as tmp:
        save_tensors(tmp / "model.safetensors", model.state_dict())
        save_tensors(tmp / "optimizer.safetensors", tensors)
        write_json(tmp / "state.json", {"loop": state, "optimizer": numbers,
                                        "pruned": getattr(model, PRUNED_ATTR, None)})


def resize_to_checkpoint(folder: Path, model: nn.Module) -> None:
    """Shrink ``model`` to the widths saved in a checkpoint (pruned during training).

    Must run before the optimizer is built, which holds the parameters.
    """
    pruned = _read_state(folder).get("pruned")
    if pruned:
        weights = folder / "model.safetensors"
        resize_pruned(model, load_tensors(weights), pruned, weights, record=folder / "state.json")


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model and optimizer in place; return the loop state."""
    saved = _read_state(folder)
    load_state_checked(model, load_tensors(folder / "model.safetensors"), folder / "model.safetensors")
    tensors = load_tensors(folder / "optimizer.safetensors")
    try:
        optimizer.load_state_dict(_join_optimizer_state(tensors, saved["optimizer"]))
    except (KeyError, ValueError) as err:
        raise ArtifactError(f"checkpoint {folder} does not match the optimizer: {err}") from None
    return saved["loop"]


def _read_state(folder: Path) -> dict:
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"cannot read checkpoint {folder / 'state.json'}: {err}") from None


def _split_optimizer_state(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    numbers: dict[str, dict] = {}
    for idx, entry in sd["state"].items():
        numbers[str(idx)] = {}
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{idx}/{key}"] = value
            else:
                numbers[str(idx)][key] = value
    return tensors, {"state": numbers, "param_groups": sd["param_groups"]}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], numbers: dict) -> dict:
    state: dict[int, dict] = {int(i): dict(v) for i, v in numbers["state"].items()}
    for name, value in tensors.items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": numbers["param_groups"]}
