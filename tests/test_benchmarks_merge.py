"""Benchmark helpers: results added to the recorded JSON instead of replacing it (benchmarks/_merge.py and the
reports), and ONNX Runtime timing in turns (benchmarks/onnx_timing.py)."""

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _merge  # noqa: E402
import sshn  # noqa: E402


def test_merged_rows_replaces_the_same_run_and_keeps_the_others():
    old = [{"run": "a", "dice": 0.1}, {"run": "b", "dice": 0.2}]
    new = [{"run": "b", "dice": 0.9}, {"run": "c", "dice": 0.3}]
    assert _merge.merged_rows(old, new) == [{"run": "a", "dice": 0.1}, {"run": "b", "dice": 0.9},
                                            {"run": "c", "dice": 0.3}]


def test_earlier_report_is_empty_without_a_file(tmp_path):
    assert _merge.earlier_report(tmp_path / "none.json") == {}


def test_earlier_report_refuses_a_corrupt_file_and_names_it(tmp_path):
    bad = tmp_path / "pruning.json"
    bad.write_text('{"rows": [')
    with pytest.raises(SystemExit, match="pruning.json"):
        _merge.earlier_report(bad)
    assert bad.read_text() == '{"rows": ['  # left as it was


def test_sshn_seed_entries_merge_part_by_part():
    old = [{"seed": 0, "sweeps": {"sshn": [1]}, "fixed": {"0.5": {"dice": 0.8}}, "train_seconds": {"sshn": 10.0}},
           {"seed": 1, "sweeps": {}, "fixed": {"0.5": {"dice": 0.7}}, "train_seconds": {}}]
    new = [{"seed": 1, "sweeps": {}, "fixed": {"0.1": {"dice": 0.6}}, "train_seconds": {"fixed-0.1": 5.0}}]
    merged = sshn.merged_seeds(old, new)
    assert [s["seed"] for s in merged] == [0, 1]
    assert merged[0] == old[0]
    assert merged[1]["fixed"] == {"0.5": {"dice": 0.7}, "0.1": {"dice": 0.6}}
    assert merged[1]["train_seconds"] == {"fixed-0.1": 5.0}


def test_lowres_keeps_earlier_rows_only_when_trained_alike(tmp_path):
    import json
    from argparse import Namespace

    import lowres

    out = tmp_path / "lowres.json"
    out.write_text(json.dumps({"output_size": 128, "epochs": 15, "full_epochs": 6, "rows": [{"run": "r0"}]}))
    assert lowres.earlier_rows(out, Namespace(output_size=128, epochs=15, full_epochs=6)) == [{"run": "r0"}]
    assert lowres.earlier_rows(out, Namespace(output_size=128, epochs=8, full_epochs=6)) == []


def test_lowres_timing_reaches_earlier_rows_of_the_same_network():
    import lowres

    rows = [{"arm": "jnet", "input_size": 32, "fps": 1.0}, {"arm": "jnet-default", "input_size": 32},
            {"arm": "bilinear", "input_size": 64, "fps": 2.0}]
    lowres.with_speed(rows, {"jnet-32": {"fps": 5.0}})
    assert [r.get("fps") for r in rows] == [5.0, 5.0, 2.0]


def test_lowres_ablation_rows_added_later_take_the_recorded_timing_of_their_network():
    import lowres

    rows = [{"arm": "jnet", "input_size": 64, "fps": 165.0, "median_ms": 6.06},
            {"arm": "jnet-default", "input_size": 64}, {"arm": "jnet-default", "input_size": 32}]
    lowres.with_speed(rows, {})  # this report timed nothing
    assert [r.get("fps") for r in rows] == [165.0, 165.0, None]
    assert rows[1]["median_ms"] == 6.06


def test_pruning_report_takes_a_cleaned_away_baseline_from_the_recorded_rows(tmp_path):
    from argparse import Namespace

    import pruning

    base = tmp_path / "baseline-kvasir-s1"
    recorded = [{"run": "baseline-kvasir-s1", "dice": 0.82, "flops": 1e9, "train_seconds": 2900.0}]
    report = Namespace(report_only=True, out="pruning.json")
    assert pruning.recorded_baseline(base, recorded, report) == recorded[0]
    with pytest.raises(SystemExit, match="baseline-kvasir-s1"):
        pruning.recorded_baseline(base, [], report)
    # a training run, or a finished baseline folder: the run itself is the source
    assert pruning.recorded_baseline(base, recorded, Namespace(report_only=False, out="x")) is None
    base.mkdir()
    (base / "results.json").write_text("{}")
    assert pruning.recorded_baseline(base, recorded, report) is None


def test_pruning_rows_cut_to_the_recorded_sauron_ratio_of_their_own_seed():
    import pruning

    recorded = [{"run": "sauron-kvasir-s0", "flops_ratio": 0.3531},
                {"run": "sauron-lam0-kvasir-s1", "flops_ratio": 0.368},
                {"run": "sauron-hippocampus-s1", "flops_ratio": 0.515}]
    assert pruning.recorded_sauron_ratio("kvasir", 0, recorded) == 0.3531
    # lambda 0 or another dataset's Sauron is not this seed's cut
    assert pruning.recorded_sauron_ratio("kvasir", 1, recorded) is None
    assert pruning.recorded_sauron_ratio("kvasir", 2, recorded) is None


def test_pruning_slimming_with_its_sparsity_training_is_a_method_of_its_own(capsys):
    import pruning

    args = pruning.parse_args(["--methods", "slimming-sparse", "--level-methods", "slimming-sparse",
                               "--sparsity", "5e-5"])
    assert args.methods == ["slimming-sparse"] and args.sparsity == 5e-5
    with pytest.raises(SystemExit):
        pruning.parse_args(["--methods", "slimming-l1"])
    assert "--methods: invalid choice: 'slimming-l1'" in capsys.readouterr().err


def test_sshn_sweep_lists_each_factor_once():
    assert sshn.sweep_phis("0.1,0.5,0.6,1.0") == [0.1, 0.5, 0.6, 1.0, 0.7, 0.8]
    assert sshn.sweep_phis("0.1,0.5") == [0.1, 0.5, 0.6, 0.7, 0.8, 1.0]
    assert sshn.sweep_phis("0.1,0.1,0.6") == [0.1, 0.6, 0.7, 0.8, 1.0]


def test_sshn_benchmark_refuses_a_bad_phi_list_before_training(capsys):
    with pytest.raises(SystemExit):
        sshn.parse_args(["--phis", "0.1:x"])
    assert "--phis '0.1:x'" in capsys.readouterr().err
    assert sshn.parse_args(["--phis", "0.1:0.5:5"]).phis == "0.1:0.5:5"


def test_sshn_narrow_row_trains_over_its_own_range_and_is_compared_per_seed():
    spec = {"name": "sshn", "phi_range": [0.0, 0.5], "hidden": [4], "features": 8}
    assert sshn.model_spec(spec, "sshn-narrow", None)["phi_range"] == sshn.NARROW_RANGE
    assert spec["phi_range"] == [0.0, 0.5]  # the config's own section is left alone
    stochastic = sshn.model_spec(spec, "stochastic-narrow", None)
    assert stochastic["name"] == "unet" and stochastic["phi_range"] == sshn.NARROW_RANGE
    assert sshn.model_spec(spec, "stochastic", None)["phi_range"] == [0.0, 0.5]
    rows = lambda *dice: [{"phi": phi, "dice": d, "flops": 1, "ort_ms_1t": 1.0}  # noqa: E731
                          for phi, d in zip((0.1, 0.3), dice)]
    data = {"seeds": [{"seed": 0, "fixed": {"0.3": {"dice": 0.70}},
                       "sweeps": {"sshn": rows(0.5, 0.60), "sshn-narrow": rows(0.3, 0.72)}},
                      {"seed": 1, "fixed": {"0.3": {"dice": 0.80}},
                       "sweeps": {"sshn": rows(0.5, 0.70), "sshn-narrow": rows(0.3, 0.78)}}]}
    assert sshn._paired(data, 0.3, "sshn-narrow")[0] == pytest.approx(0.0)
    assert sshn._paired(data, 0.3, "sshn-narrow", "sshn")[0] == pytest.approx(0.1)
    assert [p["in_range"] for p in sshn.curve(data, "sshn-narrow")] == [False, True]
    assert [p["in_range"] for p in sshn.curve(data, "sshn")] == [True, True]


def test_sshn_fixed_from_borrows_the_earlier_reports_fixed_unets_but_not_their_times(tmp_path):
    earlier = {"dataset": "kvasir", "epochs": 30, "fixed_phis": [0.3, 0.5],
               "raw": {"seeds": [{"seed": 0, "fixed": {"0.5": {"dice": 0.80}},
                                  "sweeps": {"sshn-narrow": [{"phi": 0.5, "dice": 0.1}]},
                                  "train_seconds": {"fixed-0.5": 900.0, "sshn-narrow": 880.0}}]}}
    path = tmp_path / "e30.json"
    path.write_text(json.dumps(earlier))
    args = sshn.parse_args(["--models", "sshn-narrow", "--epochs", "54", "--fixed-from", str(path)])
    assert args.fixed_from["epochs"] == 30 and args.fixed_from["fixed_phis"] == [0.5]  # the factors it holds
    own = [{"seed": 0, "sweeps": {"sshn-narrow": [{"phi": 0.5, "dice": 0.79}]}, "fixed": {"0.5": {"dice": 0.5}},
            "train_seconds": {"sshn-narrow": 1600.0, "fixed-0.5": 1.0}},
           {"seed": 1, "sweeps": {}, "fixed": {}, "train_seconds": {}}]
    seeds = sshn.with_fixed_from(own, args.fixed_from)
    assert seeds[0]["fixed"] == {"0.5": {"dice": 0.80}}  # the earlier report's, not a local one
    assert seeds[0]["train_seconds"] == {"sshn-narrow": 1600.0}  # times of another day do not compare
    assert seeds[0]["sweeps"]["sshn-narrow"][0]["dice"] == 0.79
    assert seeds[1]["fixed"] == {}
    assert sshn._paired({"seeds": seeds}, 0.5, "sshn-narrow")[0] == pytest.approx(-0.01)
    assert "narrow_over_fixed_0.5" not in sshn.training_times({"seeds": seeds})[0]
    paired = [{"seed": 0, "train_seconds": {"sshn-narrow": 1600.0, "fixed-0.5": 800.0}}]
    assert sshn.training_times({"seeds": paired})[0]["narrow_over_fixed_0.5"] == pytest.approx(2.0)


@pytest.mark.parametrize("content, message", [("{", "not a report"), ('{"raw": {}}', "not a report"),
                                              ('{"dataset": "hippocampus", "raw": {"seeds": []}}', "hippocampus"),
                                              ('{"dataset": "kvasir", "epochs": 30, "raw": {"seeds": [{"seed": 0}]}}',
                                               "no fixed U-Net"),
                                              ('{"dataset": "kvasir", "raw": {"seeds": [{"seed": 0}]}}', "epochs"),
                                              ('{"dataset": "kvasir", "epochs": 30, "raw": {"seeds": [3]}}',
                                               "not a report")])
def test_sshn_fixed_from_refuses_a_report_it_cannot_use_and_names_it(tmp_path, capsys, content, message):
    path = tmp_path / "other.json"
    path.write_text(content)
    with pytest.raises(SystemExit):
        sshn.parse_args(["--models", "sshn-narrow", "--fixed-from", str(path)])
    err = capsys.readouterr().err
    assert "other.json" in err and message in err


def test_sshn_report_refuses_to_mix_fixed_unets_of_another_origin(tmp_path):
    earlier = tmp_path / "e30.json"
    earlier.write_text(json.dumps({"dataset": "kvasir", "epochs": 30,
                                   "raw": {"seeds": [{"seed": 0, "fixed": {"0.5": {"dice": 0.8}}}]}}))
    out = tmp_path / "e54.json"
    out.write_text(json.dumps({"epochs": 54, "fixed_from": str(earlier), "raw": {"seeds": []}}))
    own = sshn.parse_args(["--models", "sshn-narrow", "--epochs", "54", "--out", str(out)])
    with pytest.raises(SystemExit, match="e30.json"):  # it would label borrowed 30-epoch rows as its own
        sshn.check_same_fixed_unets(json.loads(out.read_text()), own, out)
    same = sshn.parse_args(["--models", "sshn-narrow", "--epochs", "54", "--out", str(out),
                            "--fixed-from", str(earlier)])
    sshn.check_same_fixed_unets(json.loads(out.read_text()), same, out)
    assert same.fixed_from["fixed_phis"] == [0.5]  # the borrowed factors, not the --fixed-phis default


def test_sshn_fixed_from_refuses_to_train_fixed_unets_too(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sshn.parse_args(["--models", "sshn-narrow", "fixed", "--fixed-from", str(tmp_path / "x.json")])
    assert "drop 'fixed'" in capsys.readouterr().err


def test_sauron_budget_names_its_runs_by_what_differs_from_the_paper(capsys):
    import sauron_budget

    args = sauron_budget.parse_args(["--epochs", "60", "--tau-max", "0.5"])
    runs = sauron_budget.variants("kvasir", 0, args)
    assert list(runs) == ["baseline-e60-kvasir-s0", "sauron-e60-kvasir-s0", "sauron-tau05-kvasir-s0"]
    assert "train.epochs=60" in runs["sauron-e60-kvasir-s0"]
    assert "prune.tau_max=0.5" in runs["sauron-tau05-kvasir-s0"]
    assert not any(o.startswith("prune.") for o in runs["baseline-e60-kvasir-s0"])
    only = sauron_budget.variants("kvasir", 1, sauron_budget.parse_args(["--variants", "ceiling", "--tau-max", "0.45"]))
    assert list(only) == ["sauron-tau045-kvasir-s1"]
    both = sauron_budget.variants("kvasir", 0, sauron_budget.parse_args(["--variants", "both", "--epochs", "60"]))
    assert list(both) == ["sauron-e60-tau05-kvasir-s0"]
    assert {"train.epochs=60", "prune.tau_max=0.5"} <= set(both["sauron-e60-tau05-kvasir-s0"])
    settled = sauron_budget.variants("kvasir", 0, sauron_budget.parse_args(
        ["--variants", "both", "ceiling", "--epochs", "60", "--settle", "15"]))
    assert settled["sauron-e60-tau05-settle15-kvasir-s0"][-1] == "prune.stop_after=45"
    assert settled["sauron-tau05-settle15-kvasir-s0"][-1] == "prune.stop_after=15"  # of the config's 30 epochs
    floored = sauron_budget.variants("hippocampus", 1, sauron_budget.parse_args(
        ["--variants", "ceiling", "--tau-max", "0.6", "--settle", "6", "--min-width", "{decoder.2.3: 8}"]))
    assert floored == {"sauron-tau06-settle6-min-decoder.2.3x8-hippocampus-s1": [
        *floored["sauron-tau06-settle6-min-decoder.2.3x8-hippocampus-s1"][:-2],
        "prune.stop_after=24", 'prune.min_width={"decoder.2.3": 8}']}
    from medslim.config import parse_override
    assert parse_override('prune.min_width={"decoder.2.3": 8}') == ("prune.min_width", {"decoder.2.3": 8})
    everywhere = sauron_budget.variants("kvasir", 0, sauron_budget.parse_args(["--variants", "both", "--min-width", "4"]))
    assert list(everywhere) == ["sauron-e60-tau05-min4-kvasir-s0"]
    assert everywhere["sauron-e60-tau05-min4-kvasir-s0"][-1] == "prune.min_width=4"
    share = sauron_budget.variants("kvasir", 0, sauron_budget.parse_args(["--variants", "both", "--min-width", "0.25"]))
    assert share == {"sauron-e60-tau05-min0.25-kvasir-s0": [*share["sauron-e60-tau05-min0.25-kvasir-s0"][:-1],
                                                            "prune.min_width=0.25"]}
    assert parse_override("prune.min_width=0.25") == ("prune.min_width", 0.25)
    alone = sauron_budget.variants("kvasir", 2, sauron_budget.parse_args(["--variants", "baseline", "--epochs", "60"]))
    assert alone == {"baseline-e60-kvasir-s2": ["train.epochs=60"]}
    for bad, said in ((["--epochs", "0"], "--epochs must be at least 1, got 0"),
                      (["--tau-max", "2"], "--tau-max must lie in [0.001, 1], got 2.0"),
                      (["--epochs", "20", "--settle", "20"], "--settle must lie in [0, --epochs), got 20"),
                      (["--min-width", "[8]"], "--min-width: give a number or a {layer: number} mapping")):
        with pytest.raises(SystemExit):
            sauron_budget.parse_args(bad)
        assert said in capsys.readouterr().err


def test_sauron_budget_measures_each_drop_against_the_baseline_of_the_same_epochs():
    import sauron_budget

    rows = [{"run": "baseline-kvasir-s0", "epochs": 30, "tau_max": None, "dice": 0.80, "flops": 100},
            {"run": "sauron-kvasir-s0", "epochs": 30, "tau_max": 0.3, "dice": 0.76, "flops": 35,
             "per_epoch": [{"epoch": 1, "tau_median": 0.1}, {"epoch": 2, "tau_median": 0.3}]},
            {"run": "baseline-e60-kvasir-s0", "epochs": 60, "tau_max": None, "dice": 0.83, "flops": 100},
            {"run": "sauron-e60-kvasir-s0", "epochs": 60, "tau_max": 0.3, "dice": 0.80, "flops": 20}]
    out = {r["run"]: r for r in sauron_budget.with_drops(rows)}
    assert out["sauron-kvasir-s0"]["drop_points"] == pytest.approx(4.0)
    assert out["sauron-e60-kvasir-s0"]["drop_points"] == pytest.approx(3.0)  # not 0.0 against the 30-epoch one
    assert out["sauron-e60-kvasir-s0"]["flops_kept"] == pytest.approx(0.2)
    assert out["sauron-kvasir-s0"]["ceiling_epoch"] == 2


def test_sauron_budget_reuses_this_seeds_earlier_rows_whose_runs_are_gone(tmp_path):
    import sauron_budget

    earlier = tmp_path / "sauron-budget.json"
    earlier.write_text(json.dumps({"kvasir": {"rows": [
        {"run": "baseline-e60-kvasir-s0", "seed": 0, "epochs": 60, "tau_max": None, "dice": 0.82, "flops": 100},
        {"run": "baseline-e60-kvasir-s1", "seed": 1, "epochs": 60, "tau_max": None, "dice": 0.70, "flops": 100},
        {"run": "sauron-e60-tau05-kvasir-s0", "seed": 0, "epochs": 60, "tau_max": 0.5, "dice": 0.5, "flops": 9,
         "params": 5, "step_times": {"speedup": 9.9}},
        {"run": "sauron-tau05-kvasir-s0", "seed": 0, "epochs": 30, "tau_max": 0.5, "dice": 0.7, "flops": 20,
         "params": 7, "step_times": {"speedup": 2.5}}]}}))
    fresh = [{"run": "sauron-e60-tau05-kvasir-s0", "seed": 0, "epochs": 60, "tau_max": 0.5, "dice": 0.80, "flops": 10,
              "params": 6},
             {"run": "sauron-tau05-kvasir-s0", "seed": 0, "epochs": 30, "tau_max": 0.5, "dice": 0.7, "flops": 20,
              "params": 7}]
    reused = sauron_budget.earlier_rows("kvasir", 0, earlier, fresh)
    assert [r["run"] for r in reused] == ["baseline-e60-kvasir-s0"]  # not seed 1's, not the stale Sauron row
    assert "step_times" not in fresh[0]  # a different network: its old timing is not carried over
    assert fresh[1]["step_times"] == {"speedup": 2.5}  # the same network, not timed again
    out = {r["run"]: r for r in sauron_budget.with_drops(reused + fresh)}
    assert out["sauron-e60-tau05-kvasir-s0"]["drop_points"] == pytest.approx(2.0)
    assert sauron_budget.earlier_rows("kvasir", 0, tmp_path / "none.json", fresh) == []


def test_a_benchmark_ends_on_medslim_errors_with_one_line_and_code_2(capsys):
    import _cli

    from medslim.errors import DataError

    def bad():
        raise DataError("--data /nowhere: no such folder")

    assert _cli.exit_code(bad) == 2
    assert "--data /nowhere: no such folder" in capsys.readouterr().err
    assert _cli.exit_code(lambda: 0) == 0


def test_sauron_budget_uniform_row_needs_its_two_runs_and_writes_nothing_without_them(tmp_path):
    import sauron_budget
    from medslim.errors import ConfigError

    args = sauron_budget.parse_args(["--variants", "uniform", "--epochs", "60", "--settle", "15",
                                     "--runs", str(tmp_path)])
    with pytest.raises(ConfigError, match="baseline-e60-kvasir-s2.*sauron-e60-tau05-settle15-kvasir-s2"):
        sauron_budget.uniform_run("kvasir", 2, args)
    assert list(tmp_path.iterdir()) == []


def test_sauron_budget_reads_a_uniform_rows_size_from_its_model(tmp_path):
    import sauron_budget
    import torch

    from medslim.artifacts import save
    from medslim.cost import count_flops, count_params
    from medslim.jobs import write_config
    from medslim.models import build_model

    run = tmp_path / "uniform-e60-tau05-settle15-kvasir-s2"  # a prune_run folder: no sizes in results.json
    net = build_model({"name": "unet", "channels": [4, 8], "in_channels": 3})
    save(net, run, extra={"input_shape": [1, 3, 32, 32]})
    write_config(run / "config.yaml", {"seed": 2, "train": {"epochs": 60}, "prune": {"method": None}})
    (run / "results.json").write_text(json.dumps({"test": {"dice": 0.8, "dice_per_class": {"fg": 0.8}},
                                                  "prune_seconds": 123.44, "flops_ratio": 0.1}))
    out = sauron_budget.row(run, sauron_budget.parse_args([]))
    assert out["params"] == count_params(net)
    assert out["flops"] == count_flops(net, torch.zeros(1, 3, 32, 32))
    assert (out["epochs"], out["tau_max"], out["train_seconds"]) == (60, None, 123.4)


_CS_SETTINGS = {"source_epochs": 15, "lr": 1e-3, "params_ratio": 0.05, "lam": 1e-3, "threshold": 0.05,
                "round_epochs": 3, "round_lr": 1e-2, "finetune_epochs": 5, "head_norm_stats": "target"}


def _cs_args(merge, **changes):
    from argparse import Namespace

    import channel_scaling

    settings = {**_CS_SETTINGS, "rounds": 25, "width": 0.25, "size": 64, "epochs": 10, **changes}
    return channel_scaling, Namespace(merge=[str(m) for m in merge], **settings)


def _cs_report(path, seeds, rounds=20, **settings):
    base = {**_CS_SETTINGS, "rounds": rounds, **settings}
    rows = [{"arm": arm, "seed": s, "accuracy": 0.8 + s / 100, "tag": path.name} for s in seeds
            for arm in ("full", "channel_scaling")]
    path.write_text(json.dumps({"width": 0.25, "size": 64, "epochs": 10, "settings": base, "rows": rows}))
    return path


def test_channel_scaling_pools_missing_seeds_first_report_first(tmp_path):
    a = _cs_report(tmp_path / "a.json", [0], rounds=25)
    b = _cs_report(tmp_path / "b.json", [0, 1, 2])
    cs, args = _cs_args([a, b])
    measured = [{"arm": "full", "seed": 2}]
    pooled = cs.pooled_rows(args, measured)
    got = {(r["arm"], r["seed"]): (r["tag"], r["round_budget"]) for r in pooled}
    assert got == {("full", 0): ("a.json", 25), ("channel_scaling", 0): ("a.json", 25),
                   ("full", 1): ("b.json", 20), ("channel_scaling", 1): ("b.json", 20),
                   ("channel_scaling", 2): ("b.json", 20)}  # measured (full, 2) is not taken from b


def test_channel_scaling_refuses_to_pool_other_settings_and_names_them(tmp_path):
    other = _cs_report(tmp_path / "other.json", [0], head_norm_stats="source")
    cs, args = _cs_args([other])
    with pytest.raises(SystemExit, match=r"other.json.*head_norm_stats"):
        cs.pooled_rows(args, [])
    cs, args = _cs_args([_cs_report(tmp_path / "same.json", [0])], epochs=20)
    with pytest.raises(SystemExit, match=r"same.json.*epochs"):
        cs.pooled_rows(args, [])
    cs, args = _cs_args([tmp_path / "missing.json"])
    with pytest.raises(SystemExit, match="missing.json"):
        cs.pooled_rows(args, [])


def test_sessions_in_turns_times_one_call_per_round_after_the_untimed_ones():
    from onnx_timing import sessions_in_turns

    class CountingSession:
        def __init__(self):
            self.calls = 0

        def run(self, outputs, feeds):
            self.calls += 1

    a, b = CountingSession(), CountingSession()
    times = sessions_in_turns({"a": (a, {}), "b": (b, {})}, repeats=3, warmup=1, settle=2)
    assert [len(times["a"]), len(times["b"])] == [3, 3]
    assert a.calls == b.calls == 1 + 3 * (2 + 1)


def test_engine_op_profile_names_operators_and_the_whole_call(tmp_path):
    import engine
    import torch

    from medslim.cost import export_onnx

    x = torch.randn(1, 1, 16, 16)
    path = export_onnx(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Tanh()), x, tmp_path / "m.onnx",
                       exporter="torchscript")["path"]
    prof = engine.op_profile(path, x, tmp_path / "prof", threads=1, warmup=2, calls=3)
    assert "Conv" in prof and prof["(whole call)"] > 0
    with pytest.raises(ValueError, match="calls"):
        engine.op_profile(path, x, tmp_path / "prof", calls=0)


def test_engine_level_widths_rows_and_the_widest_full_resolution_level():
    import engine

    from medslim.cost import count_flops
    from medslim.models import build_model

    shape = (1, 1, 32, 32, 32)  # five levels: 2x2x2 voxels at the bottom
    study = engine.level_widths([[16, 32, 64, 128, 160]], shape, 0.25, threads=[1], repeats=1)
    full, half = study["rows"]
    assert full["flops_ratio"] == 1.0 and full["1t"]["speed_per_flop"] == 1.0  # paired with itself
    assert 0.2 < half["flops_ratio"] < 0.3 and half["1t"]["ms"] > 0
    spec = engine.CASES["3D"][0]
    x = torch.zeros(*shape)
    flops0 = count_flops(build_model(spec).eval(), x)

    def kept(w0):
        return count_flops(build_model({**spec, "channels": [w0, 8, 8, 8, 8]}).eval(), x) / flops0

    widest = study["widest_full_res"]
    assert widest % 8 == 0 and kept(widest) <= 0.25 < kept(widest + 8)
    with pytest.raises(argparse.ArgumentTypeError, match="5 widths"):
        engine.widths_list("16,32")


def test_lowres_guided_probe_starts_as_bilinear_and_pairs_seeds():
    import lowres_guided as lg

    from medslim.models import build_model

    def net(guided):
        torch.manual_seed(0)
        backbone = build_model({"name": "unet", "spatial_dims": 2, "in_channels": 3, "out_channels": 2,
                                "channels": [4, 8]})
        return lg.ShrinkThenUpsample(backbone, 8, classes=2, guided=guided)

    x = torch.randn(2, 3, 32, 32)
    plain, guided = net(False).eval(), net(True).eval()
    assert sum(p.numel() for p in guided.guide.parameters()) == 194
    torch.testing.assert_close(guided(x), plain(x))  # the zero-initialised refinement adds nothing yet
    up, low = guided.train()(x)
    assert up.shape == (2, 2, 32, 32) and low.shape == (2, 2, 8, 8)
    rows = [{"arm": "bilinear", "seed": 0, "dice": 0.5}, {"arm": "guided", "seed": 0, "dice": 0.6},
            {"arm": "bilinear", "seed": 1, "dice": 0.7}]
    s = lg.summary(rows)
    assert s["guided_minus_bilinear"]["per_seed"] == [pytest.approx(0.1)]  # seed 1 has no guided row
    assert s["bilinear"]["n"] == 2 and s["guided"]["sd"] == 0.0
