"""Physical pruning: equivalence with masks, optimizer state, rules, and network coverage."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from medslim.artifacts import load, save
from medslim.cost import count_flops, export_onnx
from medslim.models import build_model
from medslim.models.unet import UNet
from medslim.pruning import DependencyGraph, PruningError, mask_channels, prune, prune_channels


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- helpers


def randomize(net: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial norm statistics and affine parameters, so masks are really tested."""
    with torch.no_grad():
        for m in net.modules():
            for name in ("running_mean", "weight", "bias"):
                t = getattr(m, name, None)
                if isinstance(m, (nn.modules.batchnorm._NormBase, nn.PReLU)) and t is not None:
                    t.copy_(torch.rand(t.shape, generator=gen) - 0.5)
            if getattr(m, "running_var", None) is not None:
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def random_keep(graph: DependencyGraph, gen: torch.Generator) -> dict:
    keep = {}
    for group in graph.prunable_groups():
        d = group.divisor
        widths = list(range(d, group.size, d))
        if not widths or torch.rand(1, generator=gen).item() < 0.2:
            continue
        k = widths[torch.randint(len(widths), (1,), generator=gen).item()]
        keep[group.id] = torch.randperm(group.size, generator=gen)[:k].sort().values
    return keep


def drop_of(graph: DependencyGraph, keep: dict) -> dict:
    out = {}
    for gid, idx in keep.items():
        mask = torch.ones(graph.group(gid).size, dtype=torch.bool)
        mask[idx] = False
        out[gid] = mask.nonzero().flatten()
    return out


def first_half(graph: DependencyGraph) -> dict:
    keep = {}
    for g in graph.prunable_groups():
        k = max(g.divisor, (g.size // 2) // g.divisor * g.divisor)
        keep[g.id] = torch.arange(k)
    return keep


def assert_pruned_equals_masked(net: nn.Module, x: torch.Tensor, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    randomize(net, gen)
    net.eval()
    graph = DependencyGraph(net, x)
    keep = random_keep(graph, gen)
    with torch.no_grad(), mask_channels(net, graph, drop_of(graph, keep)):
        masked = net(x)
    before = sum(p.numel() for p in net.parameters())
    prune_channels(net, graph, keep)
    with torch.no_grad():
        pruned = net(x)
    assert pruned.shape == masked.shape
    assert (pruned - masked).abs().max().item() <= 1e-5
    if keep:
        assert sum(p.numel() for p in net.parameters()) < before


class ResCatNet(nn.Module):
    """PReLU(1), in-place LeakyReLU after InstanceNorm, cat in any order, depthwise conv,
    residual add, norms without affine or stats, flatten -> Linear head."""

    def __init__(self, dims: int, widths: list[int], order: list[int]):
        super().__init__()
        conv = getattr(nn, f"Conv{dims}d")
        bn, inorm = getattr(nn, f"BatchNorm{dims}d"), getattr(nn, f"InstanceNorm{dims}d")
        w0, w1, w2, w3 = widths
        total = w0 + w1 + w2
        self.stem = nn.Sequential(conv(1, w0, 3, padding=1), inorm(w0, affine=True),
                                  nn.LeakyReLU(0.1, inplace=True))
        self.a = nn.Sequential(conv(w0, w1, 3, padding=1), bn(w1), nn.PReLU())
        self.b = nn.Sequential(conv(w0, w2, 3, padding=1), bn(w2, affine=False), nn.PReLU(w2))
        self.dw = nn.Sequential(conv(total, total, 3, padding=1, groups=total), bn(total),
                                nn.ReLU(inplace=True))
        self.r = conv(total, w3, 1)
        self.s = nn.Sequential(conv(w3, w3, 3, padding=1), inorm(w3), nn.LeakyReLU(inplace=True))
        self.pool = getattr(nn, f"AdaptiveAvgPool{dims}d")(2)
        self.head = nn.Sequential(nn.Linear(w3 * 2 ** dims, 6), nn.ReLU(), nn.Linear(6, 3))
        self.order = order

    def forward(self, x):
        s = self.stem(x)
        parts = [s, self.a(s), self.b(s)]
        y = self.dw(torch.cat([parts[i] for i in self.order], dim=1))
        r = self.r(y)
        y = r + self.s(r)
        return self.head(torch.flatten(self.pool(y), 1))


# ----------------------------------------------------------------------------- equivalence

PROPERTY = settings(deadline=None, max_examples=25, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

unet_specs = st.fixed_dictionaries({
    "spatial_dims": st.sampled_from([2, 3]),
    "channels": st.lists(st.integers(2, 8), min_size=2, max_size=3),
    "convs_per_level": st.integers(1, 2),
    "norm": st.sampled_from(["batch", "instance"]),
    "act": st.sampled_from(["leakyrelu", "prelu", "relu"]),
    "downsampling": st.sampled_from(["maxpool", "conv", "resize"]),
})


@PROPERTY
@given(spec=unet_specs, odd=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_pruned_unet_computes_what_the_masked_original_computes(spec, odd, seed):
    torch.manual_seed(seed)
    net = UNet(in_channels=1, out_channels=2, **spec)
    side = 16 if spec["spatial_dims"] == 3 or not odd else 15
    assert_pruned_equals_masked(net, torch.randn(1, 1, *[side] * spec["spatial_dims"]), seed)


@PROPERTY
@given(dims=st.sampled_from([2, 3]), widths=st.lists(st.integers(2, 6), min_size=4, max_size=4),
       order=st.permutations([0, 1, 2]), seed=st.integers(0, 2 ** 16))
def test_pruned_residual_concat_net_computes_what_the_masked_original_computes(
        dims, widths, order, seed):
    torch.manual_seed(seed)
    net = ResCatNet(dims, widths, order)
    assert_pruned_equals_masked(net, torch.randn(2, 1, *[16 if dims == 2 else 8] * dims), seed)


def test_removing_a_mask_restores_the_model_and_masks_block_tracing():
    net = UNet(2, 1, 2, channels=(4, 8)).eval()
    x = torch.randn(1, 1, 16, 16)
    graph = DependencyGraph(net, x)
    ref = net(x)
    handle = mask_channels(net, graph, {graph.prunable_groups()[0].id: [0, 1]})
    assert not torch.equal(net(x), ref)
    with pytest.raises(PruningError, match="channel masks applied"):
        graph.rebuild()
    handle.remove()
    handle.remove()  # twice is harmless
    assert torch.equal(net(x), ref)
    graph.rebuild()


# ----------------------------------------------------------------------------- rules


def test_group_norm_widths_stay_divisible_after_pruning():
    net = UNet(2, 1, 2, channels=(16, 32), norm="group").eval()
    x = torch.randn(1, 1, 16, 16)
    graph = DependencyGraph(net, x)
    group = next(g for g in graph.prunable_groups() if g.norms)
    assert group.divisor == 8
    with pytest.raises(PruningError, match=rf"group {group.id} .*keeping 12 channels breaks "
                                           r"its divisor 8"):
        prune_channels(net, graph, {group.id: torch.arange(12)})
    prune_channels(net, graph, first_half(graph))
    for m in net.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0 and m.weight.shape == (m.num_channels,)
    assert net(x).shape == (1, 2, 16, 16)


def test_invalid_keep_indices_name_the_group_and_module():
    net = UNet(2, 1, 2, channels=(4, 8)).eval()
    graph = DependencyGraph(net, torch.randn(1, 1, 16, 16))
    g = next(g for g in graph.groups if g.producers and g.producers[0].module == "encoder.0.0")
    label = rf"group {g.id} \(4 channels, e.g. 'encoder.0.0'\)"
    bad = [([1, 0], "sorted and unique"), ([0, 0], "sorted and unique"),
           ([0, 4], r"in 0..3, got 0..4"), ([-1], "in 0..3"), ([], "every channel"),
           (torch.tensor([0.0, 1.0]), "integer indices"), ([[0, 1]], "1-D")]
    for keep, message in bad:
        with pytest.raises(PruningError, match=f"{label}.*{message}"):
            prune_channels(net, graph, {g.id: keep})
    head = next(g for g in graph.groups if not g.prunable and g.producers)
    with pytest.raises(PruningError, match=rf"group {head.id} .*'heads.0'.*not prunable: "
                                           r"reaches the model output"):
        prune_channels(net, graph, {head.id: [0]})
    with pytest.raises(PruningError, match="no channel group 99"):
        prune_channels(net, graph, {99: [0]})
    with pytest.raises(PruningError, match="another model"):
        prune_channels(UNet(2, 1, 2, channels=(4, 8)), graph, {g.id: [0]})
    assert net.encoder[0][0].out_channels == 4  # nothing changed


def test_stale_graph_is_refused_until_rebuilt_then_pruning_goes_on():
    net = UNet(2, 1, 2, channels=(8, 8)).eval()
    x = torch.randn(1, 1, 16, 16)
    graph = DependencyGraph(net, x)
    prune_channels(net, graph, first_half(graph))
    with pytest.raises(PruningError, match="stale.*rebuild"):
        prune_channels(net, graph, {})
    graph.rebuild()
    assert all(g.size in (1, 2, 4) for g in graph.groups)
    prune_channels(net, graph, first_half(graph))
    assert net.encoder[0][0].out_channels == 2 and net(x).shape == (1, 2, 16, 16)


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True),
    lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9),
], ids=["adam", "sgd"])
def test_optimizer_state_is_sliced_and_training_goes_on(make):
    torch.manual_seed(0)
    net = UNet(2, 1, 2, channels=(4, 8), norm="batch")
    opt = make(net.parameters())
    x, y = torch.randn(2, 1, 16, 16), torch.randint(0, 2, (2, 16, 16))
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    old_w = net.encoder[0][0].weight
    old_state = {k: v.clone() for k, v in opt.state[old_w].items() if torch.is_tensor(v)}
    graph = DependencyGraph(net, x)
    keep = first_half(graph)
    gid = next(g.id for g in graph.groups if g.producers and g.producers[0].module == "encoder.0.0")
    prune_channels(net, graph, keep, optimizer=opt)
    new_w = net.encoder[0][0].weight
    assert old_w not in opt.state and new_w.shape == (2, 1, 3, 3)
    for key, value in opt.state[new_w].items():
        if torch.is_tensor(value) and value.dim() == 4:
            assert torch.equal(value, old_state[key][keep[gid]])
    in_optimizer = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in net.parameters()}
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()


# ----------------------------------------------------------------------------- coverage


def _unet(dims, **kw):
    return {"name": "unet", "spatial_dims": dims, "in_channels": 1, "out_channels": 2,
            "channels": [4, 8, 16], **kw}


def _monai(name, dims, **kw):
    return {"name": f"monai.{name}", "spatial_dims": dims, **kw}


io = {"in_channels": 1, "out_channels": 2}
COVERAGE = {
    "unet-2d-instance": (_unet(2), 16),
    "unet-2d-batch-conv": (_unet(2, norm="batch", downsampling="conv"), 16),
    "unet-2d-group-resize": (_unet(2, norm="group", channels=[16, 32], downsampling="resize"), 16),
    "unet-2d-deep-supervision": (_unet(2, deep_supervision=True), 16),
    "unet-3d-instance": (_unet(3), 16),
    "unet-3d-batch": (_unet(3, norm="batch"), 16),
    "unet-3d-group": (_unet(3, norm="group", channels=[16, 32]), 16),
}
for d in (2, 3):
    COVERAGE.update({
        f"monai-unet-res0-{d}d": (_monai("UNet", d, **io, channels=[4, 8, 16], strides=[2, 2],
                                         num_res_units=0), 16),
        f"monai-unet-res2-{d}d": (_monai("UNet", d, **io, channels=[4, 8, 16], strides=[2, 2],
                                         num_res_units=2), 16),
        f"basicunet-{d}d": (_monai("BasicUNet", d, **io, features=[4, 4, 8, 8, 16, 4]), 32),
        f"dynunet-ds-{d}d": (_monai("DynUNet", d, **io, kernel_size=[3, 3, 3], strides=[1, 2, 2],
                                    upsample_kernel_size=[2, 2], filters=[4, 8, 16],
                                    deep_supervision=True, deep_supr_num=1), 16),
        f"attentionunet-{d}d": (_monai("AttentionUnet", d, **io, channels=[4, 8, 16],
                                       strides=[2, 2]), 16),
        f"segresnet-{d}d": (_monai("SegResNet", d, **io, init_filters=4,
                                   norm=["group", {"num_groups": 2}]), 16),
        f"densenet121-{d}d": (_monai("DenseNet121", d, **io, init_features=4, growth_rate=2,
                                     bn_size=2), 32),
        f"resnet18-{d}d": (_monai("resnet18", d, n_input_channels=1, num_classes=2,
                                  widen_factor=0.125), 16),
        f"vgg16_bn-{d}d": ({"name": "vgg16_bn", "spatial_dims": d, "in_channels": 1,
                            "num_classes": 2, "width": 0.125, "hidden": 8}, 16),
    })


def _shapes(out) -> list:
    return [t.shape for t in out] if isinstance(out, (list, tuple)) else [out.shape]


def _total(out) -> torch.Tensor:
    return sum(t.sum() for t in out) if isinstance(out, (list, tuple)) else out.sum()


@pytest.mark.parametrize("name", list(COVERAGE))
def test_network_prunes_to_half_the_flops_runs_trains_reloads_and_exports(name, tmp_path):
    spec, side = COVERAGE[name]
    torch.manual_seed(0)
    net = build_model(spec).eval()
    x = torch.randn(1, 1, *[side] * spec["spatial_dims"])
    with torch.no_grad():
        shape = net(x).shape
        train_shapes = _shapes(net.train()(torch.cat([x, x])))  # deep-supervision heads
    before = sum(p.numel() for p in net.parameters())
    flops = count_flops(net, x)
    prune(net.eval(), x, method="l1", flops_ratio=0.5, inplace=True)
    assert count_flops(net, x) <= 0.5 * flops * 1.001
    assert sum(p.numel() for p in net.parameters()) < before
    with torch.no_grad():
        assert net(x).shape == shape
    out = net.train()(torch.cat([x, x]))
    assert _shapes(out) == train_shapes
    _total(out).backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(p.grad.shape == p.shape for p in net.parameters() if p.grad is not None)
    net.eval()
    save(net, tmp_path / "m")
    again = load(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(net(x), again(x))
    export_onnx(again, x, tmp_path / "m.onnx")  # raises if ONNX Runtime disagrees with PyTorch
