"""Losses: Dice + cross-entropy (MONAI) for segmentation, with deep supervision."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_loss(task: str, name: str = "auto") -> nn.Module:
    if task == "classification":
        return nn.CrossEntropyLoss()
    from monai.losses import DiceCELoss, DiceLoss

    name = "dice_ce" if name == "auto" else name
    if name == "ce":
        return _CrossEntropyOnLabelMap()
    # nnU-Net's choice: batch Dice without the background class, plus CE
    if name == "dice":
        base = DiceLoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    else:
        base = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    return DeepSupervisionLoss(base)


class _CrossEntropyOnLabelMap(nn.Module):
    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, label[:, 0])


class DeepSupervisionLoss(nn.Module):
    """Apply ``base`` to each output against a nearest-resized label map.

    Weights halve with each lower resolution and are normalised to sum to 1,
    as in nnU-Net; a single tensor output is passed through unchanged.
    """

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, outputs, label: torch.Tensor) -> torch.Tensor:
        if torch.is_tensor(outputs) and outputs.dim() == label.dim() + 1:
            outputs = list(outputs.unbind(dim=1))  # MONAI DynUNet stacks its heads on dim 1
        if torch.is_tensor(outputs):
            return self.base(outputs, label)
        weights = torch.tensor([0.5 ** i for i in range(len(outputs))])
        weights = weights / weights.sum()
        total = 0.0
        for w, out in zip(weights, outputs):
            target = label
            if out.shape[2:] != label.shape[2:]:
                target = F.interpolate(label.float(), size=out.shape[2:], mode="nearest").long()
            total = total + w * self.base(out, target)
        return total
