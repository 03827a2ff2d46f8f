import pytest
import torch

from medslim.cost import count_flops, count_params
from medslim.errors import ConfigError
from medslim.models import build_model
from medslim.pruning import DependencyGraph, PruningError, prune
from medslim.pruning.pruner import CostModel

X2 = torch.randn(1, 3, 32, 32)


def _unet(norm="batch", **kw):
    torch.manual_seed(0)
    return build_model({"name": "unet", "spatial_dims": 2, "in_channels": 3, "out_channels": 2,
                        "channels": [8, 16, 32], "norm": norm, **kw})


@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_flops_target_is_met_closely_and_the_original_is_untouched(ratio):
    net = _unet()
    before = count_params(net)
    small = prune(net, X2, method="l1", flops_ratio=ratio)
    achieved = count_flops(small, X2) / count_flops(net, X2)
    assert ratio * 0.85 <= achieved <= ratio * 1.001
    assert small.medslim_pruning.flops_ratio == pytest.approx(achieved)
    assert count_params(net) == before
    assert small(X2).shape == net(X2).shape


def test_params_target():
    net = _unet()
    small = prune(net, X2, method="l2", params_ratio=0.3)
    assert count_params(small) <= 0.3 * count_params(net) * 1.001


def test_cost_model_predicts_the_measured_flops():
    net = _unet()
    graph = DependencyGraph(net, X2)
    cost = CostModel(net, graph, X2)
    assert cost.total_flops() == pytest.approx(count_flops(net, X2), rel=1e-6)
    assert cost.total_params() == pytest.approx(count_params(net), rel=1e-6)


def test_local_scope_takes_the_same_fraction_everywhere():
    net = _unet()
    small = prune(net, X2, method="l1", flops_ratio=0.5, scope="local")
    kept = [small.encoder[i][0].out_channels / net.encoder[i][0].out_channels for i in range(3)]
    assert max(kept) - min(kept) <= 1 / 8 + 1e-9


def test_max_fraction_and_round_to_are_respected():
    net = _unet(channels=[16, 32, 64])
    small = prune(net, X2, method="l1", flops_ratio=0.3, max_fraction=0.5, round_to=4)
    for name, module in small.named_modules():
        if isinstance(module, torch.nn.Conv2d) and name != "heads.0":
            original = dict(net.named_modules())[name].out_channels
            assert module.out_channels >= original * 0.5
            assert module.out_channels % 4 == 0


def test_group_norm_widths_stay_divisible():
    net = _unet(norm="group", channels=[16, 32, 64])
    small = prune(net, X2, method="l1", flops_ratio=0.4)
    for module in small.modules():
        if isinstance(module, torch.nn.GroupNorm):
            assert module.num_channels % module.num_groups == 0


def test_unreachable_target_says_the_smallest_reachable_ratio():
    with pytest.raises(PruningError, match=r"smallest reachable flops_ratio is 0\.\d+"):
        prune(_unet(), X2, method="l1", flops_ratio=0.001)


def test_uniform_baseline_is_reinitialised():
    net = _unet()
    small = prune(net, X2, method="uniform", flops_ratio=0.5)
    first = small.encoder[0][0].weight
    assert not torch.allclose(first, net.encoder[0][0].weight[: first.shape[0]])
    assert small.medslim_pruning.scope == "local"


def test_uniform_baseline_keeps_what_its_training_learned():
    # the from-scratch training is the fine-tune callback: re-initialising after it would undo it
    def train(model, step):
        with torch.no_grad():
            model.encoder[0][0].weight.fill_(0.25)

    small = prune(_unet(), X2, method="uniform", flops_ratio=0.5, finetune=train)
    assert torch.all(small.encoder[0][0].weight == 0.25)


def test_iterative_schedule_calls_finetune_each_step():
    calls = []
    small = prune(_unet(), X2, method="l1", flops_ratio=0.3, steps=3, finetune=lambda m, s: calls.append(s))
    assert calls == [1, 2, 3]
    assert small.medslim_pruning.flops_ratio <= 0.3 * 1.001


def test_max_fraction_bounds_the_whole_iterative_schedule():
    base = _unet()
    before = {g.key: g.size for g in DependencyGraph(base, X2).prunable_groups()}
    small = prune(base, X2, method="taylor_gn", flops_ratio=0.2, steps=3, max_fraction=0.75,
                  data=[(torch.randn(2, 3, 32, 32), torch.randint(0, 2, (2, 1, 32, 32)))])
    after = {g.key: g.size for g in DependencyGraph(small, X2).prunable_groups()}
    assert all(after[k] >= before[k] // 4 for k in before)


def test_stop_when_undoes_the_step_that_went_too_far():
    seen = []

    def too_small(model):
        seen.append(count_flops(model, X2))
        return len(seen) == 3  # the third step is one too many

    base = _unet()
    small = prune(base, X2, method="l1", flops_ratio=0.2, steps=4, stop_when=too_small)
    report = small.medslim_pruning
    assert report.steps == 2 and "stopped after step 2" in report.notes[-1]
    assert count_flops(small, X2) == seen[1] == report.flops_after > seen[2]
    with pytest.raises(ConfigError, match="inplace"):
        prune(base, X2, method="l1", flops_ratio=0.5, inplace=True, stop_when=too_small)


def test_in_place_pruning_slices_the_optimizer_and_training_goes_on():
    net = _unet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(X2).mean().backward()
    opt.step()
    prune(net, X2, method="l1", flops_ratio=0.5, inplace=True, optimizer=opt)
    # the moments survive the surgery, sliced, before any new step could recreate them
    assert {len(g["params"]) for g in opt.param_groups} == {len(list(net.parameters()))}
    for p in net.parameters():
        state = opt.state[p]
        assert float(state["step"]) == 1
        assert state["exp_avg"].shape == state["exp_avg_sq"].shape == p.shape
        assert state["exp_avg_sq"].abs().sum() > 0
    opt.zero_grad()
    net(X2).mean().backward()
    opt.step()
    for p in net.parameters():
        assert opt.state[p]["exp_avg"].shape == p.shape and float(opt.state[p]["step"]) == 2


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "nope", "flops_ratio": 0.5}, "unknown pruning method 'nope'"),
    ({"method": "l1"}, "give a target"),
    ({"method": "l1", "flops_ratio": 1.5}, r"flops_ratio must be in \(0, 1\]"),
    ({"method": "taylor", "flops_ratio": 0.5}, "needs data"),
    ({"method": "l1", "flops_ratio": 0.5, "scope": "everywhere"}, "scope="),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        prune(_unet(), X2, **kwargs)


@pytest.mark.parametrize("model, example, match", [
    ("runs/base", X2, "model must be a torch.nn.Module, got str \\(load a saved model first"),
    (None, X2, "model must be a torch.nn.Module, got NoneType"),
    ("UNET", None, "example_input must be a tensor"),
    ("UNET", [], "example_input must be a tensor"),
])
def test_wrong_argument_types_are_named(model, example, match):
    with pytest.raises(ConfigError, match=match):
        prune(_unet() if model == "UNET" else model, example, method="l1", flops_ratio=0.5)


def test_data_driven_criterion_through_the_pruner():
    batches = [{"image": torch.randn(2, 3, 32, 32), "label": torch.randint(0, 2, (2, 1, 32, 32))}
               for _ in range(2)]
    small = prune(_unet(), X2, method="taylor_gn", flops_ratio=0.5, data=batches)
    assert small.medslim_pruning.flops_ratio <= 0.5 * 1.001


def test_latency_target_bisects_on_measured_latency(monkeypatch):
    # a deterministic stand-in for the clock: latency proportional to FLOPs
    import medslim.cost

    monkeypatch.setattr(medslim.cost, "latency_torch",
                        lambda net, x, threads=1, repeats=15: {"median_ms": count_flops(net, x) / 1e6})
    net = _unet(channels=[16, 32, 64])
    full_ms = count_flops(net, X2) / 1e6
    small = prune(net, X2, method="l1", latency_ms=full_ms * 0.4)
    achieved_ms = count_flops(small, X2) / 1e6
    assert full_ms * 0.4 * 0.8 <= achieved_ms <= full_ms * 0.4
    assert small.medslim_pruning.target == {"latency_ms": pytest.approx(full_ms * 0.4), "threads": 1}
    with pytest.raises(PruningError, match="latency_ms=.* cannot be reached"):
        prune(net, X2, method="l1", latency_ms=full_ms * 1e-4)


def test_your_own_criterion_is_one_small_class():
    from medslim.pruning.criteria import Criterion, per_producer_sum

    class Reversed(Criterion):
        """The opposite of L1: keeps the weakest filters (so the choice is visible)."""

        name = "reversed_l1"

        def _scores(self, model, graph, data=None):
            return {g.id: -per_producer_sum(model, g, lambda w: w.abs().sum(dim=1))
                    for g in graph.prunable_groups()}

    net = _unet()
    mine = prune(net, X2, method=Reversed(), flops_ratio=0.5, scope="local")
    l1 = prune(net, X2, method="l1", flops_ratio=0.5, scope="local")
    assert mine.medslim_pruning.method == "reversed_l1"
    assert count_flops(mine, X2) == count_flops(l1, X2)  # the same widths, other channels
    first = next(m for m in mine.modules() if isinstance(m, torch.nn.Conv2d))
    first_l1 = next(m for m in l1.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.weight.abs().sum() < first_l1.weight.abs().sum()
    with pytest.raises(ConfigError, match="go to the criterion's constructor"):
        prune(net, X2, method=Reversed(), flops_ratio=0.5, batches=2)
    with pytest.raises(ConfigError, match="a criterion name or a Criterion object, got 3"):
        prune(net, X2, method=3, flops_ratio=0.5)

    class Hungry(Reversed):
        name, needs_data = "hungry", True

    with pytest.raises(ConfigError, match="'hungry' needs data: pass data="):
        prune(net, X2, method=Hungry(), flops_ratio=0.5)
