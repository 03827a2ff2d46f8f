"""medslim compare: the plan is checked before any work, the table is built, resuming keeps work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from medslim.compare import build_table, check_compatible, make_plan, read_table, run_compare, table_csv
from medslim.errors import ConfigError
from medslim.pareto import pareto_front

TINY_BASE = {"config": "kvasir-unet",
             "overrides": {"data.limit": 24, "data.size": [32, 32], "model.channels": [4, 8], "train.epochs": 1}}


def write_config(folder: Path, methods: list, **extra) -> Path:
    cfg = {"name": "cmp", "output": str(folder / "runs"), "base": TINY_BASE, "methods": methods,
           "measure": {"threads": 1, "repeats": 2}, **extra}
    path = folder / "compare.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, shared_data):
    """A tiny comparison with one method of every kind that trains or prunes on Kvasir-SEG."""
    folder = tmp_path_factory.mktemp("compare")
    methods = [{"method": "l1", "flops_ratio": 0.5, "finetune_epochs": 1},
               {"method": "uniform", "flops_ratio": 0.5, "finetune_epochs": 1},
               {"method": "sauron", "options": {"lam": 0.5}},
               {"method": "sshn", "phis": [0.25, 0.5],
                "overrides": {"model.channels": [4, 4], "train.epochs": 1}},
               {"method": "lowres", "input_size": 16}]
    config = write_config(folder, methods)
    result = run_compare(config, data_path=str(shared_data), progress=False)
    return config, result


def test_the_report_of_a_comparison_goes_beside_its_table(finished):
    from medslim.report import report_comparison

    _, folder = finished
    page = report_comparison(folder)
    assert page == folder / "report" / "report.html" and "lowres-16" in page.read_text()
    assert (folder / "report" / "dice-vs-flops.svg").exists()


def test_every_model_gets_a_row_with_quality_cost_and_fronts(finished):
    _, folder = finished
    table = read_table(folder)
    labels = [r["label"] for r in table["rows"]]
    assert labels == ["base", "l1-f0.5", "uniform-f0.5", "sauron", "sshn-phi0.25", "sshn-phi0.5", "lowres-16"]
    assert table["dataset"] == "kvasir-seg" and table["metric"] == "dice"
    for r in table["rows"]:
        assert 0 <= r["dice"] <= 1 and "foreground" in r["dice_per_class"]
        assert r["params"] > 0 and r["flops"] > 0 and r["torch_ms"] > 0 and r["ort_ms"] > 0 and r["peak_mb"] > 0
        assert Path(r["run"], "model.safetensors").exists()
    base, pruned = table["rows"][0], table["rows"][1]
    assert pruned["flops"] < base["flops"] and pruned["params"] < base["params"]
    lowres = table["rows"][-1]
    assert lowres["input_shape"] == [1, 3, 16, 16]  # costed at the size it is fed
    for axis in ("flops", "params", "torch_ms", "ort_ms"):
        expected = set(pareto_front([r[axis] for r in table["rows"]], [r["dice"] for r in table["rows"]]))
        assert {i for i, r in enumerate(table["rows"]) if r[f"front_{axis}"]} == expected


def test_the_table_is_written_as_csv(finished):
    _, folder = finished
    lines = (folder / "table.csv").read_text().splitlines()
    assert lines[0].startswith("label,method,kind,dice") and "dice[foreground]" in lines[0]
    assert len(lines) == 1 + 7


def test_every_row_says_how_to_make_it_again(finished):
    _, folder = finished
    rows = {r["label"]: r for r in read_table(folder)["rows"]}
    assert rows["l1-f0.5"]["reproduce"].startswith("medslim prune ")
    assert "--method l1 --flops-ratio 0.5 --finetune-epochs 1" in rows["l1-f0.5"]["reproduce"]
    assert rows["sauron"]["reproduce"].endswith("--prune sauron") and "prune.lam=0.5" in rows["sauron"]["reproduce"]
    assert "--input-size 16 16 --output-size 32 32" in rows["lowres-16"]["reproduce"]
    assert "data.size=[32,32]" in rows["sshn-phi0.5"]["reproduce"]  # the base's data, not the sshn config's
    assert "medslim sshn export" in rows["sshn-phi0.5"]["reproduce"]


def test_running_again_resumes_without_making_anything_again(finished, shared_data, capsys):
    config, folder = finished
    made = sorted((folder / "runs").glob("*/model.safetensors")) + sorted(folder.glob("costs/*.json"))
    assert len(made) >= 14  # 7 models and their costs
    before = {p: p.stat().st_mtime_ns for p in made}
    run_compare(config, data_path=str(shared_data), progress=True)
    assert {p: p.stat().st_mtime_ns for p in made} == before
    said = capsys.readouterr().err
    for label in ("base", "l1-f0.5", "uniform-f0.5", "sauron", "sshn", "lowres-16"):
        assert f"] {label}: made before: kept" in said, label
    assert len(read_table(folder)["rows"]) == 7


def test_a_hypernetwork_is_not_trained_again_while_its_exports_are_kept(finished, shared_data):
    config, folder = finished
    hyper, aside = folder / "runs" / "sshn", folder / "sshn-aside"
    hyper.replace(aside)  # the user removed it to save space; the exported U-Nets are what the table uses
    try:
        run_compare(config, data_path=str(shared_data), progress=False)
        assert not hyper.exists() and not (folder / "runs" / ".sshn.partial").exists()
    finally:
        aside.replace(hyper)


def test_a_label_whose_settings_changed_is_refused(finished, shared_data, tmp_path):
    config, folder = finished
    cfg = yaml.safe_load(config.read_text())
    cfg["methods"][0]["flops_ratio"] = 0.4
    cfg["methods"][0]["label"] = "l1-f0.5"
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="l1-f0.5 made with other settings"):
        run_compare(changed, data_path=str(shared_data), progress=False)
    cfg = yaml.safe_load(config.read_text())
    cfg["base"]["overrides"]["train.epochs"] = 2
    changed.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="base made with other settings"):
        run_compare(changed, data_path=str(shared_data), progress=False)


def test_an_imported_run_of_another_split_or_dataset_is_refused(finished, tmp_path):
    _, folder = finished
    signature = read_table(folder)["split_signature"]
    run = tmp_path / "copy"
    shutil.copytree(folder / "runs" / "l1-f0.5", run)
    check_compatible(run, "kvasir-seg", signature)  # an unchanged copy fits
    with pytest.raises(ConfigError, match="made on 'kvasir-seg', not 'hippocampus'"):
        check_compatible(run, "hippocampus", signature)
    split = json.loads((run / "split.json").read_text())
    split["test"] = split["test"][1:]
    (run / "split.json").write_text(json.dumps(split))
    with pytest.raises(ConfigError, match="different split"):
        check_compatible(run, "kvasir-seg", signature)


def test_a_run_of_another_dataset_is_refused_with_the_plan(finished, tmp_path, shared_data):
    _, folder = finished
    run = tmp_path / "elsewhere"
    shutil.copytree(folder / "runs" / "l1-f0.5", run)
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "dataset": "pneumoniamnist"}))
    config = write_config(tmp_path, [{"method": "run", "run": str(run)}])
    with pytest.raises(ConfigError, match=r"methods\[0\].run: .*elsewhere was made on 'pneumoniamnist', "
                                          r"not 'kvasir-seg' \(the base's\)"):
        run_compare(config, data_path=str(shared_data), progress=False)
    assert not (tmp_path / "runs").exists()  # refused before the base was trained


def test_a_table_of_another_format_version_is_refused(finished, tmp_path):
    _, folder = finished
    table = read_table(folder)
    table["format_version"] = 99
    (tmp_path / "table.json").write_text(json.dumps(table))
    with pytest.raises(ConfigError, match="table format 99"):
        read_table(tmp_path)
    with pytest.raises(ConfigError, match="not a finished medslim comparison"):
        read_table(tmp_path / "nothing")


@pytest.mark.parametrize("methods, extra, message", [
    ([{"method": "l3", "flops_ratio": 0.5}], {}, "unknown method 'l3'; choose one of: .*fpgm.*sshn"),
    ([{"method": "l1", "flops_ratio": 0.5, "epochs": 3}], {},
     "unknown option 'epochs' in methods\\[0\\] \\(method 'l1'\\); allowed: .*finetune_epochs"),
    ([{"method": "l1"}], {}, "methods\\[0\\]: give exactly one target"),
    ([{"method": "taylor", "flops_ratio": 0.5, "options": {"batch": 4}}], {},
     "unknown option 'batch' in methods\\[0\\].options; allowed: .*batches"),
    ([{"method": "l1", "flops_ratio": 1.5}], {}, "methods\\[0\\]: flops_ratio must be in \\(0, 1\\]"),
    # the pruner's own limits, checked before any training starts
    ([{"method": "l1", "flops_ratio": 0.5, "max_fraction": 1}], {}, "methods\\[0\\]: max_fraction must be in \\(0, 1\\)"),
    ([{"method": "l1", "flops_ratio": 0.5, "steps": 0}], {}, "methods\\[0\\]: steps must be a positive"),
    ([{"method": "l1", "flops_ratio": 0.5, "options": {"normalize": "median"}}], {}, "normalize='median'"),
    ([{"method": "l1", "flops_ratio": 0.5, "schedule": "often"}], {}, "schedule='often' is not one of"),
    ([{"method": "l1", "flops_ratio": 0.5, "finetune_lr": -1}], {}, "finetune_lr must be a positive number"),
    ([{"method": "sauron", "options": {"lambda": 1}}], {}, "unknown Sauron option 'lambda'.*allowed: .*lam"),
    ([{"method": "channel_scaling", "params_ratio": 0.1}], {}, "channel_scaling selects channels of a classifier"),
    ([{"method": "lowres"}], {}, "lowres needs input_size"),
    ([{"method": "sshn", "phis": [0, 0.5]}], {}, "--phis must lie in"),
    ([{"method": "run"}], {}, "give its folder as 'run'"),
    ([{"method": "l1", "flops_ratio": 0.5}, {"method": "l1", "flops_ratio": 0.5}], {}, "label 'l1-f0.5' is used twice"),
    ([], {}, "'methods' must be a non-empty list"),
    ([{"method": "l1", "flops_ratio": 0.5}], {"measure": {"threads": 0}}, "measure.threads must be a positive integer"),
    ([{"method": "l1", "flops_ratio": 0.5}], {"measure": {"thread": 1}}, "unknown option 'thread' in measure"),
    ([{"method": "l1", "flops_ratio": 0.5}], {"budget": 3}, "unknown compare config key 'budget'"),
    ([{"method": "l1", "flops_ratio": 0.5}], {"base": {"config": "kvasir-unet", "overrides": {"data.dataset": "colon"}}},
     "unknown data.dataset 'colon'"),
    ([{"method": "l1", "flops_ratio": 0.5}], {"base": {"config": "kvasir-unet", "overrides": {"train.optimiser": "adam"}}},
     "unknown option 'train.optimiser'"),
    ([{"method": "l1", "flops_ratio": 0.5}], {"base": {"run": "/nowhere"}}, "base.run: /nowhere is not a finished"),
])
def test_bad_configs_fail_before_any_work_naming_the_key(tmp_path, shared_data, methods, extra, message):
    config = write_config(tmp_path, methods, **extra)
    with pytest.raises(ConfigError, match=message):
        run_compare(config, data_path=str(shared_data), progress=False)
    assert not (tmp_path / "runs").exists()


def test_a_dataset_that_cannot_be_found_fails_before_training(tmp_path):
    config = write_config(tmp_path, [{"method": "l1", "flops_ratio": 0.5}])
    from medslim.errors import DataError

    with pytest.raises(DataError, match="nowhere"):
        make_plan(config, data_path=str(tmp_path / "nowhere"))


def test_the_builtin_compare_configs_are_valid(shared_data):
    for name, dataset in (("kvasir-demo", "kvasir-seg"), ("kvasir-methods", "kvasir-seg"),
                          ("hippocampus-methods", "hippocampus")):
        plan = make_plan(name, data_path=str(shared_data))
        assert plan.dataset == dataset and len(plan.entries) >= 2
    with pytest.raises(ConfigError, match="built-in compare configs: hippocampus-methods, kvasir-demo, "
                                          "kvasir-methods"):
        make_plan("kvasir-nothing")


def _row(label, dice, flops, params=100, ort=1.0, **extra):
    return {"label": label, "method": label.split("-")[0], "kind": "prune", "dice": dice, "flops": flops,
            "params": params, "torch_ms": 2 * (ort or 1), "ort_ms": ort, "dice_per_class": {"a": dice, "b": dice / 2},
            **extra}


def test_build_table_marks_each_front_and_csv_has_per_class_columns():
    rows = [_row("base", 0.8, 100, ort=3.0), _row("x-1", 0.7, 50, ort=1.0), _row("y-1", 0.6, 60, ort=0.5),
            _row("z-1", 0.75, 40, ort=None)]
    table = build_table(rows, "kvasir-seg", "abc", {"threads": 1, "repeats": 2}, "t")
    assert [r["front_flops"] for r in table["rows"]] == [True, False, False, True]
    assert [r["front_torch_ms"] for r in table["rows"]] == [True, False, True, True]
    assert [r["front_ort_ms"] for r in table["rows"]] == [True, True, True, None]  # z has no ORT time
    text = table_csv(table)
    header, first = text.splitlines()[:2]
    assert "dice[a],dice[b]" in header
    assert first.startswith("base,base,prune,0.8,")


def test_compare_command_line_refuses_a_bad_config_with_exit_2(tmp_path, capsys):
    from medslim.cli import main

    config = write_config(tmp_path, [{"method": "prune-everything", "flops_ratio": 0.5}])
    assert main(["compare", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'prune-everything'" in err and "sauron" in err
    assert not (tmp_path / "runs").exists()


def test_a_classifier_comparison_with_channel_scaling(tmp_path, shared_data):
    base = {"config": "pneumoniamnist-vgg",
            "overrides": {"data.limit": 64, "model.width": 0.125, "model.hidden": 0, "train.epochs": 1,
                          "train.batch_size": 16}}
    methods = [{"method": "l1", "params_ratio": 0.5},
               {"method": "channel_scaling", "options": {"epochs": 1, "lr": 0.2, "threshold": 0.9,
                                                         "rounds": 2, "lam": 0.01}}]
    config = write_config(tmp_path, methods, base=base)
    folder = run_compare(config, data_path=str(shared_data), progress=False)
    table = read_table(folder)
    assert table["metric"] == "auc" and [r["label"] for r in table["rows"]] == ["base", "l1-p0.5", "channel_scaling"]
    for r in table["rows"]:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["auc"] <= 1 and "dice" not in r
    assert table["rows"][2]["params"] < table["rows"][0]["params"]
    from medslim.report import report_comparison

    text = report_comparison(folder).read_text()
    assert "auc-vs-flops.png" in text and "Per class" not in text


def test_expected_work_counts_epochs_at_the_base_size(finished, shared_data):
    from medslim.compare import expected_work

    config, _ = finished
    work = expected_work(make_plan(config, data_path=str(shared_data)))
    # base 1 epoch; l1 and uniform 1 fine-tuning epoch + pruning; sauron 1; sshn 1 + 2 exports;
    # lowres 16/32 px: a quarter of the pixels; then 7 models to measure
    assert work == pytest.approx([1, 1.2, 1.2, 1, 1.1, 0.25, 0.35])


def test_a_3d_comparison_reports_each_class(tmp_path, shared_data):
    base = {"config": "hippocampus-unet",
            "overrides": {"data.limit": 8, "data.size": [24, 32, 24], "model.channels": [4, 8, 16],
                          "train.epochs": 1, "train.batch_size": 2}}
    config = write_config(tmp_path, [{"method": "taylor_gn", "flops_ratio": 0.5}], base=base)
    folder = run_compare(config, data_path=str(shared_data), progress=False)
    rows = read_table(folder)["rows"]
    assert [r["label"] for r in rows] == ["base", "taylor_gn-f0.5"]
    assert set(rows[1]["dice_per_class"]) == {"Anterior", "Posterior"}
    assert rows[1]["flops"] < rows[0]["flops"]
    from medslim.report import report_comparison

    text = report_comparison(folder).read_text()
    assert "Dice Anterior" in text and "Dice Posterior" in text


def test_report_takes_run_folders_and_measures_them_once(finished, tmp_path, monkeypatch):
    from medslim.report import report_paths

    _, folder = finished
    runs = [folder / "runs" / "base", folder / "runs" / "l1-f0.5"]
    out = report_paths(runs, tmp_path / "r")
    table = json.loads((out / "table.json").read_text())
    assert [r["label"] for r in table["rows"]] == ["base", "l1-f0.5"]
    assert table["rows"][1]["method"] == "l1" and table["rows"][1]["ort_ms"] > 0
    cached = sorted(p.name for p in (out / "costs").iterdir())
    assert cached == ["base.json", "l1-f0.5.json"]
    (tmp_path / "r" / "report.html").unlink()

    def measure_again(*args, **kwargs):
        raise AssertionError("a cost was measured again")

    monkeypatch.setattr("medslim.cost.measure", measure_again)
    report_paths(runs, tmp_path / "r")  # again: the costs are reused, the report written anew
    assert (tmp_path / "r" / "report.html").exists()
