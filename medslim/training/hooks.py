"""The one extension point of the training loop.

Methods that act *while* a network trains (Sauron's in-training pruning, a
sparsity regulariser) plug in here, so the loop never imports the compression
layer: it only calls these methods at fixed points of every step and epoch.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn


class TrainingHook:
    """Does nothing; subclasses override what they need.

    Order within an epoch: :meth:`begin` once (after a resume too, on the
    restored model); per step ``forward``, :meth:`extra_loss` (added to the
    task loss), ``backward``, :meth:`after_backward`, optimizer step; after the
    last step :meth:`end_epoch`, then validation. ``keep_last``: the loop keeps
    the final weights instead of the best validation epoch, for hooks that
    change the architecture (a best epoch of another width is another model).
    """

    keep_last = False

    def begin(self, model: nn.Module) -> None:
        """Attach to ``model``: called before the first epoch and after a resume."""

    def extra_loss(self) -> Optional[torch.Tensor]:
        """A term added to the loss of the step just forwarded, or None."""
        return None

    def after_backward(self, model: nn.Module) -> None:
        """Between backward and the optimizer step (gradient regularisers)."""

    def end_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                  train_loss: float, last: bool) -> dict[str, Any]:
        """After an epoch's training steps; returns entries for that epoch's metrics line."""
        return {}

    def close(self) -> None:
        """Detach from the model (hooks removed); called whatever happened."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state saved in every checkpoint, for an identical resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class AfterBackward(TrainingHook):
    """Wraps a plain ``fn(model)`` gradient regulariser as a hook."""

    def __init__(self, fn):
        self.fn = fn

    def after_backward(self, model: nn.Module) -> None:
        self.fn(model)
