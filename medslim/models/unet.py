"""A plain convolutional U-Net for 2D and 3D, in the style of nnU-Net.

Each level is a stack of (conv 3, norm, activation) blocks; the encoder goes
down by max-pooling, by a strided first convolution (nnU-Net), or by resizing
feature maps with a factor ``phi`` (scale-space hypernetworks vary it). The
decoder concatenates the skip and convolves again; with ``deep_supervision``
the training-mode forward also returns lower-resolution outputs.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medslim.errors import ConfigError, unknown_name
from medslim.models import layers

DOWNSAMPLING = ("maxpool", "conv", "resize")
MIN_SIDE = 2


class ConvBlock(nn.Sequential):
    """``n`` times (conv, norm, act); the first conv may carry the stride."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, n: int, norm: str, act: str,
                 stride: int = 1, dropout: float = 0.0):
        mods: list[nn.Module] = []
        for i in range(n):
            mods += [
                layers.conv(spatial_dims, in_ch if i == 0 else out_ch, out_ch, 3,
                            stride=stride if i == 0 else 1, padding=1),
                layers.norm(norm, spatial_dims, out_ch),
                layers.act(act),
            ]
            if dropout:
                mods.append(nn.Dropout(dropout))
        super().__init__(*mods)


class Resize(nn.Module):
    """Resize feature maps by ``phi``: ceil of each side, and never below 2.

    The floor of 2 (where the paper allows 1) keeps instance norm defined: at a
    single position it has nothing to normalise and PyTorch refuses it.
    """

    def __init__(self, phi: float):
        super().__init__()
        self.phi = phi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = [max(MIN_SIDE, math.ceil(s * self.phi)) for s in x.shape[2:]]
        return _interpolate(x, size)


def check_phi_range(phi_range: Sequence[float]) -> None:
    if len(phi_range) != 2 or not 0 <= phi_range[0] < phi_range[1] <= 1.5:
        raise ConfigError(f"phi_range must be [low, high] with 0 <= low < high <= 1.5, "
                          f"got {list(phi_range)}")


def sample_phi(phi_range: Sequence[float]) -> float:
    low, high = phi_range
    return low + (high - low) * float(torch.rand(()))


def _interpolate(x: torch.Tensor, size) -> torch.Tensor:
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.dim() - 2]
    return F.interpolate(x, size=list(size), mode=mode, align_corners=False)


def _check_sizes(spatial_dims, in_channels, out_channels, channels) -> None:
    if spatial_dims not in (1, 2, 3):
        raise ConfigError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels):
        raise ConfigError(f"channels must be positive integers, got {list(channels)}")


class UNet(nn.Module):
    """Plain conv U-Net, dimension-agnostic through ``spatial_dims``.

    Args:
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: image channels (e.g. 3 for RGB endoscopy, 1 for MRI).
        out_channels: classes including background.
        channels: width of each level, top to bottom; its length is the depth.
        convs_per_level: conv blocks per level (nnU-Net uses 2).
        norm: "instance" (nnU-Net), "batch", "group" or "none".
        act: "leakyrelu" (nnU-Net), "relu", "prelu", "gelu" or "silu".
        downsampling: "maxpool", "conv" (strided first conv, as nnU-Net) or
            "resize" (interpolate by ``phi``; the decoder then resizes back to
            the skip's size instead of using transposed convolutions).
        phi: rescaling factor for ``downsampling="resize"``; 0.5 halves.
        phi_range: ``(low, high)``: with ``downsampling="resize"``, every
            training-mode forward draws one phi uniformly from this range (the
            "Stochastic" baseline of scale-space hypernetworks: one set of
            weights for every phi); evaluation uses ``phi``.
        deep_supervision: in training mode also return the outputs of the
            lower decoder levels (highest resolution first).
        dropout: dropout after each activation (0 disables it).

    Example::

        >>> net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128))
        >>> net(torch.zeros(1, 1, 32, 48, 32)).shape
        torch.Size([1, 3, 32, 48, 32])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (32, 64, 128, 256, 320),
        convs_per_level: int = 2,
        norm: str = "instance",
        act: str = "leakyrelu",
        downsampling: str = "maxpool",
        phi: float = 0.5,
        phi_range: Sequence[float] | None = None,
        deep_supervision: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if downsampling not in DOWNSAMPLING:
            raise unknown_name("downsampling", downsampling, DOWNSAMPLING)
        if len(channels) < 2:
            raise ConfigError(f"channels needs at least 2 levels, got {list(channels)}")
        _check_sizes(spatial_dims, in_channels, out_channels, channels)
        if downsampling == "resize" and not 0 < phi <= 1.5:
            raise ConfigError(f"phi must be in (0, 1.5], got {phi}")
        if phi_range is not None:
            if downsampling != "resize":
                raise ConfigError("phi_range needs downsampling='resize'")
            check_phi_range(phi_range)
        self.phi = phi
        self.phi_range = tuple(phi_range) if phi_range is not None else None
        self.spatial_dims = spatial_dims
        self.downsampling = downsampling
        self.deep_supervision = deep_supervision
        block = dict(spatial_dims=spatial_dims, n=convs_per_level, norm=norm, act=act, dropout=dropout)

        self.encoder = nn.ModuleList()
        self.down = nn.ModuleList()
        prev = in_channels
        for level, ch in enumerate(channels):
            strided = downsampling == "conv" and level > 0
            self.encoder.append(ConvBlock(in_ch=prev, out_ch=ch, stride=2 if strided else 1, **block))
            if level < len(channels) - 1:
                self.down.append(self._down_layer(downsampling, phi))
            prev = ch

        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for level in range(len(channels) - 2, -1, -1):
            deep, ch = channels[level + 1], channels[level]
            if downsampling == "resize":
                # resizing keeps the deep width; the concat carries both
                self.up.append(nn.Identity())
                self.decoder.append(ConvBlock(in_ch=deep + ch, out_ch=ch, **block))
            else:
                self.up.append(layers.conv(spatial_dims, deep, ch, 2, stride=2, transposed=True))
                self.decoder.append(ConvBlock(in_ch=2 * ch, out_ch=ch, **block))
            if deep_supervision or level == 0:
                # without deep supervision only the top level has a head, so no
                # idle parameters inflate the counts
                self.heads.append(layers.conv(spatial_dims, ch, out_channels, 1))

    def _down_layer(self, downsampling: str, phi: float) -> nn.Module:
        if downsampling == "maxpool":
            return layers.max_pool(self.spatial_dims, 2)
        if downsampling == "resize":
            return Resize(phi)
        return nn.Identity()  # the next level's first conv is strided

    def set_phi(self, phi: float) -> None:
        """Resize by ``phi`` from now on (resize downsampling only)."""
        for layer in self.down:
            if isinstance(layer, Resize):
                layer.phi = phi

    def forward(self, x: torch.Tensor):
        if self.phi_range is not None:
            # drawn from torch's global generator, which the training loop
            # reseeds every epoch, so a resumed run draws the same values
            self.set_phi(sample_phi(self.phi_range) if self.training else self.phi)
        skips = []
        for level, enc in enumerate(self.encoder):
            x = enc(x)
            if level < len(self.down):
                skips.append(x)
                x = self.down[level](x)
        supervise = self.deep_supervision and self.training
        outputs = []
        for i, (up, dec) in enumerate(zip(self.up, self.decoder)):
            skip = skips.pop()
            x = up(x)
            if x.shape[2:] != skip.shape[2:]:
                x = _interpolate(x, skip.shape[2:])
            x = dec(torch.cat([skip, x], dim=1))
            if supervise and i < len(self.decoder) - 1:
                outputs.append(self.heads[i](x))
        final = self.heads[-1](x)
        if supervise:
            return [final] + outputs[::-1]
        return final
