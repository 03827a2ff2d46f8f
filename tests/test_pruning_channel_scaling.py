"""Channel scaling: which channels get a scale, exact folding, exact removal, rounds and targets."""

import pytest
import torch
from torch import nn

from medslim.cost import count_params
from medslim.errors import ConfigError
from medslim.models import build_model
from medslim.pruning import DependencyGraph, PruningError, channel_scaling, prune
from medslim.pruning.channel_scaling import SCALES_ATTR, ChannelScales, ScaleTraining, _fold, gated_groups

VGG = {"name": "vgg16_bn", "in_channels": 1, "num_classes": 2, "width": 0.125, "hidden": 0}
NETS = {
    "vgg": (VGG, (1, 1, 32, 32)),
    "vgg-mlp-head": ({**VGG, "hidden": 16}, (1, 1, 32, 32)),
    "resnet": ({"name": "monai.ResNet", "block": "basic", "layers": [1, 1, 1, 1],
                "block_inplanes": [8, 8, 16, 16], "spatial_dims": 2, "n_input_channels": 1,
                "num_classes": 2}, (1, 1, 32, 32)),
    "densenet-3d": ({"name": "monai.DenseNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                     "init_features": 8, "growth_rate": 4, "block_config": [2, 2]}, (1, 1, 16, 16, 16)),
}


def _net(key, seed=0):
    torch.manual_seed(seed)
    spec, shape = NETS[key]
    net = build_model(spec).eval()
    with torch.no_grad():  # non-trivial statistics, so folding into them is tested
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net, torch.zeros(shape)


def _gates(net, x):
    from medslim.pretrained import classifier_head

    return gated_groups(net, DependencyGraph(net, x), classifier_head(net))


@pytest.mark.parametrize("key, gated, skipped", [("vgg", 13, 0), ("vgg-mlp-head", 13, 0),
                                                 ("resnet", 4, 4), ("densenet-3d", 6, 4)])
def test_gated_groups(key, gated, skipped):
    net, x = _net(key)
    gates, why = _gates(net, x)
    assert (len(gates), len(why)) == (gated, skipped)
    assert all(not g.producers[0].module.startswith("classifier") for g, _ in gates)  # MLP head not scaled
    if key == "resnet":
        assert any("residual sum" in w for w in why)


@pytest.mark.parametrize("key", list(NETS))
def test_scales_fold_exactly_into_the_weights(key):
    net, x = _net(key)
    gates, _ = _gates(net, x)
    scales = ChannelScales([g.size for g, _ in gates])
    with torch.no_grad():
        for s in scales.scales:
            s.uniform_(-1.5, 1.5)  # the forward uses |s|, so negative values fold too
    hook = ScaleTraining(gates, scales, lam=1e-3)
    hook.begin(net)
    image = torch.randn(3, *x.shape[1:])
    with torch.no_grad():
        scaled = net(image)
    hook.close()
    with torch.no_grad():
        assert not torch.allclose(net(image), scaled, atol=1e-4)  # the hooks did scale
    _fold(net, gates, [s.detach().abs() for s in scales.scales])
    with torch.no_grad():
        assert torch.allclose(net(image), scaled, atol=1e-5)
    assert torch.allclose(hook.extra_loss(), 1e-3 * sum(s.abs().sum() for s in scales.scales))


def _setting(zero_fraction, seed=0):
    """A stand-in for training: scales of some channels end at exactly 0, the rest in [0.5, 1.5]."""
    gen = torch.Generator().manual_seed(seed)
    seen = {}

    def train(net, hook, r):
        assert SCALES_ATTR in net._modules
        trainable = {n for n, p in net.named_parameters() if p.requires_grad}
        assert trainable and all(n.startswith(("classifier", "fc", SCALES_ATTR)) for n in trainable)
        with torch.no_grad():
            for s in hook.scales.scales:
                s.uniform_(0.5, 1.5, generator=gen)
                s[torch.rand(s.numel(), generator=gen) < zero_fraction] = 0
        hook.begin(net)
        with torch.no_grad():
            seen[r] = net(seen["image"])
        hook.close()

    seen["image"] = torch.randn(2, 1, 32, 32, generator=gen)
    return train, seen


@pytest.mark.parametrize("key", ["vgg", "resnet"])
def test_removing_zero_scaled_channels_leaves_the_output_unchanged(key):
    net, x = _net(key)
    train, seen = _setting(0.3)
    small = channel_scaling(net, x, train, rounds=1, settle=False, threshold=0.01)
    report = small.medslim_pruning
    assert report.rounds[0]["removed"] > 0 and count_params(small) < count_params(net)
    with torch.no_grad():
        assert torch.allclose(small.eval()(seen["image"]), seen[1], atol=1e-5)
    assert SCALES_ATTR not in small._modules and SCALES_ATTR not in net._modules
    assert all(p.requires_grad for p in small.parameters())  # the caller's flags are back
    assert count_params(net) == report.params_before  # the original is untouched


def test_rounds_stop_at_the_parameter_target_then_settle():
    net, x = _net("vgg")
    train, _ = _setting(0.5)
    small = channel_scaling(net, x, train, rounds=10, params_ratio=0.3, threshold=0.01)
    rounds = small.medslim_pruning.rounds
    assert small.medslim_pruning.params_ratio <= 0.3
    assert rounds[-1]["selecting"] is False and rounds[-1]["removed"] == 0  # the settle round
    assert all(r["removed"] > 0 for r in rounds[:-1]) and len(rounds) < 11
    # the last selecting round stops just under the target rather than removing every
    # zero-scaled channel (about half of them here, which would leave far fewer parameters)
    before = small.medslim_pruning.params_before
    assert 0.29 * before < rounds[-2]["params"] <= 0.3 * before
    assert small.medslim_pruning.to_dict()["rounds"] == rounds


def test_rounds_stop_when_nothing_falls_under_the_threshold():
    net, x = _net("vgg")
    train, _ = _setting(0.0)
    small = channel_scaling(net, x, train, rounds=5)
    assert [r["removed"] for r in small.medslim_pruning.rounds] == [0]
    assert count_params(small) == count_params(net)


def test_every_group_keeps_a_channel():
    net, x = _net("vgg")
    train, _ = _setting(1.0)  # every scale at zero
    small = channel_scaling(net, x, train, rounds=2, settle=False)
    assert all(m.out_channels >= 1 for m in small.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        assert small(torch.randn(1, 1, 32, 32)).shape == (1, 2)


@pytest.mark.parametrize("option, value", [("lam", -1.0), ("threshold", 0.0), ("threshold", 1.5),
                                           ("rounds", 0), ("params_ratio", 0.0), ("params_ratio", 2.0)])
def test_options_out_of_range(option, value):
    net, x = _net("vgg")
    with pytest.raises(ConfigError, match=f"channel_scaling option {option}"):
        channel_scaling(net, x, lambda *a: None, **{option: value})


def test_a_network_without_gateable_groups_is_refused():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sigmoid(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    with pytest.raises(PruningError, match="no channel group it can scale"):
        channel_scaling(net, torch.zeros(1, 1, 8, 8), lambda *a: None)


def test_prune_points_to_the_training_api():
    net, x = _net("vgg")
    with pytest.raises(ConfigError, match="trains while it prunes"):
        prune(net, x, method="channel_scaling", params_ratio=0.5)
