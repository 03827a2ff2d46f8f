import pytest
import torch

from medslim.artifacts import load, save
from medslim.errors import ConfigError
from medslim.models import build_model
from medslim.models.sshn import ScaleSpaceHyperNet
from medslim.models.unet import UNet

SPEC = {"name": "sshn", "spatial_dims": 2, "in_channels": 3, "out_channels": 2, "channels": [4, 4, 4],
        "hidden": [8, 16]}


def _trained(net: ScaleSpaceHyperNet, steps: int = 3) -> ScaleSpaceHyperNet:
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    x, y = torch.randn(2, 3, 24, 24), torch.randint(0, 2, (2, 24, 24))
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def test_starts_as_one_well_initialised_unet_for_every_phi():
    torch.manual_seed(0)
    net = build_model(SPEC)
    a, b = net.weights(0.05), net.weights(0.45)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the same initialisation a plain U-Net gets: same seed, same first conv
    torch.manual_seed(0)
    plain = UNet(**net.unet_args, phi=0.25)
    assert torch.equal(a["encoder.0.0.weight"], plain.encoder[0][0].weight)


def test_training_makes_the_weights_depend_on_phi_and_export_matches():
    torch.manual_seed(0)
    net = _trained(build_model(SPEC))
    low, high = net.weights(0.1), net.weights(0.4)
    assert not torch.allclose(low["encoder.0.0.weight"], high["encoder.0.0.weight"])
    x = torch.randn(1, 3, 24, 24)
    for phi in (0.1, 0.33, 0.7):
        unet = net.export(phi)
        assert type(unet) is UNet and unet.phi == phi
        net.phi = phi
        with torch.no_grad():
            assert torch.allclose(unet(x), net(x), atol=1e-6)


def test_3d_and_parameters_live_only_in_the_hypernetwork():
    net = ScaleSpaceHyperNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 4, 4), hidden=(8,))
    primary = sum(torch.Size(s).numel() for s in net.shapes.values())
    assert sum(p.numel() for p in net.parameters()) == (2 * 8 + 8) + (8 * primary + primary)
    assert set(net.state_dict()) == {"mlp.0.weight", "mlp.0.bias", "output.weight", "output.bias"}
    assert net.export(0.3)(torch.zeros(1, 1, 12, 16, 12)).shape == (1, 3, 12, 16, 12)


def test_each_training_step_draws_phi_from_the_seeded_generator(monkeypatch):
    net = build_model(SPEC).train()
    seen = []
    original = net._primary.set_phi
    monkeypatch.setattr(net._primary, "set_phi", lambda phi: (seen.append(phi), original(phi)))
    torch.manual_seed(3)
    net(torch.zeros(1, 3, 16, 16))
    net(torch.zeros(1, 3, 16, 16))
    torch.manual_seed(3)
    net(torch.zeros(1, 3, 16, 16))
    assert seen[0] != seen[1] and seen[0] == seen[2] and all(0 <= p <= 0.5 for p in seen)
    net.eval()(torch.zeros(1, 3, 16, 16))
    assert seen[-1] == pytest.approx(0.25)


def test_save_and_load_rebuild_the_same_hypernetwork(tmp_path):
    torch.manual_seed(1)
    net = _trained(build_model(SPEC), steps=1)
    save(net, tmp_path / "m")
    again = load(tmp_path / "m")
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(again(x), net(x))


@pytest.mark.parametrize("change,message", [
    ({"norm": "batch"}, "per-sample statistics"),
    ({"phi_range": [0.5, 0.1]}, "phi_range must be"),
    ({"hidden": []}, "hidden must list"),
])
def test_bad_options_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        build_model({**SPEC, **change})


@pytest.mark.parametrize("scale", [True, False])
def test_first_adam_step_size_of_a_predicted_weight(scale):
    # Adam's first step moves every parameter by exactly lr, so a predicted
    # weight (bias + W . h) moves lr * (1 + sum|h| / divisor)
    torch.manual_seed(0)
    net = build_model({**SPEC, "scale_features": scale})
    h = net.mlp(net.encode(0.3)).detach()
    before = net.weights(0.3)["encoder.0.0.weight"].detach().clone()
    _trained(net, steps=1)
    moved = (net.weights(0.3)["encoder.0.0.weight"] - before).abs().max().item()
    divisor = h.numel() if scale else 1
    assert moved == pytest.approx(1e-2 * (1 + h.abs().sum().item() / divisor), rel=1e-3)
