"""Parameter and FLOP counts.

FLOP convention (used everywhere in medslim): FLOPs are what PyTorch's own
``torch.utils.flop_counter.FlopCounterMode`` counts for one forward pass at
the given input size, where one multiply-add is **2 FLOPs**. It counts
convolutions (including transposed ones), matmul / linear / bmm / addmm,
attention and the few other ops that counter covers. Bias additions,
normalisation, activations, pooling, interpolation and element-wise ops are
*not* counted, so the number is a lower bound dominated by the conv layers.
MACs (multiply-accumulates) are ``flops // 2``.

We use PyTorch's counter rather than a hand-written hook table so that any
module built from those ops (MONAI blocks included) is covered without a
per-layer registry that could drift.

The helpers :func:`as_inputs` and :func:`evaluating` are shared by the other
cost modules so that every measurement sees the model the same way: eval
mode, no autograd, inputs as a tuple.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence, Union

import torch
from torch import nn

from medslim.errors import ConfigError

ExampleInput = Union[torch.Tensor, Sequence[torch.Tensor]]


def as_inputs(example_input: ExampleInput) -> tuple[torch.Tensor, ...]:
    """Normalise a tensor or a sequence of tensors to the positional-args tuple."""
    if isinstance(example_input, torch.Tensor):
        return (example_input,)
    try:
        inputs = tuple(example_input)
    except TypeError:  # not iterable: refused just below with the standard message
        inputs = ()
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise ConfigError("example_input must be a tensor or a non-empty tuple of tensors, "
                          f"got {type(example_input).__name__}")
    return inputs


def require_module(model: object, caller: str) -> nn.Module:
    """``model`` itself; anything but an nn.Module would fail deep inside with an AttributeError."""
    if not isinstance(model, nn.Module):
        hint = " (load a saved model first: medslim.load(path))" if isinstance(model, (str, os.PathLike)) else ""
        raise ConfigError(f"{caller}: model must be a torch.nn.Module, got {type(model).__name__}{hint}")
    return model


def run_model(model: nn.Module, inputs: tuple[torch.Tensor, ...]):
    """``model(*inputs)``, with an input the model cannot take reported as the caller's mistake.

    A wrong channel count or rank surfaces as a RuntimeError/ValueError/
    IndexError from some inner layer; the message names example_input and its
    shape instead, keeping the layer's own words.
    """
    try:
        return model(*inputs)
    except (RuntimeError, ValueError, IndexError) as err:
        shapes = ", ".join(str(list(t.shape)) for t in inputs)
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise ConfigError(f"the model cannot run on example_input of shape {shapes}: {first}") from err


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode without autograd; restore its training flags after.

    Costs are for inference, where dropout is off and norms use running stats;
    saving every submodule's flag (not just the root's) keeps models that mix
    modes intact.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for module, flag in flags:
            module.train(flag)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    require_module(model, "count_params")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, example_input: ExampleInput) -> int:
    """FLOPs of one forward pass on ``example_input`` (batch as given).

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` in eval mode under
    ``torch.no_grad()``; one multiply-add = 2 FLOPs; convolutions (incl.
    transposed), matmul/linear and the other ops PyTorch's counter covers are
    counted, biases, norms, activations and pooling are not. See the module
    docstring for why.
    """
    return flop_counts(model, example_input)["Global"]


def flop_counts(model: nn.Module, example_input: ExampleInput) -> dict[str, int]:
    """FLOPs per module path as the counter names them (``Global`` is the total)."""
    from torch.utils.flop_counter import FlopCounterMode

    require_module(model, "count_flops")
    inputs = as_inputs(example_input)
    with evaluating(model), FlopCounterMode(display=False) as counter:
        run_model(model, inputs)
    counts = {k: int(sum(v.values())) for k, v in counter.get_flop_counts().items()}
    counts["Global"] = int(counter.get_total_flops())
    return counts


def count_macs(model: nn.Module, example_input: ExampleInput) -> int:
    """Multiply-accumulates: ``count_flops(...) // 2`` under the same convention."""
    return count_flops(model, example_input) // 2
