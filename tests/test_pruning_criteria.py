"""Pruning criteria: one score per channel of every prunable group, checked by hand."""

import copy
import math

import pytest
import torch
from torch import nn

from medslim.errors import ConfigError
from medslim.models import build_model
from medslim.pruning import DependencyGraph, PruningError
from medslim.pruning.criteria import CRITERIA, bn_l1_penalty, get_criterion, slimming_subgradient
from medslim.pruning.criteria.bn_stats import expected_relu
from medslim.pruning.criteria.hrank import map_ranks
from medslim.training.loop import _collate

X = torch.randn(1, 1, 16, 16)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net():
    """A tiny batch-norm U-Net, its graph (shared: criteria only read paths) and data."""
    torch.manual_seed(0)
    model = build_model({"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                         "channels": [4, 8], "norm": "batch", "act": "relu"})
    graph = DependencyGraph(model, X)
    gen = torch.Generator().manual_seed(1)
    items = [{"image": torch.randn(1, 16, 16, generator=gen),
              "label": torch.randint(0, 2, (1, 16, 16), generator=gen), "id": str(i)}
             for i in range(4)]
    data = [_collate(items[:2]), _collate(items[2:])]  # as medslim's training loader yields
    return model, graph, data


def group_of(graph, producer):
    return next(g for g in graph.groups if producer in [p.module for p in g.producers])


def no_hooks(model):
    return all(not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
               for m in model.modules())


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_every_criterion_scores_every_prunable_group(net, name):
    model, graph, data = net
    model = copy.deepcopy(model).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = get_criterion(name, batches=2).scores(model, graph, data) \
        if CRITERIA[name].needs_data else get_criterion(name).scores(model, graph)
    assert set(scores) == {g.id for g in graph.prunable_groups()}
    for g in graph.prunable_groups():
        assert scores[g.id].shape == (g.size,) and torch.isfinite(scores[g.id]).all()
    assert no_hooks(model) and all(p.grad is None for p in model.parameters())
    assert model.training  # mode restored; eval inside, so BN running stats did not move
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_taylor_is_layer_l2_normalised_and_keeps_existing_grads(net):
    model, graph, data = net
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    scores = get_criterion("taylor", batches=1).scores(model, graph, data)
    assert all(abs(float(s.norm()) - 1) < 1e-5 for s in scores.values())
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())


def test_l1_l2_are_hand_computed_filter_norms(net):
    model, graph, _ = net
    model = copy.deepcopy(model)
    w = torch.zeros(4, 1, 3, 3)
    w[0] = 1.0                    # l1 9, l2 3
    w[1, 0, 1, 1] = -2.0          # l1 2, l2 2
    w[2, 0, 0, :2] = torch.tensor([3.0, -4.0])  # l1 7, l2 5
    model.get_submodule("encoder.0.0").weight.data.copy_(w)
    gid = group_of(graph, "encoder.0.0").id
    assert get_criterion("l1").scores(model, graph)[gid].tolist() == [9, 2, 7, 0]
    assert get_criterion("l2").scores(model, graph)[gid].tolist() == [3, 2, 5, 0]
    l2 = get_criterion("l2", normalize="l2").scores(model, graph)[gid]
    assert torch.allclose(l2, torch.tensor([3, 2, 5, 0]) / math.sqrt(38))
    up = group_of(graph, "up.0")  # transposed conv: output channels on weight dim 1
    weight = model.get_submodule("up.0").weight
    assert torch.allclose(get_criterion("l1").scores(model, graph)[up.id],
                          weight.abs().sum((0, 2, 3)))


class Residual(nn.Module):
    """a(x) + b(relu(a(x))): one group with two producers; two outputs like deep supervision."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
        self.act, self.head, self.low = nn.ReLU(), nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 1)

    def forward(self, x):
        y = self.a(x)
        y = self.act(y + self.b(self.act(y)))
        return [self.head(y), self.low(nn.functional.max_pool2d(y, 2))]


def test_multi_producer_groups_sum_or_concatenate_and_list_outputs_work():
    torch.manual_seed(0)
    model = Residual()
    graph = DependencyGraph(model, X)
    group = group_of(graph, "b")
    assert {p.module for p in group.producers} == {"a", "b"} and group.prunable
    a, b = model.a.weight, model.b.weight
    l1 = get_criterion("l1").scores(model, graph)[group.id]
    assert torch.allclose(l1, a.abs().sum((1, 2, 3)) + b.abs().sum((1, 2, 3)))
    filters = torch.cat([a.flatten(1), b.flatten(1)], 1).double()
    fpgm = get_criterion("fpgm").scores(model, graph)[group.id]
    assert torch.allclose(fpgm, torch.cdist(filters, filters).sum(1).float())
    data = [(torch.randn(2, 1, 16, 16), torch.randint(0, 2, (2, 1, 16, 16)))]
    scores = get_criterion("taylor_gn").scores(model, graph, data)  # default seg loss on a list
    assert torch.isfinite(scores[group.id]).all() and no_hooks(model)
    with pytest.raises(ConfigError, match="affine norm"):
        get_criterion("slimming").scores(model, graph)
    with pytest.raises(ConfigError, match="batch norm"):
        get_criterion("bn_stats").scores(model, graph)


def test_fpgm_geometric_median_filter_scores_lowest(net):
    model, graph, _ = net
    model = copy.deepcopy(model)
    a, b = torch.zeros(9), torch.zeros(9)
    a[0], b[1] = 1.0, 1.0
    filters = torch.stack([a, -a, torch.zeros(9), b]).view(4, 1, 3, 3)
    model.get_submodule("encoder.0.0").weight.data.copy_(filters)
    score = get_criterion("fpgm").scores(model, graph)[group_of(graph, "encoder.0.0").id]
    r2 = math.sqrt(2)
    assert torch.allclose(score, torch.tensor([2 + 1 + r2, 2 + 1 + r2, 3.0, 1 + 2 * r2]))
    assert int(score.argmin()) == 2  # the zero filter: the median, the most replaceable


def test_slimming_is_abs_gamma_with_l1_fallback_noted(net):
    model, graph, _ = net
    model = copy.deepcopy(model)
    gamma = torch.tensor([0.5, -2.0, 0.0, 1.5])
    model.get_submodule("encoder.0.1").weight.data.copy_(gamma)
    crit = get_criterion("slimming")
    scores = crit.scores(model, graph)
    assert torch.equal(scores[group_of(graph, "encoder.0.0").id], gamma.abs())
    up = group_of(graph, "up.0")
    assert torch.allclose(scores[up.id], get_criterion("l1").scores(model, graph)[up.id])
    assert len(crit.notes) == 1 and "up.0" in crit.notes[0] and "L1" in crit.notes[0]


def test_bn_stats_is_the_rectified_gaussian_mean(net):
    gamma = torch.tensor([1.0, 0.0, 0.0, 2.0, -2.0])
    beta = torch.tensor([0.0, 2.0, -1.0, 1.0, 1.0])
    phi = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    big_phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    want = [phi(0), 2.0, 0.0, big_phi(0.5) + 2 * phi(0.5), big_phi(0.5) + 2 * phi(0.5)]
    assert torch.allclose(expected_relu(gamma, beta), torch.tensor(want), atol=1e-6)
    gen = torch.Generator().manual_seed(0)
    sample = torch.relu(2.0 * torch.randn(200_000, generator=gen) + 1.0).mean()
    assert abs(float(sample) - want[3]) < 0.01  # the closed form is E[ReLU(N(1, 4))]
    model, graph, _ = net
    model = copy.deepcopy(model)
    bn = model.get_submodule("encoder.0.1")
    bn.weight.data.copy_(gamma[:4])
    bn.bias.data.copy_(beta[:4])
    score = get_criterion("bn_stats").scores(model, graph)[group_of(graph, "encoder.0.0").id]
    assert torch.allclose(score, torch.tensor(want[:4]), atol=1e-6)


def silence_channel(model, gamma: float = 0.0, beta: float = 0.0, channel: int = 1):
    """Channel ``channel`` of encoder.0 comes out of its ReLU as the constant relu(beta)."""
    conv, bn = model.get_submodule("encoder.0.0"), model.get_submodule("encoder.0.1")
    with torch.no_grad():
        conv.weight[channel] = 0.0
        conv.bias[channel] = 0.0
        bn.weight[channel] = gamma
        bn.bias[channel] = beta


@pytest.mark.parametrize("name", ["taylor", "taylor_gate", "taylor_gn", "taylor_rand"])
def test_taylor_of_a_dead_channel_is_zero_and_lowest(net, name):
    model, graph, data = net
    model = copy.deepcopy(model)
    silence_channel(model)
    score = get_criterion(name, batches=2).scores(model, graph, data)
    s = score[group_of(graph, "encoder.0.0").id]
    assert float(s[1]) == 0.0 and int(s.argmin()) == 1 and bool((s[[0, 2, 3]] > 0).all())


def test_hrank_constant_map_has_rank_one_and_ranks_lowest(net):
    model, graph, data = net
    model = copy.deepcopy(model)
    silence_channel(model, beta=0.5)
    scores = get_criterion("hrank", batches=2).scores(model, graph, data)
    s = scores[group_of(graph, "encoder.0.0").id]
    assert float(s[1]) == 1.0 and int(s.argmin()) == 1 and bool((s[[0, 2, 3]] > 1).all())
    maps = torch.randn(2, 2, 4, 4, 3)
    maps[:, 1] = 7.0
    maps[0, 0, :, :, 0] = 0.0  # one of the three slices is empty: mean (0 + 4 + 4) / 3
    ranks = map_ranks(maps)
    assert torch.allclose(ranks, torch.tensor([[8 / 3, 1.0], [4.0, 1.0]]))


def test_random_is_seeded(net):
    model, graph, _ = net
    first = get_criterion("random", seed=3).scores(model, graph)
    again = get_criterion("random", seed=3).scores(model, graph)
    other = get_criterion("random", seed=4).scores(model, graph)
    assert all(torch.equal(first[g], again[g]) for g in first)
    assert any(not torch.equal(first[g], other[g]) for g in first)


def test_bn_l1_penalty_and_subgradient(net):
    model, _, _ = net
    model = copy.deepcopy(model)
    gammas = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for w in gammas:
        w.data.uniform_(-1, 1)
    want = 1e-3 * sum(float(w.detach().abs().sum()) for w in gammas)
    penalty = bn_l1_penalty(model, lam=1e-3)
    assert abs(float(penalty.detach()) - want) < 1e-9 * max(1, want) + 1e-7
    penalty.backward()
    grads = [w.grad.clone() for w in gammas]
    assert all(torch.allclose(g, 1e-3 * torch.sign(w)) for g, w in zip(grads, gammas))
    slimming_subgradient(model, lam=1e-3)  # adds to the existing gradient
    assert all(torch.allclose(w.grad, 2e-3 * torch.sign(w)) for w in gammas)


def test_configuration_errors(net):
    model, graph, data = net
    with pytest.raises(ConfigError, match="unknown pruning method 'l3'.*fpgm.*taylor_gn"):
        get_criterion("l3")
    with pytest.raises(ConfigError, match="'lr'.*'taylor'.*batches, loss_fn, normalize"):
        get_criterion("taylor", lr=0.1)
    with pytest.raises(ConfigError, match="normalize must be one of: none, l2, mean"):
        get_criterion("l1", normalize="max")
    with pytest.raises(ConfigError, match="batches must be a positive int"):
        get_criterion("hrank", batches=0)
    with pytest.raises(ConfigError, match="'hrank' needs data"):
        get_criterion("hrank").scores(model, graph)
    with pytest.raises(ConfigError, match="needs labels"):
        get_criterion("taylor").scores(model, graph, [data[0]["image"]])
    with pytest.raises(ConfigError, match="no batch"):
        get_criterion("hrank").scores(model, graph, [])
    assert no_hooks(model)
    bare = get_criterion("taylor_rand", batches=1).scores(model, graph, data[0]["image"])
    assert len(bare) == len(graph.prunable_groups())


def test_custom_loss_and_stale_graph(net):
    model, graph, data = net
    calls = []

    def loss_fn(out, label):
        calls.append(label.shape)
        return out.pow(2).mean()

    get_criterion("taylor_gate", batches=1, loss_fn=loss_fn, per="batch").scores(model, graph, data)
    assert calls == [data[0]["label"].shape]
    graph.stale = True
    try:
        with pytest.raises(PruningError, match="stale"):
            get_criterion("l1").scores(model, graph)
    finally:
        graph.stale = False
