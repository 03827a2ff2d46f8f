"""The J-Net upsampling head and the low-resolution segmenter around it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medslim.errors import ConfigError
from medslim.models import build_model
from medslim.models.jnet import JHead, LowResSegmenter, attach_head

BACKBONE = {"name": "unet", "channels": [4, 8, 16]}


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _lowres(**kw):
    spec = {"name": "lowres", "backbone": BACKBONE, "factor": 8, "spatial_dims": 2, "in_channels": 3,
            "out_channels": 2, **kw}
    return build_model(spec)


def test_single_channel_head_has_the_reference_parameter_count():
    # the reference J-Net (one logit map, factor 8) uses 87 parameters in its head
    assert _params(JHead(classes=1, factor=8)) == 87


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_binary_heads_stay_under_200_parameters_and_grow_linearly_with_classes(factor):
    one = _params(JHead(1, factor))
    assert _params(JHead(2, factor)) == 2 * one < 200
    assert _params(JHead(5, factor)) == 5 * one


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("factor", [2, 4, 8, 16])
def test_outputs_every_scale_largest_first(spatial_dims, factor):
    head = JHead(3, factor, spatial_dims)
    side = 4
    outs = head(torch.randn(2, 3, *[side] * spatial_dims))
    sizes = [o.shape[2] for o in outs]
    assert sizes == [side * factor // 2 ** i for i in range(len(sizes))]
    assert len(sizes) == factor.bit_length() - 1  # log2(factor) outputs
    assert all(o.shape[:2] == (2, 3) and len(set(o.shape[2:])) == 1 for o in outs)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("factor", [2, 4, 8, 16])
def test_head_starts_as_nearest_upsampling(spatial_dims, factor):
    x = torch.randn(1, 3, *[3] * spatial_dims)
    with torch.no_grad():
        out = JHead(3, factor, spatial_dims, init="nearest")(x)[0]
    torch.testing.assert_close(out, F.interpolate(x, scale_factor=factor, mode="nearest"))


def test_default_init_is_not_nearest():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        out = JHead(2, 4, init="default")(x)[0]
    assert not torch.allclose(out, F.interpolate(x, scale_factor=4, mode="nearest"), atol=1e-3)


def test_classes_do_not_mix():
    head = JHead(2, 8, init="default")
    x = torch.randn(1, 2, 8, 8)
    y = x.clone()
    y[:, 1] += 5.0
    with torch.no_grad():
        a, b = head(x)[0], head(y)[0]
    torch.testing.assert_close(a[:, 0], b[:, 0])
    assert not torch.allclose(a[:, 1], b[:, 1])


@pytest.mark.parametrize("factor", [1, 3, 32, "8", 8.0, True])
def test_bad_factor_is_refused(factor):
    with pytest.raises(ConfigError, match="upsampling factor must be 2, 4, 8 or 16"):
        JHead(2, factor)


@pytest.mark.parametrize("kw,message", [
    ({"head": "pixelshuffle"}, "unknown head 'pixelshuffle'"),
    ({"supervise": "some"}, "unknown supervise 'some'"),
    ({"init": "zeros"}, "unknown head init 'zeros'"),
    ({"backbone": {"name": "lowres"}}, "cannot itself be a lowres model"),
    ({"backbone": "unet"}, "model.backbone must be a model spec"),
    ({"backbone": {"name": "unet", "in_channels": 1}}, "model.in_channels=1 does not fit"),
])
def test_bad_options_are_refused(kw, message):
    with pytest.raises(ConfigError, match=message):
        _lowres(**kw)


def test_training_outputs_and_evaluation_output(one_thread):
    net = _lowres()
    x = torch.randn(2, 3, 16, 16)
    outs = net.train()(x)
    assert [o.shape[-1] for o in outs] == [128, 64, 32, 16]
    assert net.eval()(x).shape == (2, 2, 128, 128)
    bilinear = _lowres(head="bilinear")
    assert [o.shape[-1] for o in bilinear.train()(x)] == [128, 16]
    assert _params(bilinear) == _params(bilinear.backbone)
    low = _lowres(head="bilinear", supervise="low")
    assert [o.shape[-1] for o in low.train()(x)] == [16]
    assert low.eval()(x).shape == (2, 2, 128, 128)


def test_gradients_reach_the_backbone_through_the_head(one_thread):
    net = _lowres().train()
    outs = net(torch.randn(2, 3, 16, 16))
    outs[0].sum().backward()
    assert all(p.grad is not None for p in net.backbone.parameters())
    assert all(p.grad is not None for p in net.head.parameters())


@pytest.mark.parametrize("backbone", [
    {"name": "monai.UNet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0},
    {"name": "monai.DynUNet", "kernel_size": [3, 3, 3], "strides": [1, 2, 2], "upsample_kernel_size": [2, 2],
     "deep_supervision": True, "deep_supr_num": 1},
])
def test_monai_backbones(backbone, one_thread):
    net = _lowres(backbone=backbone, factor=4)
    x = torch.randn(2, 3, 16, 16)
    assert [o.shape[-1] for o in net.train()(x)] == [64, 32, 16]
    assert net.eval()(x).shape == (2, 2, 64, 64)


def test_3d_segmenter():
    net = build_model({"name": "lowres", "backbone": BACKBONE, "factor": 2, "spatial_dims": 3,
                       "in_channels": 1, "out_channels": 3})
    assert net.eval()(torch.randn(1, 1, 8, 8, 8)).shape == (1, 3, 16, 16, 16)
    bilinear = build_model({"name": "lowres", "backbone": BACKBONE, "factor": 2, "head": "bilinear",
                            "spatial_dims": 3, "in_channels": 1, "out_channels": 3})
    assert bilinear.eval()(torch.randn(1, 1, 8, 8, 8)).shape == (1, 3, 16, 16, 16)


def test_saved_and_loaded_without_pickle(tmp_path):
    from medslim.artifacts import load, save

    net = _lowres().eval()
    x = torch.randn(1, 3, 16, 16)
    save(net, tmp_path / "m")
    again = load(tmp_path / "m")
    assert isinstance(again, LowResSegmenter)
    torch.testing.assert_close(again(x), net(x))


def test_attach_head_to_a_pruned_network_saves_loads_and_exports(tmp_path, one_thread):
    from medslim.artifacts import load, save
    from medslim.cost import export_onnx
    from medslim.pruning import prune

    base = build_model({**BACKBONE, "spatial_dims": 2, "in_channels": 3, "out_channels": 2}).eval()
    small = prune(base, torch.zeros(1, 3, 16, 16), method="l1", flops_ratio=0.5)
    net = attach_head(small, factor=4).eval()
    x = torch.randn(1, 3, 16, 16)
    out = net(x)
    assert out.shape == (1, 2, 64, 64)
    save(net, tmp_path / "m")
    again = load(tmp_path / "m")
    assert _params(again) == _params(net) == _params(small) + _params(net.head)
    assert _params(small) < _params(base) and _params(net.head) == 134  # factor 4, two classes
    torch.testing.assert_close(again(x), out)
    report = export_onnx(again, x, tmp_path / "m.onnx")  # checked against PyTorch
    assert report["max_abs_diff"] < 1e-4


def test_attach_head_to_an_sshn_style_unet():
    # an SSHN export is a plain U-Net resizing by phi
    unet = build_model({"name": "unet", "channels": [4, 4, 4], "downsampling": "resize", "phi": 0.3,
                        "spatial_dims": 2, "in_channels": 3, "out_channels": 2})
    net = attach_head(unet, factor=8, head="bilinear").eval()
    assert net.backbone is unet
    assert net(torch.randn(1, 3, 20, 20)).shape == (1, 2, 160, 160)


def test_attach_head_needs_a_medslim_model():
    with pytest.raises(ConfigError, match="attach_head needs a model built by medslim"):
        attach_head(torch.nn.Conv2d(3, 2, 1), factor=2)


def test_pruning_a_lowres_model_shrinks_the_backbone_and_keeps_the_head(tmp_path, one_thread):
    from medslim.artifacts import load, save
    from medslim.pruning import prune

    net = _lowres().eval()
    x = torch.zeros(1, 3, 16, 16)
    small = prune(net, x, method="l1", flops_ratio=0.8)
    assert _params(small.backbone) < _params(net.backbone)
    assert _params(small.head) == _params(net.head) == 174
    save(small, tmp_path / "m")
    torch.testing.assert_close(load(tmp_path / "m")(x), small(x))
