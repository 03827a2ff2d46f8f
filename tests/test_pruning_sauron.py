"""Sauron: its distances, its threshold rule, pruning inside real training, resume."""

import json
import math

import pytest
import torch

from medslim.artifacts import load
from medslim.config import load_config
from medslim.cost import count_flops
from medslim.errors import ConfigError
from medslim.jobs import train_run
from medslim.models import build_model
from medslim.pruning import Sauron, training_pruner
from medslim.pruning.graph import ChannelGroup
from medslim.pruning.sauron import GroupState, delta_opt, delta_prune

KVASIR_TINY = ["data.limit=32", "data.size=[64,64]", "model.channels=[4,8,16]",
               "train.batch_size=8", "train.lr=0.01", "eval.batch_size=8"]


# ----------------------------------------------------------------------------- distances


def test_delta_opt_ignores_the_scale_and_shift_of_a_map():
    base = torch.rand(2, 1, 8, 8)
    maps = torch.cat([base, 3 * base + 5, torch.rand(2, 1, 8, 8)], 1)
    d = delta_opt(maps)
    assert d.shape == (2, 2)
    assert torch.all(d[:, 0] < 1e-3) and torch.all(d[:, 1] > 0.05)


def test_delta_opt_has_finite_gradients_for_identical_maps():
    maps = torch.rand(1, 1, 4, 4, 4).repeat(1, 3, 1, 1, 1).requires_grad_(True)
    delta_opt(maps).mean().backward()
    assert torch.isfinite(maps.grad).all()


def test_delta_prune_is_zero_at_the_reference_and_one_at_the_farthest():
    maps = torch.stack([torch.full((6, 6), v) for v in (0.0, 1.0, 4.0, 0.1)]).unsqueeze(0)
    d = delta_prune(maps, ref=0)
    assert d.shape == (1, 4)
    assert d[0, 0] == 0 and d[0, 2] == pytest.approx(1.0)
    assert d[0, 3] == pytest.approx(0.1 / 4, rel=1e-4)


# ----------------------------------------------------------------------------- decisions


def test_kept_channels_respect_the_reference_and_the_divisor():
    group = ChannelGroup(id=0, size=8, divisor=4)
    delta = torch.tensor([0.0, 0.001, 0.5, 0.002, 0.6, 0.7, 0.8, 0.9])
    kept = Sauron._kept(group, delta, tau=0.01, ref=0)
    # 0.001 and 0.002 are under tau, but 6 kept is not a multiple of 4: keep 8 (none dropped)
    assert kept.tolist() == list(range(8))
    group.divisor = 1
    assert Sauron._kept(group, delta, tau=0.01, ref=0).tolist() == [0, 2, 4, 5, 6, 7]
    group.divisor = 2
    assert Sauron._kept(group, delta, tau=0.65, ref=0).tolist() == [0, 5, 6, 7]


def test_a_width_floor_takes_back_the_dropped_channels_farthest_from_the_reference():
    group = ChannelGroup(id=0, size=8, divisor=1)
    delta = torch.tensor([0.0, 0.001, 0.5, 0.002, 0.6, 0.003, 0.8, 0.9])
    assert Sauron._kept(group, delta, tau=0.7, ref=0).tolist() == [0, 6, 7]
    # a floor of 5 takes back the two dropped channels farthest from the reference
    assert Sauron._kept(group, delta, tau=0.7, ref=0, floor=5).tolist() == [0, 2, 4, 6, 7]
    group.divisor = 4
    assert Sauron._kept(group, delta, tau=0.7, ref=0, floor=5).tolist() == list(range(8))
    assert Sauron._kept(group, delta, tau=0.7, ref=0, floor=9).tolist() == list(range(8))


def test_threshold_rises_on_a_plateau_then_waits():
    hook = Sauron(torch.zeros(1, 1, 8, 8), patience=2, tau_steps=3, tau_init=0.0, tau_max=0.3)
    state = GroupState(tau=0.0, widths=[10, 10])
    hook.losses = [1.0, 0.5, 0.4]  # still falling: no plateau
    hook._update_tau(state)
    assert state.tau == 0.0
    hook.losses = [1.0, 0.5, 0.6, 0.55]
    hook._update_tau(state)
    assert state.tau == pytest.approx(0.1) and state.patience == 2
    hook._update_tau(state)
    hook._update_tau(state)
    assert state.tau == pytest.approx(0.1) and state.patience == 0
    state.widths += [10, 5]  # lost half its channels in the last epoch: not converged
    hook._update_tau(state)
    assert state.tau == pytest.approx(0.1)


def test_bad_options_are_refused_by_name():
    with pytest.raises(ConfigError, match="tau_max"):
        Sauron(torch.zeros(1, 1, 8, 8), tau_init=0.5, tau_max=0.1)
    with pytest.raises(ConfigError, match="prune.alpha"):
        training_pruner("sauron", torch.zeros(1, 1, 8, 8), alpha=1)
    with pytest.raises(ConfigError, match="sauron"):
        training_pruner("sauronn", torch.zeros(1, 1, 8, 8))
    with pytest.raises(ConfigError, match="stop_after"):
        Sauron(torch.zeros(1, 1, 8, 8), stop_after=0)
    for bad in (0, 2.5, 0.0, 1.0, -0.5, True, {"decoder": 0}, {"decoder": "4"}):
        with pytest.raises(ConfigError, match="min_width"):
            Sauron(torch.zeros(1, 1, 8, 8), min_width=bad)
    model = build_model({"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                         "channels": [4, 8]})
    hook = Sauron(torch.zeros(1, 1, 16, 16), min_width={"decoder.0.9": 2})
    with pytest.raises(ConfigError, match=r"min_width names 'decoder.0.9'.*did you mean"):
        hook.begin(model)


# ----------------------------------------------------------------------------- in a loop


def _train_steps(model, hook, x_shape, epochs=2, steps=2):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    hook.begin(model)
    try:
        for epoch in range(epochs):
            model.train()
            for _ in range(steps):
                out = model(torch.randn(*x_shape))
                out = out[0] if isinstance(out, (list, tuple)) else out
                loss = out.square().mean()
                extra = hook.extra_loss()
                if extra is not None:
                    loss = loss + extra
                opt.zero_grad()
                loss.backward()
                opt.step()
            record = hook.end_epoch(model, opt, epoch + 1, loss.item(), last=False)
    finally:
        hook.close()
    return record["sauron"], opt


@pytest.mark.parametrize("spec,shape", [
    ({"name": "unet", "spatial_dims": 2, "in_channels": 3, "out_channels": 2,
      "channels": [8, 16, 32], "deep_supervision": True}, (2, 3, 32, 32)),
    ({"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
      "channels": [8, 16], "norm": "batch"}, (2, 1, 16, 16, 16)),
    ({"name": "monai.UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
      "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}, (2, 1, 32, 32)),
], ids=["unet2d-ds", "unet3d-bn", "monai-unet"])
def test_sauron_removes_channels_and_training_goes_on(one_thread, spec, shape):
    torch.manual_seed(0)
    model = build_model(spec)
    example = torch.zeros(1, *shape[1:])
    flops0 = count_flops(model, example)
    hook = Sauron(example, tau_init=0.7, tau_max=0.9)  # high: random maps are far apart
    summary, opt = _train_steps(model, hook, shape)
    assert summary["removed"] > 0 and summary["flops"] < flops0
    assert summary["flops"] == count_flops(model, example)
    model.eval()
    out = model(torch.randn(*shape))
    assert out.shape == (shape[0], spec["out_channels"], *shape[2:])
    json.dumps(hook.state_dict())
    assert all(len(g["widths"]) == 2 for g in hook.state_dict()["groups"].values())
    # the optimizer holds exactly the model's (new) parameters
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("min_width,floors", [
    (4, {"encoder": 4, "up": 4, "decoder": 4}),
    ({"decoder": 6, "up.1": 3}, {"encoder": 1, "up.0": 1, "up.1": 3, "decoder": 6}),
], ids=["everywhere", "per-layer"])
def test_width_floors_hold_while_a_high_threshold_prunes(one_thread, min_width, floors):
    torch.manual_seed(0)
    model = build_model({"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                         "channels": [8, 16, 32]})
    hook = Sauron(torch.zeros(1, 1, 32, 32), tau_init=0.9, tau_max=0.95, min_width=min_width)
    summary, _ = _train_steps(model, hook, (2, 1, 32, 32))
    assert summary["removed"] > 0
    for layer, width in summary["widths"].items():
        floor = next(n for path, n in floors.items() if layer.startswith(path))
        assert width >= floor, layer
    # the unfloored layers of the per-layer case do fall under the floored ones' widths
    if isinstance(min_width, dict):
        assert min(w for k, w in summary["widths"].items() if k.startswith("encoder")) < 6


def test_a_fractional_floor_keeps_that_share_of_each_layers_starting_width(one_thread):
    torch.manual_seed(0)
    model = build_model({"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                         "channels": [8, 16, 32]})
    hook = Sauron(torch.zeros(1, 1, 32, 32), tau_init=0.9, tau_max=0.95, min_width=0.4)
    summary, _ = _train_steps(model, hook, (2, 1, 32, 32), epochs=3)
    start = {k: g["widths"][0] for k, g in hook.state_dict()["groups"].items()}
    assert sum(summary["widths"].values()) < sum(start.values())
    assert len(set(start.values())) > 1  # the floor differs between levels
    for layer, width in summary["widths"].items():
        assert width >= math.ceil(0.4 * start[layer]), layer
    # the floor binds: at this threshold most layers end exactly on it
    assert sum(w == math.ceil(0.4 * start[k]) for k, w in summary["widths"].items()) >= len(start) // 2


def test_lambda_zero_adds_no_loss(one_thread):
    model = build_model({"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                         "channels": [4, 8]})
    hook = Sauron(torch.zeros(1, 1, 16, 16), lam=0)
    hook.begin(model)
    model.train()
    model(torch.randn(2, 1, 16, 16))
    assert hook.extra_loss() is None
    hook.close()


def test_after_stop_after_the_network_only_trains(one_thread):
    torch.manual_seed(0)
    model = build_model({"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                         "channels": [8, 16, 32]})
    shape = (2, 1, 32, 32)
    hook = Sauron(torch.zeros(1, *shape[1:]), tau_init=0.7, tau_max=0.9, stop_after=1)
    summary, _ = _train_steps(model, hook, shape, epochs=1)
    assert summary["removed"] > 0  # epoch 1 still prunes
    widths = dict(summary["widths"])
    hook.begin(model)  # as on resume after epoch 1: nothing is measured any more
    model.train()
    model(torch.randn(*shape))
    assert hook.extra_loss() is None and not hook._sums
    opt = torch.optim.Adam(model.parameters())
    summary = hook.end_epoch(model, opt, 2, 0.5, last=False)["sauron"]
    hook.close()
    assert summary["removed"] == 0 and summary["widths"] == widths


@pytest.mark.slow
def test_train_with_sauron_on_kvasir_resumes_identically(tmp_path, shared_data, monkeypatch):
    extra = [*KVASIR_TINY, "train.epochs=3", "prune.method=sauron", "prune.tau_init=0.6",
             "prune.tau_max=0.8"]
    full = train_run(load_config("kvasir-unet", extra) | {"name": "full", "output": str(tmp_path)},
                     data_path=shared_data, progress=False)
    lines = [json.loads(ln) for ln in (full / "metrics.jsonl").read_text().splitlines()]
    flops = [ln["sauron"]["flops"] for ln in lines]
    assert flops[1] < flops[0] and lines[-1]["sauron"]["removed"] == 0  # none after the last epoch
    results = json.loads((full / "results.json").read_text())
    assert results["flops"] == flops[-1] and results["best_epoch"] == 3
    model = load(full)
    assert count_flops(model, torch.zeros(1, 3, 64, 64)) == flops[-1]

    def kill_after_epoch_2(event):
        if event["event"] == "epoch" and event["epoch"] == 2:
            raise KeyboardInterrupt

    import medslim.progress

    cfg = load_config("kvasir-unet", extra) | {"name": "cut", "output": str(tmp_path)}
    with monkeypatch.context() as m:
        m.setattr(medslim.progress, "training_progress",
                  lambda label, enabled=True: (kill_after_epoch_2, lambda: None))
        with pytest.raises(KeyboardInterrupt):
            train_run(cfg, data_path=shared_data)
    resumed = train_run(cfg, data_path=shared_data, resume=True, progress=False)
    again = [json.loads(ln) for ln in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [ln["sauron"]["widths"] for ln in again] == [ln["sauron"]["widths"] for ln in lines]
    assert [ln["train_loss"] for ln in again] == pytest.approx([ln["train_loss"] for ln in lines],
                                                              rel=1e-5)
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(load(resumed)(x), model(x), atol=1e-5)


def test_without_the_plateau_rule_a_settled_group_climbs_every_epoch():
    hook = Sauron(torch.zeros(1, 1, 8, 8), patience=0, plateau=False, tau_steps=3, tau_init=0.0,
                  tau_max=0.3)
    state = GroupState(tau=0.0, widths=[10, 10])
    hook.losses = [1.0, 0.5]  # falling loss does not hold it back
    hook._update_tau(state)
    hook._update_tau(state)
    assert state.tau == pytest.approx(0.2)
    state.widths += [5]  # shedding: it waits
    hook._update_tau(state)
    assert state.tau == pytest.approx(0.2)
