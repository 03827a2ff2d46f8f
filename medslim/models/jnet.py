"""Low-resolution input, full-resolution masks: the J-Net upsampling head.

A segmentation network fed a small image (say 32x32, for speed on a weak
CPU) predicts small logits. J-Net (Ostrowski and Shafique, ISVC 2024) keeps
the small input but learns to upsample those logits to the full-resolution
mask with a head of fewer than 200 parameters, trained against the
full-resolution ground truth at every scale.

The head works on the logits only (one map per class), with no activation:
it is a learned linear upsampler.

- a chain of ``log2(factor) - 1`` stages, each a 2x2 stride-2 transposed conv
  followed by a 3x3 conv, doubles the resolution; every stage's output is
  supervised;
- a long skip upsamples the input logits to the chain's last resolution in one
  go (its transposed convs share one 3x3 conv, as in the reference code);
- a last stage takes the skip and the chain together and reaches ``factor``
  times the input size.

Choices where the paper is silent or binary-only (see docs/lowres.md):

- every convolution is grouped by class, so each class has its own tiny
  upsampler and the parameter count grows linearly with the classes (87 per
  class for factor 8, exactly the reference's single-channel head);
- the head starts from PyTorch's initialisation, as the reference code; the
  alternative, ``init="nearest"`` (start as nearest-neighbour upsampling),
  was measured and trained a head that hardly moved from blocky upsampling
  (docs/benchmarks.md).

:class:`LowResSegmenter` wraps any segmentation network medslim builds (its
U-Net, MONAI networks, pruned or SSHN-exported models) with this head, or
with plain bilinear upsampling as the baseline.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medslim.errors import ConfigError, unknown_name
from medslim.models import layers

HEADS = ("jnet", "bilinear")
SUPERVISION = ("all", "low")
INITS = ("default", "nearest")
MAX_FACTOR = 16


def check_factor(factor: Any) -> int:
    """The upsampling factor: a power of two from 2 to 16."""
    ok = isinstance(factor, int) and not isinstance(factor, bool) and 2 <= factor <= MAX_FACTOR
    if not ok or factor & (factor - 1):
        raise ConfigError(f"the upsampling factor must be 2, 4, 8 or 16, got {factor!r}")
    return factor


class _Stage(nn.Module):
    """Double the resolution: transposed conv 2x2 stride 2, then conv 3x3, grouped by class."""

    def __init__(self, spatial_dims: int, classes: int, in_per_class: int):
        super().__init__()
        width = classes * in_per_class
        self.up = layers.conv(spatial_dims, width, width, 2, stride=2, groups=classes, transposed=True)
        self.conv = layers.conv(spatial_dims, width, classes, 3, padding=1, groups=classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


class _Skip(nn.Module):
    """Upsample by ``2**steps``: one transposed conv per step, all followed by one shared 3x3 conv."""

    def __init__(self, spatial_dims: int, classes: int, steps: int):
        super().__init__()
        self.ups = nn.ModuleList(
            layers.conv(spatial_dims, classes, classes, 2, stride=2, groups=classes, transposed=True)
            for _ in range(steps))
        self.conv = layers.conv(spatial_dims, classes, classes, 3, padding=1, groups=classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for up in self.ups:
            x = self.conv(up(x))
        return x


class JHead(nn.Module):
    """The learned upsampling head: logits at size s -> logits at ``factor`` x s.

    Args:
        classes: channels of the logits (classes including background).
        factor: 2, 4, 8 or 16.
        spatial_dims: 2 or 3.
        init: "default" (PyTorch's initialisation, as the reference code) or
            "nearest" (start as nearest-neighbour upsampling).

    ``forward`` returns the outputs at every scale, the largest first:
    ``[factor x s, ..., 2 x s]``.

    Example::

        >>> head = JHead(classes=2, factor=8)
        >>> [o.shape[-1] for o in head(torch.zeros(1, 2, 32, 32))]
        [256, 128, 64]
        >>> sum(p.numel() for p in head.parameters())
        174
    """

    def __init__(self, classes: int, factor: int, spatial_dims: int = 2, init: str = "default"):
        super().__init__()
        if not isinstance(classes, int) or classes < 1:
            raise ConfigError(f"the head needs a positive number of classes, got {classes!r}")
        if init not in INITS:
            raise unknown_name("head init", init, INITS)
        steps = int(math.log2(check_factor(factor)))
        self.classes = classes
        self.chain = nn.ModuleList(_Stage(spatial_dims, classes, 1) for _ in range(steps - 1))
        self.skip = _Skip(spatial_dims, classes, steps - 1) if steps > 1 else None
        self.last = _Stage(spatial_dims, classes, 2 if steps > 1 else 1)
        if init == "nearest":
            self._init_nearest()

    def forward(self, logits: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        x = logits
        for stage in self.chain:
            x = stage(x)
            outputs.append(x)
        if self.skip is not None:
            x = _interleave(self.skip(logits), x, self.classes)
        outputs.append(self.last(x))
        return outputs[::-1]

    @torch.no_grad()
    def _init_nearest(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.modules.conv._ConvTransposeNd):
                # each channel copied to its 2x2 block, unmixed
                module.weight.zero_()
                per_group = module.weight.shape[1]
                for channel in range(module.weight.shape[0]):
                    module.weight[channel, channel % per_group] = 1.0
                module.bias.zero_()
            elif isinstance(module, nn.modules.conv._ConvNd):
                module.weight.zero_()
                centre = tuple(k // 2 for k in module.kernel_size)
                per_group = module.weight.shape[1]
                # pass the centre through; the last stage averages its two inputs
                module.weight[(slice(None), slice(None), *centre)] = 1.0 / per_group
                module.bias.zero_()


def _interleave(a: torch.Tensor, b: torch.Tensor, groups: int) -> torch.Tensor:
    """Channels [a0, b0, a1, b1, ...], so each class's group sees its own two maps."""
    return torch.stack([a, b], dim=2).flatten(1, 2) if groups > 1 else torch.cat([a, b], dim=1)


def class_count(spec: dict) -> int:
    """Output channels of a network spec (``out_channels`` or ``num_classes``)."""
    for key in ("out_channels", "num_classes"):
        if isinstance(spec.get(key), int):
            return spec[key]
    raise ConfigError(f"the backbone {spec.get('name')!r} must state its out_channels "
                      "(classes including background) for the upsampling head")


class LowResSegmenter(nn.Module):
    """A segmentation network on small inputs whose logits are upsampled by ``factor``.

    Args:
        backbone: the network's spec, e.g. ``{"name": "unet", "channels": [16, 32, 64]}``;
            ``spatial_dims``, ``in_channels`` and ``out_channels`` given here fill it in.
        factor: output size / input size: 2, 4, 8 or 16.
        head: "jnet" (the learned head) or "bilinear" (no parameters: the baseline).
        supervise: "all" trains against the target at every scale the model
            produces (the input scale, each head stage, the full size); "low"
            only at the input scale, as when a network is simply trained on
            downsized masks and its logits upsampled afterwards.
        init: the head's initialisation, "default" or "nearest".

    In training mode ``forward`` returns a list of logits, the largest first;
    in evaluation mode only the full-size logits.

    Example::

        >>> net = LowResSegmenter({"name": "unet", "channels": [8, 16, 32]}, factor=8,
        ...                       spatial_dims=2, in_channels=3, out_channels=2)
        >>> net.eval()(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 2, 256, 256])
    """

    #: read by the training loss: every scale counts equally, against soft targets
    deep_supervision_style = "equal"

    def __init__(self, backbone: dict, factor: int, head: str = "jnet", supervise: str = "all",
                 init: str = "default", spatial_dims: int | None = None,
                 in_channels: int | None = None, out_channels: int | None = None):
        super().__init__()
        from medslim.models import build_model, complete_spec

        if not isinstance(backbone, dict) or "name" not in backbone:
            raise ConfigError("model.backbone must be a model spec with a 'name', e.g. {name: unet}")
        if backbone["name"] == "lowres":
            raise ConfigError("model.backbone cannot itself be a lowres model")
        if head not in HEADS:
            raise unknown_name("head", head, HEADS)
        if supervise not in SUPERVISION:
            raise unknown_name("supervise", supervise, SUPERVISION)
        spec = complete_spec(copy.deepcopy(backbone), spatial_dims, in_channels, out_channels)
        self.factor = check_factor(factor)
        self.supervise = supervise
        self.spatial_dims = spec.get("spatial_dims", spatial_dims or 2)
        self.backbone = build_model(spec)
        classes = out_channels or class_count(spec)
        self.head = JHead(classes, factor, self.spatial_dims, init) if head == "jnet" else None

    def forward(self, x: torch.Tensor):
        low = self.backbone(x)
        if isinstance(low, (list, tuple)):  # a backbone's own deep supervision is not used here
            low = low[0]
        elif low.dim() == x.dim() + 1:  # MONAI DynUNet stacks its heads on dim 1
            low = low[:, 0]
        if self.training and self.supervise == "low":
            return [low]
        ups = self.head(low) if self.head is not None else [self._bilinear(low)]
        return [*ups, low] if self.training else ups[0]

    def _bilinear(self, low: torch.Tensor) -> torch.Tensor:
        mode = "bilinear" if low.dim() == 4 else "trilinear"
        return F.interpolate(low, scale_factor=self.factor, mode=mode, align_corners=False)


def attach_head(model: nn.Module, factor: int, head: str = "jnet", supervise: str = "all",
                init: str = "default") -> LowResSegmenter:
    """Wrap an existing network (trained, pruned, an SSHN export...) with an upsampling head.

    The network keeps its weights and becomes ``.backbone``; the result saves
    and loads like any medslim model, pruned widths included.
    """
    from medslim.models import SPEC_ATTR, model_spec
    from medslim.models.reshape import PRUNED_ATTR

    spec = model_spec(model)
    if spec is None:
        raise ConfigError("attach_head needs a model built by medslim (build_model, load or train)")
    wrapped = LowResSegmenter(spec, factor, head=head, supervise=supervise, init=init)
    wrapped.backbone = model
    pruned = getattr(model, PRUNED_ATTR, None)
    if pruned is not None:
        widths = {f"backbone.{k}": v for k, v in (pruned.get("widths") or {}).items()}
        setattr(wrapped, PRUNED_ATTR, {"widths": widths})
    setattr(wrapped, SPEC_ATTR, {"name": "lowres", "backbone": spec, "factor": factor, "head": head,
                                 "supervise": supervise, "init": init})
    return wrapped
