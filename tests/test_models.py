import pytest
import torch

from medslim.errors import ConfigError
from medslim.models import build_model, model_names, model_spec
from medslim.models.unet import UNet
from medslim.models.vgg import VGGClassifier


@pytest.mark.parametrize("downsampling", ["maxpool", "conv", "resize"])
@pytest.mark.parametrize("dims,shape", [(2, (2, 3, 48, 64)), (3, (1, 1, 24, 32, 16))])
@pytest.mark.parametrize("norm", ["instance", "batch", "group", "none"])
def test_unet_output_shape_and_backward(dims, shape, downsampling, norm):
    net = UNet(spatial_dims=dims, in_channels=shape[1], out_channels=3, channels=(8, 16, 32),
               norm=norm, downsampling=downsampling)
    out = net(torch.randn(*shape))
    assert out.shape == (shape[0], 3, *shape[2:])
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_unet_odd_sizes_are_handled():
    net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16, 32))
    assert net(torch.randn(1, 1, 35, 50)).shape == (1, 2, 35, 50)


def test_unet_deep_supervision_only_in_training():
    net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16, 32), deep_supervision=True)
    outs = net(torch.randn(1, 1, 32, 32))
    assert [o.shape[-1] for o in outs] == [32, 16, 8]
    net.eval()
    assert net(torch.randn(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_unet_without_deep_supervision_has_no_idle_heads():
    with_ds = UNet(channels=(4, 8, 16), deep_supervision=True)
    without = UNet(channels=(4, 8, 16))
    assert len(with_ds.heads) == 2 and len(without.heads) == 1


def test_resize_downsampling_follows_phi():
    net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), downsampling="resize", phi=0.3)
    seen = []
    net.down[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[-2:]))
    net(torch.randn(1, 1, 40, 50))
    assert tuple(seen[0]) == (12, 15)  # ceil(0.3 * 40), ceil(0.3 * 50)


def test_unet_rejects_bad_options():
    with pytest.raises(ConfigError, match="downsampling"):
        UNet(downsampling="stride")
    with pytest.raises(ConfigError, match="norm"):
        UNet(norm="layer")
    with pytest.raises(ConfigError, match="channels"):
        UNet(channels=(8,))


def test_vgg_small_inputs_and_3d():
    assert VGGClassifier(in_channels=1, num_classes=2, width=0.125)(torch.randn(2, 1, 28, 28)).shape == (2, 2)
    net3 = VGGClassifier(spatial_dims=3, in_channels=1, num_classes=3, width=0.0625, config=(64, "M", 128, "M"))
    assert net3(torch.randn(2, 1, 16, 16, 16)).shape == (2, 3)


def test_vgg_feature_names_follow_torchvision():
    net = VGGClassifier(in_channels=3, num_classes=10)
    names = [n for n, _ in net.features.named_children()]
    # torchvision vgg16_bn: conv at 0, bn at 1, relu at 2, ..., last pool at 43
    assert isinstance(net.features[0], torch.nn.Conv2d) and isinstance(net.features[1], torch.nn.BatchNorm2d)
    assert len(names) == 44 and isinstance(net.features[43], torch.nn.MaxPool2d)


def test_build_model_records_spec_and_refuses_unknowns():
    net = build_model({"name": "unet", "channels": [4, 8], "in_channels": 3})
    assert model_spec(net) == {"name": "unet", "channels": [4, 8], "in_channels": 3}
    with pytest.raises(ConfigError, match="unknown model 'resnet9000'"):
        build_model({"name": "resnet9000"})
    with pytest.raises(ConfigError, match="no option 'chanels'"):
        build_model({"name": "unet", "chanels": [4, 8]})
    with pytest.raises(ConfigError, match="monai.Nope"):
        build_model({"name": "monai.Nope"})
    assert "monai.BasicUNet" in model_names()


@pytest.mark.parametrize("spec,shape", [
    ({"name": "monai.UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
      "channels": [4, 8, 16], "strides": [2, 2]}, (1, 1, 32, 32)),
    ({"name": "monai.BasicUNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
      "features": [4, 4, 8, 8, 16, 4]}, (1, 1, 32, 32, 32)),
    ({"name": "monai.DenseNet121", "spatial_dims": 2, "in_channels": 1, "out_channels": 2}, (2, 1, 32, 32)),
])
def test_monai_networks_by_name(spec, shape):
    net = build_model(spec).eval()
    assert net(torch.randn(*shape)).shape[1] == 2


def test_monai_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="monai.UNet"):
        build_model({"name": "monai.UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                     "channels": [4, 8, 16], "strides": [2]})


def test_stochastic_unet_draws_phi_in_training_and_uses_phi_in_evaluation():
    from medslim.models.unet import UNet

    net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 4, 4), downsampling="resize",
               phi=0.3, phi_range=(0.0, 0.5))
    torch.manual_seed(0)
    net.train()(torch.zeros(1, 1, 32, 32))
    drawn = net.down[0].phi
    assert drawn != 0.3 and 0 <= drawn <= 0.5
    net.eval()(torch.zeros(1, 1, 32, 32))
    assert net.down[0].phi == 0.3
    with pytest.raises(ConfigError, match="needs downsampling='resize'"):
        UNet(channels=(4, 4), phi_range=(0.0, 0.5))


def test_resize_never_shrinks_a_side_below_two():
    from medslim.models.unet import Resize

    assert Resize(0.01)(torch.zeros(1, 2, 64, 9)).shape[2:] == (2, 2)
    assert Resize(0.3)(torch.zeros(1, 2, 64, 9)).shape[2:] == (20, 3)
