import json
import re
import subprocess
import sys

import pytest

from medslim.cli import main

TINY = ["-o", "data.limit=24", "-o", "data.size=[32,32]", "-o", "model.channels=[4,8]",
        "-o", "train.epochs=1", "--quiet"]


def test_help_lists_every_command_with_examples():
    out = subprocess.run([sys.executable, "-m", "medslim", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    listed = re.findall(r"^    (\w+) ", out.stdout, flags=re.M)  # the command list, one per line
    assert listed == ["train", "evaluate", "cost", "export", "prune", "sshn", "compare", "report", "data", "demo"]
    assert "examples:" in out.stdout
    sub = subprocess.run([sys.executable, "-m", "medslim", "train", "--help"], capture_output=True, text=True)
    assert "example:" in sub.stdout and "medslim train" in sub.stdout


def test_prune_help_names_every_method():
    # the help text is written by hand (the parser must not import torch); it must not fall behind
    from medslim.pruning.criteria import CRITERIA

    out = subprocess.run([sys.executable, "-m", "medslim", "prune", "--help"], capture_output=True, text=True)
    text = " ".join(out.stdout.split())
    for name in (*CRITERIA, "uniform", "channel_scaling"):
        assert name in text, name


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from medslim.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'monai', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_train_evaluate_cost_export(tmp_path, shared_data, capsys):
    runs = tmp_path / "runs"
    assert main(["train", "kvasir-unet", "--data", str(shared_data), "--output", str(runs),
                 "--name", "cli", *TINY]) == 0
    run = runs / "cli"
    assert "run folder:" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--split", "val"]) == 0
    assert json.loads((run / "evaluation-val.json").read_text())["n_cases"] >= 1
    assert main(["cost", str(run), "--threads", "1", "--repeats", "2"]) == 0
    cost = json.loads((run / "cost.json").read_text())
    assert cost["params"] > 0 and cost["flops"] > 0 and cost["onnx_latency"]["1"]["median_ms"] > 0
    assert main(["export", str(run), "--output", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 0


@pytest.mark.parametrize("argv,message", [
    (["train", "kvasir-unet", "-o", "train.epochs=0"], "train.epochs must be a positive integer"),
    (["train", "kvasir-unet", "-o", "model.name=unet9"], "unknown model 'unet9'"),
    (["train", "no-such-config"], "no built-in config 'no-such-config'"),
    (["evaluate", "/nonexistent/run"], "not a medslim run folder"),
    (["cost", "/nonexistent/run"], "no model at /nonexistent/run"),
    (["data", "fetch", "imagenet"], "unknown dataset 'imagenet'"),
])
def test_bad_input_gives_one_clear_line_and_exit_2(argv, message, tmp_path, capsys):
    code = main([*argv, *(["--output", str(tmp_path)] if argv[0] == "train" else [])])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_low_resolution_training_predicts_full_size_masks(tmp_path, shared_data, capsys):
    from medslim.artifacts import load

    args = ["train", "kvasir-unet", "--data", str(shared_data), "--output", str(tmp_path), "--name", "small",
            "--input-size", "16", "--output-size", "64", "-o", "data.limit=24", "-o", "model.channels=[4,8]",
            "-o", "train.epochs=1", "--quiet"]
    assert main(args) == 0
    run = tmp_path / "small"
    model = load(run)
    assert model.factor == 4 and model.head is not None
    assert model.medslim_manifest["extra"]["input_shape"] == [1, 3, 16, 16]
    import torch

    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 2, 64, 64)
    results = json.loads((run / "results.json").read_text())
    assert 0 <= results["test"]["dice"] <= 1 and results["test"]["n_cases"] >= 1
    assert main(["cost", str(run), "--threads", "1", "--repeats", "2"]) == 0


@pytest.mark.parametrize("argv,message", [
    (["--input-size", "32"], "--input-size and --output-size go together"),
    (["--input-size", "32", "--output-size", "100"], "must be the same whole multiple"),
    (["--input-size", "32", "--output-size", "1024"], "upsampling factor must be 2, 4, 8 or 16"),
    (["-o", "data.size=[32,32]", "-o", "data.label_size=[64,64]"], "use model.name: lowres"),
])
def test_low_resolution_option_errors(argv, message, tmp_path, shared_data, capsys):
    code = main(["train", "kvasir-unet", "--data", str(shared_data), "--output", str(tmp_path), "--quiet",
                 "-o", "data.limit=24", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_missing_data_folder(tmp_path, capsys):
    code = main(["train", "kvasir-unet", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r"),
                 "--quiet"])
    assert code == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # not even an empty --output folder


def test_data_list(shared_data, capsys, monkeypatch):
    monkeypatch.setenv("MEDSLIM_DATA", str(shared_data))
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("kvasir-seg", "hippocampus", "pneumoniamnist"):
        assert name in out


def test_prune_writes_a_smaller_run_that_loads_and_exports(tmp_path, shared_data, capsys):
    runs = tmp_path / "runs"
    assert main(["train", "kvasir-unet", "--data", str(shared_data), "--output", str(runs), "--name", "base",
                 "-o", "model.channels=[8,16,32]", *TINY]) == 0
    assert main(["prune", str(runs / "base"), "--method", "taylor_gn", "--flops-ratio", "0.5",
                 "--schedule", "iterative", "--steps", "2", "--finetune-epochs", "1", "--quiet",
                 "--no-cost"]) == 0
    pruned = runs / "base-taylor_gn-f0.5"
    report = json.loads((pruned / "pruning.json").read_text())
    assert report["flops_ratio"] <= 0.5 * 1.001 and report["steps"] == 2
    assert (pruned / "finetune-step1" / "metrics.jsonl").exists()
    results = json.loads((pruned / "results.json").read_text())
    assert 0 <= results["test"]["dice"] <= 1
    assert main(["export", str(pruned), "--output", str(tmp_path / "p.onnx")]) == 0
    from medslim.artifacts import load
    from medslim.cost import count_params

    assert count_params(load(pruned)) < count_params(load(runs / "base"))
    # both targets: the run is named after both, and both hold
    assert main(["prune", str(runs / "base"), "--method", "l1", "--flops-ratio", "0.6", "--params-ratio", "0.4",
                 "--quiet", "--no-cost"]) == 0
    both = json.loads((runs / "base-l1-f0.6-p0.4" / "results.json").read_text())
    assert both["flops_ratio"] <= 0.6 * 1.001 and both["params_ratio"] <= 0.4 * 1.001
    # a Dice tolerance of 1 always holds (the undo itself is tested in test_pruning_pruner)
    assert main(["prune", str(runs / "base"), "--method", "l1", "--flops-ratio", "0.5", "--schedule",
                 "iterative", "--steps", "2", "--dice-tolerance", "1", "--name", "tol", "--quiet",
                 "--no-cost"]) == 0
    tol = json.loads((runs / "tol" / "pruning.json").read_text())
    assert tol["steps"] == 2 and not any("stopped" in n for n in tol["notes"])
    assert main(["prune", str(runs / "base"), "--method", "l1", "--flops-ratio", "0.5",
                 "--dice-tolerance", "-0.5", "--name", "neg", "--quiet", "--no-cost"]) == 2
    assert "--dice-tolerance" in capsys.readouterr().err
    # --keep: the named layer keeps every output channel; an unknown name is refused before any work
    assert main(["prune", str(runs / "base"), "--method", "l1", "--flops-ratio", "0.5", "--keep", "decoder.0.3",
                 "--name", "kept", "--quiet", "--no-cost"]) == 0
    kept = load(runs / "kept")
    assert kept.decoder[0][3].out_channels == load(runs / "base").decoder[0][3].out_channels
    assert json.loads((runs / "kept" / "pruning.json").read_text())["kept_layers"] == ["decoder.0.3"]
    assert main(["prune", str(runs / "base"), "--method", "l1", "--flops-ratio", "0.5", "--keep", "decoder.0.33",
                 "--name", "typo", "--quiet", "--no-cost"]) == 2
    err = capsys.readouterr().err
    assert "--keep 'decoder.0.33'" in err and "decoder.0.3" in err
    assert not (runs / "typo").exists() and not (runs / ".typo.partial").exists()
    # another tool's pruner (here our engine behind the external hook): the run loads from its weights alone
    from medslim import prune
    from medslim.jobs import prune_run

    external = prune_run(runs / "base", "outside", name="ext", finetune_epochs=1, progress=False, measure=False,
                         external=lambda net, x: prune(net, x, method="l1", flops_ratio=0.5))
    ext = json.loads((external / "pruning.json").read_text())
    assert ext["scope"] == "external" and ext["flops_ratio"] <= 0.5 * 1.001
    assert (external / "finetune-step1" / "metrics.jsonl").exists()
    assert count_params(load(external)) == ext["params_after"]
    code = main(["prune", str(runs / "base"), "--method", "l1", "--flops-ratio", "0.0001", "--name", "tiny"])
    assert code == 2 and "smallest reachable flops_ratio" in capsys.readouterr().err
    assert not (runs / "tiny").exists() and not (runs / ".tiny.partial").exists()


def test_transfer_head_only_then_channel_scaling(tmp_path, shared_data, capsys):
    """Pretrained backbone -> frozen head-only run -> channel scaling, all from the command line."""
    import torch

    from medslim.artifacts import load, save
    from medslim.cost import count_params
    from medslim.models import build_model

    torch.manual_seed(0)
    source = build_model({"name": "vgg16_bn", "in_channels": 3, "num_classes": 4, "width": 0.125, "hidden": 0})
    save(source, tmp_path / "source")  # an RGB network of another task
    runs = tmp_path / "runs"
    small = ["-o", "data.limit=64", "-o", "model.width=0.125", "-o", "model.hidden=0", "-o", "train.epochs=1",
             "-o", "train.batch_size=16", "--quiet"]
    assert main(["train", "pneumoniamnist-vgg", "--data", str(shared_data), "--output", str(runs), "--name", "head",
                 "--pretrained", str(tmp_path / "source"), "--freeze-backbone", *small]) == 0
    results = json.loads((runs / "head" / "results.json").read_text())
    assert results["trainable"] == ["classifier.0.weight", "classifier.0.bias"]
    assert results["pretrained"]["adapted_input_channels"] == ["features.0.weight"]
    head = load(runs / "head")
    src = source.state_dict()
    for name, tensor in head.state_dict().items():  # weights and batch-norm statistics stayed frozen
        if name.startswith("features.") and name != "features.0.weight":
            assert torch.equal(tensor, src[name]), name
    assert torch.allclose(head.features[0].weight, src["features.0.weight"].sum(1, keepdim=True))
    assert main(["train", "pneumoniamnist-vgg", "--data", str(shared_data), "--output", str(runs), "--name",
                 "adabn", "--pretrained", str(tmp_path / "source"), "--freeze-backbone", "--target-norm-stats",
                 *small]) == 0
    adabn = load(runs / "adabn").state_dict()
    assert json.loads((runs / "adabn" / "results.json").read_text())["norms_reestimated"] == 13
    assert torch.equal(adabn["features.1.weight"], src["features.1.weight"])  # statistics only
    assert not torch.allclose(adabn["features.1.running_mean"], src["features.1.running_mean"])
    assert main(["train", "pneumoniamnist-vgg", "--data", str(shared_data), "--output", str(runs), "--name",
                 "nofreeze", "--pretrained", str(tmp_path / "source"), "--target-norm-stats", *small]) == 2
    assert "--target-norm-stats) needs a frozen backbone" in capsys.readouterr().err
    assert not (runs / "nofreeze").exists() and not (runs / ".nofreeze.partial").exists()

    assert main(["prune", str(runs / "head"), "--method", "channel_scaling", "--params-ratio", "0.6",
                 "--option", "epochs=1", "--option", "lr=0.2", "--option", "threshold=0.9", "--option", "rounds=3",
                 "--option", "lam=0.01", "--quiet", "--no-cost"]) == 0
    pruned = runs / "head-channel_scaling-p0.6"
    report = json.loads((pruned / "pruning.json").read_text())
    assert report["params_ratio"] <= 0.6 and report["rounds"][0]["removed"] > 0
    assert (pruned / "round1" / "metrics.jsonl").exists()
    assert count_params(load(pruned)) == report["params_after"] < count_params(head)
    assert "not reached" not in capsys.readouterr().err
    # one round cannot reach 1 % of the parameters: the run is kept, and the shortfall said
    assert main(["prune", str(runs / "head"), "--method", "channel_scaling", "--params-ratio", "0.01",
                 "--option", "epochs=1", "--option", "rounds=1", "--name", "short", "--quiet", "--no-cost"]) == 0
    kept = json.loads((runs / "short" / "results.json").read_text())["params_ratio"]
    assert f"warning: --params-ratio 0.01 not reached: the pruned model keeps {kept:.3f}" in capsys.readouterr().err
    assert main(["prune", str(runs / "head"), "--method", "channel_scaling", "--option", "alpha=1",
                 "--name", "bad", "--quiet", "--no-cost"]) == 2
    assert "unknown option 'alpha' for channel_scaling" in capsys.readouterr().err
    assert not (runs / "bad").exists() and not (runs / ".bad.partial").exists()
    assert main(["train", "pneumoniamnist-vgg", "--data", str(shared_data), "--output", str(runs), "--name", "x",
                 "--pretrained", str(tmp_path / "nothing.pth"), *small]) == 2
    assert "pretrained weights not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shared_data):
    runs = tmp_path_factory.mktemp("bad-options") / "runs"
    assert main(["train", "kvasir-unet", "--data", str(shared_data), "--output", str(runs), "--name", "base",
                 *TINY]) == 0
    return runs / "base"


@pytest.mark.parametrize("argv,message", [
    (["cost", "RUN", "--threads", "0"], "--threads must be positive integers"),
    (["cost", "RUN", "--repeats", "-5", "--no-onnx"], "--repeats must be positive integers"),
    (["cost", "RUN", "--input-shape", "1", "1", "32", "32"], "gives 1 image channels; the model"),
    (["cost", "RUN", "--input-shape", "1", "3", "-32", "32"], "--input-shape must be positive integers"),
    (["export", "RUN", "--output", "OUT/m.onnx", "--input-shape", "1", "3", "32"], "1 spatial dimensions"),
    (["prune", "RUN", "--method", "l1", "--flops-ratio", "0.5", "--finetune-lr", "-1"],
     "--finetune-lr must be a positive number"),
    (["prune", "RUN", "--method", "l1", "--flops-ratio", "0.5", "--finetune-epochs", "-1"],
     "--finetune-epochs must be a non-negative integer"),
    (["prune", "RUN", "--method", "l1", "--latency-ms", "0"], "--latency-ms must be a positive number"),
    (["train", "kvasir-unet", "-o", "train.lr=-1", "--output", "OUT"], "train.lr must be a number > 0"),
    (["train", "kvasir-unet", "-o", "model.channels=[4,-8]", "--output", "OUT", "--data", "DATA"],
     "channels must be positive integers"),
    (["train", "kvasir-unet", "--output", "OUT/afile", "--data", "DATA"], "is a file, not a folder"),
])
def test_bad_option_values_name_the_option_and_change_nothing(argv, message, tiny_run, tmp_path, capsys,
                                                               shared_data):
    (tmp_path / "afile").write_text("not a folder")
    before = sorted(p.name for p in tiny_run.parent.iterdir()), sorted(p.name for p in tiny_run.iterdir())
    swap = {"RUN": str(tiny_run), "DATA": str(shared_data)}
    argv = [swap.get(a, a.replace("OUT", str(tmp_path))) for a in argv]
    assert main([*argv, "--quiet"] if argv[0] in ("train", "prune") else argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    assert (sorted(p.name for p in tiny_run.parent.iterdir()), sorted(p.name for p in tiny_run.iterdir())) == before


def test_medslim_warnings_print_as_one_line_and_others_as_python_prints_them(capsys):
    from medslim.cli import _show_warning
    from medslim.errors import MedslimWarning

    _show_warning(MedslimWarning("a frozen backbone"), MedslimWarning, "/anywhere/x.py", 3)
    # a library's warning attributed to a medslim line (stacklevel) keeps its category and place
    _show_warning(UserWarning("from torch"), UserWarning, sys.modules["medslim.cli"].__file__, 7)
    err = capsys.readouterr().err
    assert err.startswith("medslim: warning: a frozen backbone\n")
    assert "cli.py:7: UserWarning: from torch" in err and "medslim: warning: from torch" not in err
    assert issubclass(MedslimWarning, UserWarning)  # pytest.warns(UserWarning) and filters still match
    with pytest.warns(MedslimWarning, match="freezes a randomly initialised"):
        from medslim.jobs import start_from_pretrained
        from medslim.models import build_model

        net = build_model({"name": "vgg16_bn", "in_channels": 1, "num_classes": 2, "width": 0.0625})
        start_from_pretrained(net, {"train": {"freeze_backbone": True}, "seed": 0}, train_data=None)
