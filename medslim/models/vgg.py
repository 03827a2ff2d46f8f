"""A VGG16-BN-style classifier with configurable widths, for 2D or 3D inputs.

The ``features`` indices follow torchvision's ``vgg16_bn`` for the default
configuration, so a torchvision state dict maps onto it by name. Pooling uses
``ceil_mode`` so small medical images (28x28 MedMNIST) survive five poolings,
and the head pools globally so any input size works.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from medslim.errors import ConfigError
from medslim.models import layers

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGGClassifier(nn.Module):
    """VGG with batch norm: conv-BN-ReLU stacks, max-pools, global pool, MLP head.

    Args:
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: image channels.
        num_classes: output logits.
        config: widths with "M" for a max-pool (default VGG16).
        width: multiplier applied to every width (0.25 gives a quarter-width VGG).
        hidden: width of the two hidden layers of the head; 0 gives a single
            linear layer on the pooled features (global pool -> dense), the
            usual head for transfer learning.
        dropout: dropout in the head.

    Example::

        >>> net = VGGClassifier(in_channels=1, num_classes=2, width=0.25)
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 2])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        num_classes: int = 2,
        config: Sequence[Union[int, str]] = VGG16,
        width: float = 1.0,
        hidden: int = 512,
        dropout: float = 0.5,
    ):
        super().__init__()
        feats: list[nn.Module] = []
        prev = in_channels
        for item in config:
            if item == "M":
                feats.append(layers.max_pool(spatial_dims, 2, ceil_mode=True))
                continue
            if not isinstance(item, int) or item < 1:
                raise ConfigError(f"VGG config entries must be positive ints or 'M', got {item!r}")
            ch = max(1, round(item * width))
            feats += [layers.conv(spatial_dims, prev, ch, 3, padding=1),
                      layers.norm("batch", spatial_dims, ch), nn.ReLU()]
            prev = ch
        if prev == in_channels:
            raise ConfigError("VGG config has no convolution")
        self.features = nn.Sequential(*feats)
        self.avgpool = getattr(nn, f"AdaptiveAvgPool{spatial_dims}d")(1)
        if hidden < 0:
            raise ConfigError(f"VGG hidden must be 0 (a linear head) or positive, got {hidden}")
        if hidden == 0:
            self.classifier = nn.Sequential(nn.Linear(prev, num_classes))
        else:
            self.classifier = nn.Sequential(
                nn.Linear(prev, hidden), nn.ReLU(), nn.Dropout(dropout),
                nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
