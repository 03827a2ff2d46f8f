"""Channel groups from a real trace: couplings, widths, refusals and notes."""

import pytest
import torch
from torch import nn

from medslim.models import build_model
from medslim.pruning import DependencyGraph, PruningError

X2 = torch.randn(1, 1, 16, 16)


pytestmark = pytest.mark.usefixtures("one_thread")


def unet(**kw):
    spec = {"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
            "channels": [4, 8]}
    return build_model({**spec, **kw})


def by_producer(graph, path):
    return next(g for g in graph.groups if path in [p.module for p in g.producers])


def test_unet_skip_is_one_group_read_at_its_concat_offsets():
    graph = DependencyGraph(unet(), X2)
    skip = by_producer(graph, "encoder.0.3")
    assert skip.prunable and skip.size == 4
    assert {(c.module, c.offset) for c in skip.consumers} == {("encoder.1.0", 0),
                                                             ("decoder.0.0", 0)}
    up = by_producer(graph, "up.0")
    assert [(c.module, c.offset) for c in up.consumers] == [("decoder.0.0", 4)]
    assert up.producers[0].dim == 1  # ConvTranspose weight is (in, out, k...)
    assert [n.module for n in skip.norms] == ["encoder.0.4"]
    head = by_producer(graph, "heads.0")
    assert not head.prunable and "output" in head.reason
    first = next(g for g in graph.groups if not g.producers)
    assert "input" in first.reason and first.consumers[0].module == "encoder.0.0"
    assert graph.notes == [] and len(graph.prunable_groups()) == len(graph.groups) - 2


def test_sites_list_post_activation_outputs_first_with_call_numbers():
    graph = DependencyGraph(unet(), X2)
    sites = by_producer(graph, "encoder.0.0").sites
    assert sites[0].module == "encoder.0.2" and sites[0].activation
    assert {s.module for s in sites} >= {"encoder.0.0", "encoder.0.1"}

    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.act = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 6, 3), nn.ReLU()

        def forward(self, x):
            return self.b(self.act(self.a(x))).relu().mean((2, 3))

    graph = DependencyGraph(Reuse(), X2)
    a = by_producer(graph, "a")
    assert a.sites[0].module == "act" and a.sites[0].call == 0


def test_monai_unet_prelu1_and_residual_units_couple_widths_from_shapes():
    from monai.networks.nets import UNet

    net = UNet(2, 1, 2, (4, 8, 16), (2, 2), num_res_units=2)
    graph = DependencyGraph(net, torch.randn(1, 1, 32, 32))
    top = by_producer(graph, "model.0.residual")
    assert {p.module for p in top.producers} == {"model.0.residual", "model.0.conv.unit1.conv"}
    assert top.prunable and graph.notes == []


class InPlaceCat(nn.Module):
    """Conv -> InstanceNorm -> in-place LeakyReLU -> cat: what breaks Torch-Pruning."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.InstanceNorm2d(4),
                               nn.LeakyReLU(inplace=True))
        self.b = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.PReLU())
        self.dw = nn.Conv2d(10, 10, 3, padding=1, groups=10)
        self.out = nn.Conv2d(10, 2, 1)

    def forward(self, x):
        a = self.a(x)
        return self.out(self.dw(torch.cat([self.b(a), a], dim=1)))


def test_in_place_activation_after_instance_norm_and_depthwise_coupling():
    graph = DependencyGraph(InPlaceCat(), X2)
    a, b = by_producer(graph, "a.0"), by_producer(graph, "b.0")
    assert [(c.module, c.offset) for c in a.consumers] == [("b.0", 0), ("out", 6)]
    assert [(p.module, p.offset, p.depthwise) for p in a.producers] == [("a.0", 0, False),
                                                                       ("dw", 6, True)]
    assert [(p.module, p.offset) for p in b.producers if p.depthwise] == [("dw", 0)]
    assert a.norms[0].module == "a.1" and a.prunable and b.prunable


def test_grouped_convolution_is_refused_with_its_reason():
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2),
                        nn.ReLU(), nn.Conv2d(8, 2, 1))
    graph = DependencyGraph(net, X2)
    assert not by_producer(graph, "0").prunable
    assert "grouped convolution '2' (groups=2)" in by_producer(graph, "2").reason


def test_group_norm_sets_the_divisor_and_round_to_combines_with_it():
    net = unet(norm="group", channels=[8, 16])
    graph = DependencyGraph(net, X2)
    group = by_producer(graph, "encoder.1.0")
    assert group.divisor == net.encoder[1][1].num_groups == 8
    graph = DependencyGraph(net, X2, round_to=3)
    assert by_producer(graph, "encoder.1.0").divisor == 24
    assert "at least 24 must stay" in by_producer(graph, "encoder.1.0").reason
    with pytest.raises(PruningError, match="round_to"):
        DependencyGraph(net, X2, round_to=0)


def test_ignored_modules_by_name_or_object():
    net = unet()
    graph = DependencyGraph(net, X2, ignored=["decoder", net.encoder[0][0]])
    assert "module 'encoder.0.0' is ignored" in by_producer(graph, "encoder.0.0").reason
    assert not by_producer(graph, "decoder.0.3").prunable
    assert by_producer(graph, "encoder.1.0").prunable
    with pytest.raises(PruningError, match="'nope' is not in the model"):
        DependencyGraph(net, X2, ignored=["nope"])


def test_flatten_into_linear_records_features_per_channel():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 3))
    graph = DependencyGraph(net, X2)
    conv = by_producer(graph, "0")
    assert [(c.module, c.offset, c.factor) for c in conv.consumers] == [("4", 0, 4)]
    assert by_producer(graph, "4").prunable and not by_producer(graph, "6").prunable


def test_slicing_a_concat_at_its_seams_is_fine_inside_a_group_is_not():
    class Split(nn.Module):
        def __init__(self, at):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 4, 1), nn.Conv2d(1, 6, 1)
            self.c, self.d = nn.Conv2d(at, 2, 1), nn.Conv2d(10 - at, 2, 1)
            self.at = at

        def forward(self, x):
            y = torch.cat([self.a(x), self.b(x)], 1)
            return self.c(y[:, : self.at]) + self.d(y[:, self.at:])

    graph = DependencyGraph(Split(4), X2)
    assert by_producer(graph, "a").prunable and by_producer(graph, "b").prunable
    graph = DependencyGraph(Split(2), X2)
    assert not by_producer(graph, "a").prunable
    assert any("aten.slice" in n and "skipped" in n for n in graph.notes)


def test_unknown_op_on_channels_is_noted_with_module_and_skipped():
    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3)
            self.shuffle = nn.PixelShuffle(2)
            self.out = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return self.out(self.shuffle(self.conv(x)))

    graph = DependencyGraph(Shuffle(), X2)
    assert not by_producer(graph, "conv").prunable
    assert "aten.pixel_shuffle at module 'shuffle' (PixelShuffle) was skipped" in \
        by_producer(graph, "conv").reason
    assert any("skipped aten.pixel_shuffle at module 'shuffle'" in n for n in graph.notes)


def test_reductions_and_per_channel_parameters_are_not_pruned():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.gamma = nn.Parameter(torch.ones(4, 1, 1))
            self.conv2 = nn.Conv2d(1, 4, 3)
            self.out = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            y = self.conv(x) * self.gamma
            z = self.conv2(x)
            return self.out(y + z.mean(1, keepdim=True))

    graph = DependencyGraph(Odd(), X2)
    assert any("parameter 'gamma'" in n for n in graph.notes)
    assert any("skipped aten.mean" in n for n in graph.notes)
    assert not by_producer(graph, "conv").prunable and not by_producer(graph, "conv2").prunable


def test_untraceable_model_raises_with_the_exporters_reason():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            y = self.conv(x)
            if y.sum() > 0:
                return y
            return -y

    with pytest.raises(PruningError, match=r"cannot trace DataDependent \(eval mode\) with "
                                           r"torch.export.*: \w+"):
        DependencyGraph(DataDependent(), X2)


def test_idle_deep_supervision_heads_are_traced_in_training_mode():
    net = unet(channels=[4, 8, 16], deep_supervision=True)
    net.train()
    graph = DependencyGraph(net, X2)
    assert net.training and graph.idle == []  # flags restored, heads found
    mid = by_producer(graph, "decoder.0.3")
    assert "heads.0" in [c.module for c in mid.consumers]
    assert not by_producer(graph, "heads.0").prunable


def test_training_only_heads_that_cannot_be_traced_make_nothing_prunable():
    class AuxHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.head, self.aux = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            y = self.conv(x)
            if self.training and bool(y.sum() > 0):  # data-dependent: export refuses it
                return self.head(y), self.aux(y)
            return self.head(y)

    graph = DependencyGraph(AuxHead(), X2)
    assert graph.prunable_groups() == [] and graph.idle == ["aux"]
    assert "run only in training" in by_producer(graph, "conv").reason
    expected = "nothing is prunable: cannot trace AuxHead (training mode)"
    assert any(expected in n for n in graph.notes)


def test_dynunet_side_heads_are_kept_and_the_model_is_left_intact():
    from monai.networks.nets import DynUNet

    net = DynUNet(2, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2], filters=[4, 8, 16],
                  deep_supervision=True, deep_supr_num=1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    graph = DependencyGraph(net, torch.randn(1, 1, 32, 32))
    head = by_producer(graph, "skip_layers.next_layer.super_head.conv.conv")
    assert not head.prunable and "unused in the trace" in head.reason
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # torch.export swaps DynUNet's shared heads list; the graph puts it back
    assert net.heads is net.skip_layers.next_layer.heads
    net.train()
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 2, 2, 32, 32)


def test_rebuild_and_repr():
    graph = DependencyGraph(unet(), X2)
    n = len(graph.groups)
    assert graph.rebuild() is graph and len(graph.groups) == n
    assert "prunable" in repr(graph)
    with pytest.raises(PruningError, match="no channel group 999"):
        graph.group(999)
