"""resize_to_state: rebuilding a narrower network from its spec and its weights."""

import pytest
import torch
from torch import nn

from medslim.errors import ArtifactError
from medslim.models import build_model
from medslim.models.reshape import resize_to_state, set_module_tensors


class Layers(nn.Module):
    """One of every resizable layer kind, 2D and 3D, chained so widths must agree."""

    def __init__(self, w: int = 8, dims: int = 2):
        super().__init__()
        conv = getattr(nn, f"Conv{dims}d")
        convt = getattr(nn, f"ConvTranspose{dims}d")
        self.conv = conv(2, w, 3, padding=1)
        self.bn = getattr(nn, f"BatchNorm{dims}d")(w)
        self.dw = conv(w, w, 3, padding=1, groups=w)
        self.inorm = getattr(nn, f"InstanceNorm{dims}d")(w, affine=True)
        self.prelu = nn.PReLU(w)
        self.grouped = conv(w, w, 1, groups=2)
        self.up = convt(w, w, 2, stride=2)
        self.dwt = convt(w, w, 1, groups=w)
        self.gn = nn.GroupNorm(2, w)
        self.head = nn.Linear(w, 3)

    def forward(self, x):
        x = self.prelu(self.inorm(self.dw(self.bn(self.conv(x)))))
        x = self.gn(self.dwt(self.up(self.grouped(x))))
        return self.head(x.mean(dim=tuple(range(2, x.dim()))))


@pytest.mark.parametrize("dims", [2, 3])
def test_every_layer_kind_takes_the_saved_widths(dims):
    small, big = Layers(4, dims), Layers(8, dims)
    resized = resize_to_state(big, small.state_dict())
    assert "conv" in resized and "head" in resized
    big.load_state_dict(small.state_dict())
    assert (big.conv.out_channels, big.dw.groups, big.dw.in_channels) == (4, 4, 4)
    assert (big.grouped.groups, big.grouped.in_channels, big.up.out_channels) == (2, 4, 4)
    assert (big.dwt.groups, big.bn.num_features, big.inorm.num_features) == (4, 4, 4)
    assert (big.prelu.num_parameters, big.gn.num_channels, big.head.in_features) == (4, 4, 4)
    x = torch.randn(1, 2, *([4] * dims))
    small.eval(), big.eval()
    assert torch.equal(small(x), big(x))
    assert f"Conv{dims}d(2, 4" in repr(big.conv) and "groups=4" in repr(big.dw)


def test_parameters_stay_trainable_and_are_new_objects():
    small, big = Layers(4), Layers(8)
    old = big.conv.weight
    resize_to_state(big, small.state_dict())
    assert big.conv.weight is not old and big.conv.weight.requires_grad
    assert isinstance(big.conv.weight, nn.Parameter)
    assert big.conv.weight in set(big.parameters())


def test_a_unet_rebuilt_from_spec_matches_a_narrower_one():
    spec = {"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
            "channels": [8, 16], "norm": "batch"}
    narrow = build_model({**spec, "channels": [4, 6]}).eval()
    wide = build_model(spec)
    resize_to_state(wide, narrow.state_dict())
    wide.load_state_dict(narrow.state_dict())
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(narrow(x), wide.eval()(x))


def test_widths_of_layers_without_tensors_come_from_the_caller():
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.InstanceNorm2d(8), nn.Conv2d(8, 2, 1))
    small = nn.Sequential(nn.Conv2d(1, 4, 3), nn.InstanceNorm2d(4), nn.Conv2d(4, 2, 1))
    resize_to_state(net, small.state_dict(), widths={"1": 4})
    assert net[1].num_features == 4


def test_a_different_network_names_the_tensor():
    unet = build_model({"name": "unet", "spatial_dims": 2, "in_channels": 1,
                        "out_channels": 2, "channels": [4, 8]})
    other = build_model({"name": "unet", "spatial_dims": 3, "in_channels": 1,
                         "out_channels": 2, "channels": [4, 8]})
    with pytest.raises(ArtifactError, match=r"encoder\.0\.0\.weight.*another kernel or dimension"):
        resize_to_state(unet, other.state_dict())
    vgg = build_model({"name": "vgg16_bn", "in_channels": 1, "num_classes": 2, "width": 0.125})
    with pytest.raises(ArtifactError, match="lack tensor 'encoder.0.0.weight'"):
        resize_to_state(unet, vgg.state_dict())
    extra = dict(unet.state_dict(), **{"extra.weight": torch.zeros(1)})
    with pytest.raises(ArtifactError, match="'extra.weight' that the model does not have"):
        resize_to_state(unet, extra)


def test_inconsistent_or_unresizable_shapes_are_refused_before_any_change():
    net = Layers(8)
    state = net.state_dict()
    state["bn.running_mean"] = torch.zeros(5)
    with pytest.raises(ArtifactError, match="disagree on the number of channels.*running_mean 5"):
        resize_to_state(Layers(8), state)
    state = Layers(8).state_dict()
    state["grouped.weight"] = torch.zeros(3, 4, 1, 1)  # 3 outputs cannot form 2 groups
    with pytest.raises(ArtifactError, match="grouped.weight.*groups=2"):
        resize_to_state(Layers(8), state)
    scaled = nn.Sequential(nn.Conv2d(1, 4, 3))
    scaled.register_buffer("scale", torch.ones(4))
    state = dict(scaled.state_dict(), scale=torch.ones(2))
    with pytest.raises(ArtifactError, match=r"tensor 'scale'.*Sequential\) cannot change width"):
        resize_to_state(scaled, state)
    gn = nn.GroupNorm(4, 8)
    with pytest.raises(ArtifactError, match="not divisible by its 4 groups"):
        set_module_tensors(gn, {"weight": torch.ones(6), "bias": torch.ones(6)})
    assert gn.num_channels == 8 and gn.weight.shape == (8,)
