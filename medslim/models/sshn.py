"""Scale-space hypernetwork (SSHN): one network that outputs U-Nets for every rescaling factor.

Gonzalez Ortiz, Guttag and Dalca (NeurIPS 2023). The primary network is a
:class:`~medslim.models.unet.UNet` whose downsampling resizes feature maps by a
factor ``phi`` (bilinear, ceil of each side) instead of halving them; a small
MLP maps the encoding ``(z, 1 - z)`` of ``phi`` (``z`` = ``phi`` normalised to
the training range) to *every* weight of that U-Net. Training draws one
``phi`` per minibatch, so one training covers the whole range; afterwards
:meth:`ScaleSpaceHyperNet.export` gives a plain U-Net at the chosen ``phi``,
with exactly the cost of a U-Net trained at that factor alone.

Choices the paper leaves open, made here (see ``docs/sshn.md``):

* Initialisation, after the authors' magnitude-invariant recipe: the output
  layer's bias holds a normally initialised U-Net (the same initialisation a
  fixed U-Net gets) and its weight starts at zero, so at step 0 every ``phi``
  sees that well-initialised U-Net, and the hypernetwork learns the changes.
* Step size: the output layer sees the last hidden features divided by their
  count. A predicted weight is a bias plus ``hidden[-1]`` products, and Adam
  moves each of them by about the learning rate, so without the division one
  step moves a predicted weight ``1 + sum|h|`` learning rates (``sum|h|`` is 2
  to 4 at the default sizes); with it, about one, as for a plain U-Net's
  weight, and the phi-dependent part learns in smaller steps than the shared
  part. Measured on Kvasir-SEG (docs/benchmarks.md): the division raised the
  test Dice; ``scale_features=False`` reproduces the plain MLP.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call

from medslim.errors import ConfigError
from medslim.models.unet import UNet, check_phi_range, sample_phi

PER_SAMPLE_NORMS = ("instance", "group", "none")
DEFAULT_PHI_RANGE = (0.0, 0.5)


def forward_phi(phi_range: Sequence[float] = DEFAULT_PHI_RANGE, phi: float | None = None) -> float:
    """The factor a hypernetwork's plain forward uses: its set ``phi``, else the middle of its range."""
    return float(phi) if phi is not None else (float(phi_range[0]) + float(phi_range[1])) / 2


class ScaleSpaceHyperNet(nn.Module):
    """A hypernetwork that predicts all weights of a resize-by-``phi`` U-Net.

    Args:
        spatial_dims, in_channels, out_channels, channels, convs_per_level,
            act: the primary U-Net, as in :class:`UNet` (the paper keeps the
            width constant across levels, e.g. ``channels=(24,) * 5``).
        norm: "instance" (default), "group" or "none"; see the module notes.
        phi_range: ``(low, high)``: the training range of ``phi``, drawn
            uniformly once per minibatch (paper: ``(0, 0.5)``).
        phi: the factor used in evaluation mode (default: the range's middle).
        hidden: hidden widths of the hypernetwork MLP (LeakyReLU).
        scale_features: divide the last hidden features by their count before
            the output layer (see the module notes; False is the plain MLP,
            kept to reproduce the comparison in docs/benchmarks.md).

    Example::

        >>> net = ScaleSpaceHyperNet(spatial_dims=2, in_channels=3, out_channels=2,
        ...                          channels=(16,) * 4)
        >>> unet = net.export(0.3)          # a plain UNet at phi=0.3
        >>> unet(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 2, 64, 64])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (24, 24, 24, 24, 24),
        convs_per_level: int = 2,
        norm: str = "instance",
        act: str = "leakyrelu",
        phi_range: Sequence[float] = DEFAULT_PHI_RANGE,
        phi: float | None = None,
        hidden: Sequence[int] = (16, 64, 128),
        scale_features: bool = True,
    ):
        super().__init__()
        if norm not in PER_SAMPLE_NORMS:
            raise ConfigError(f"a scale-space hypernetwork needs a norm with per-sample statistics "
                              f"({', '.join(PER_SAMPLE_NORMS)}), got {norm!r}: batch norm's running "
                              "statistics would mix every phi seen in training")
        check_phi_range(phi_range)
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ConfigError(f"hidden must list positive widths, got {list(hidden)}")
        self.phi_range = (float(phi_range[0]), float(phi_range[1]))
        self.phi = forward_phi(self.phi_range, phi)
        if not 0 <= self.phi <= 1.5:
            raise ConfigError(f"phi must be in [0, 1.5], got {phi}")
        self.feature_scale = 1.0 / int(hidden[-1]) if scale_features else 1.0
        self.unet_args = dict(spatial_dims=spatial_dims, in_channels=in_channels,
                              out_channels=out_channels, channels=list(channels),
                              convs_per_level=convs_per_level, norm=norm, act=act,
                              downsampling="resize")
        template = UNet(**self.unet_args)  # its phi is set at every forward
        initial = {k: v.detach().clone() for k, v in template.named_parameters()}
        self.shapes = {k: tuple(v.shape) for k, v in initial.items()}
        self.sizes = [v.numel() for v in initial.values()]
        # The template only supplies the forward code: its tensors live on the
        # meta device and it is kept out of the module tree (not saved, not trained).
        self.__dict__["_primary"] = template.to("meta")

        widths = [2, *map(int, hidden)]
        mlp: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            mlp += [nn.Linear(a, b), nn.LeakyReLU(0.01)]
        self.mlp = nn.Sequential(*mlp)
        self.output = nn.Linear(widths[-1], sum(self.sizes))
        self._init(initial)

    def _init(self, initial: dict[str, torch.Tensor]) -> None:
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, a=0.01, mode="fan_out", nonlinearity="leaky_relu")
                nn.init.zeros_(layer.bias)
        with torch.no_grad():
            self.output.weight.zero_()
            self.output.bias.copy_(torch.cat([v.flatten() for v in initial.values()]))

    def encode(self, phi: float) -> torch.Tensor:
        """``(z, 1 - z)`` with ``z`` = ``phi`` scaled so the training range is [0, 1]."""
        low, high = self.phi_range
        z = (phi - low) / (high - low)
        return self.output.bias.new_tensor([z, 1.0 - z])

    def weights(self, phi: float) -> dict[str, torch.Tensor]:
        """Every parameter of the primary U-Net at ``phi``, by its name."""
        flat = self.output(self.mlp(self.encode(phi)) * self.feature_scale)
        return {name: part.view(shape) for (name, shape), part
                in zip(self.shapes.items(), flat.split(self.sizes))}

    def covers(self, phi: float) -> bool:
        """Whether ``phi`` lies in the training range (outside it the weights are extrapolated)."""
        return self.phi_range[0] <= phi <= self.phi_range[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phi = sample_phi(self.phi_range) if self.training else self.phi
        primary = self._primary
        primary.set_phi(phi)  # phi 0 is fine: resized sides never go below 2
        primary.train(self.training)
        return functional_call(primary, self.weights(phi), (x,))

    def primary_spec(self, phi: float) -> dict:
        """The build spec of the plain U-Net at ``phi`` (see :func:`medslim.models.build_model`)."""
        return {"name": "unet", **self.unet_args, "phi": float(phi)}

    @torch.no_grad()
    def export(self, phi: float) -> UNet:
        """A plain U-Net at ``phi`` holding this hypernetwork's weights for it."""
        from medslim.models import build_model

        unet = build_model(self.primary_spec(phi))
        unet.load_state_dict({k: v.detach().clone() for k, v in self.weights(phi).items()})
        return unet.eval()
