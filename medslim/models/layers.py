"""Layer factories keyed by ``spatial_dims``, so each network is written once for 2D and 3D.

MONAI has such factories too, but importing MONAI takes seconds; these few
lines keep ``medslim.load`` fast for users who only run a saved model.
"""

from __future__ import annotations

from torch import nn

from medslim.errors import ConfigError, unknown_name

NORMS = ("batch", "instance", "group", "none")
ACTS = ("relu", "leakyrelu", "prelu", "gelu", "silu")


def conv(spatial_dims: int, *args, transposed: bool = False, **kwargs) -> nn.Module:
    name = "ConvTranspose" if transposed else "Conv"
    return getattr(nn, f"{name}{_dims(spatial_dims)}d")(*args, **kwargs)


def max_pool(spatial_dims: int, kernel_size: int = 2, **kwargs) -> nn.Module:
    return getattr(nn, f"MaxPool{_dims(spatial_dims)}d")(kernel_size, **kwargs)


def norm(name: str, spatial_dims: int, channels: int, groups: int = 8) -> nn.Module:
    """A normalisation layer; instance norm is affine, as in nnU-Net."""
    name = name.lower()
    if name == "batch":
        return getattr(nn, f"BatchNorm{_dims(spatial_dims)}d")(channels)
    if name == "instance":
        return getattr(nn, f"InstanceNorm{_dims(spatial_dims)}d")(channels, affine=True)
    if name == "group":
        return nn.GroupNorm(_largest_divisor(channels, groups), channels)
    if name == "none":
        return nn.Identity()
    raise unknown_name("norm", name, NORMS)


def act(name: str) -> nn.Module:
    """An activation; never in-place, so traced graphs see every tensor."""
    name = name.lower()
    if name == "relu":
        return nn.ReLU()
    if name == "leakyrelu":
        return nn.LeakyReLU(0.01)
    if name == "prelu":
        return nn.PReLU()
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.SiLU()
    raise unknown_name("activation", name, ACTS)


def _dims(spatial_dims: int) -> int:
    if spatial_dims not in (1, 2, 3):
        raise ConfigError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def _largest_divisor(channels: int, at_most: int) -> int:
    # group norm needs channels divisible by its groups; pruning may change widths
    for g in range(min(at_most, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1
