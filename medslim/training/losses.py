"""Losses: Dice + cross-entropy (MONAI) for segmentation, with deep supervision.

Two styles of deep supervision, chosen by the model (its
``deep_supervision_style`` attribute):

- ``"halving"`` (nnU-Net): weights halve with each lower resolution, and the
  label map is resized by nearest neighbour;
- ``"equal"`` (J-Net): every scale weighs the same, and each target is the
  one-hot mask averaged over the pixels it covers (area resizing), so a
  low-resolution output learns the fraction of foreground rather than a
  blocky guess.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medslim.config import CHOICES
from medslim.errors import unknown_name

STYLES = ("halving", "equal")
NAMES = CHOICES[("train", "loss")]


def make_loss(task: str, name: str = "auto", style: str = "halving") -> nn.Module:
    if task == "classification":
        return nn.CrossEntropyLoss()
    if name not in NAMES:
        raise unknown_name("loss", name, NAMES)
    if style not in STYLES:
        raise unknown_name("deep-supervision style", style, STYLES)
    from monai.losses import DiceCELoss, DiceLoss

    name = "dice_ce" if name == "auto" else name
    if style == "equal":
        return SoftTargetMultiScaleLoss(_soft_target_base(name))
    if name == "ce":
        return _CrossEntropyOnLabelMap()
    # nnU-Net's choice: batch Dice without the background class, plus CE
    if name == "dice":
        base = DiceLoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    else:
        base = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    return DeepSupervisionLoss(base)


def _soft_target_base(name: str) -> nn.Module:
    """The same losses as above, taking (B, C, *S) class probabilities as targets."""
    from monai.losses import DiceCELoss, DiceLoss

    if name == "ce":
        return _CrossEntropyOnProbabilities()
    if name == "dice":
        return DiceLoss(softmax=True, include_background=False, batch=True)
    return DiceCELoss(softmax=True, include_background=False, batch=True)


class _CrossEntropyOnLabelMap(nn.Module):
    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, label[:, 0])


class _CrossEntropyOnProbabilities(nn.Module):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target)


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


class SoftTargetMultiScaleLoss(nn.Module):
    """The mean of ``base`` over every output, each against the area-resized one-hot mask.

    J-Net sums its scales with equal weights; the mean differs only by a
    constant, and keeps the loss on the scale of a single-output run.
    """

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, outputs, label: torch.Tensor) -> torch.Tensor:
        outputs = [outputs] if torch.is_tensor(outputs) else list(outputs)
        classes = outputs[0].shape[1]
        onehot = F.one_hot(label[:, 0].long(), classes).movedim(-1, 1).float()
        total = 0.0
        for out in outputs:
            target = onehot
            if out.shape[2:] != onehot.shape[2:]:
                target = F.interpolate(onehot, size=out.shape[2:], mode="area")
            total = total + self.base(out, target)
        return total / len(outputs)
