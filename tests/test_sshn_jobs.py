import json

import pytest

from medslim.cli import main
from medslim.errors import ConfigError
from medslim.sshn_jobs import default_phis, parse_phis

TINY = ["-o", "data.limit=24", "-o", "data.size=[32,32]", "-o", "model.channels=[4,4,4]",
        "-o", "model.hidden=[8,16]", "-o", "train.epochs=1", "--quiet"]


def test_parse_phis():
    assert parse_phis("0.05:0.5:10") == pytest.approx([0.05 + 0.05 * i for i in range(10)])
    assert parse_phis("0.1, 0.25,0.5") == [0.1, 0.25, 0.5]
    assert parse_phis("0.3:0.3:1") == [0.3]
    for bad in ("0.5:0.1:5", "a,b", "0:0.5:5", "0.1,2.0", ""):
        with pytest.raises(ConfigError, match="--phis"):
            parse_phis(bad)


def test_the_default_sweep_spans_the_training_range():
    assert default_phis([0.0, 0.5]) == parse_phis("0.05:0.5:20")  # not 0: every deep map at its floor
    phis = default_phis([0.2, 0.4], count=5)
    assert phis == pytest.approx([0.2, 0.25, 0.3, 0.35, 0.4])
    assert default_phis([0.0, 0.03]) == [0.03]  # a range below 0.05 is swept at its top


def test_sweep_without_phis_follows_the_runs_training_range(tmp_path, shared_data):
    runs = tmp_path / "runs"
    assert main(["sshn", "train", "kvasir-sshn", "--data", str(shared_data), "--output", str(runs),
                 "--name", "narrow", *TINY, "-o", "model.phi_range=[0.2,0.4]"]) == 0
    assert main(["sshn", "sweep", str(runs / "narrow"), "--no-onnx", "--no-hd95"]) == 0
    rows = json.loads((runs / "narrow" / "sweep-val.json").read_text())["rows"]
    assert len(rows) == 20 and rows[0]["phi"] == 0.2 and rows[-1]["phi"] == 0.4
    assert all(r["in_range"] for r in rows)


@pytest.fixture(scope="module")
def hyper_run(tmp_path_factory, shared_data):
    runs = tmp_path_factory.mktemp("sshn") / "runs"
    assert main(["sshn", "train", "kvasir-sshn", "--data", str(shared_data), "--output", str(runs),
                 "--name", "hyper", *TINY]) == 0
    return runs / "hyper"


def test_sweep_measures_every_phi_and_marks_the_front(hyper_run, capsys):
    assert main(["sshn", "sweep", str(hyper_run), "--phis", "0.1,0.5,0.8", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "front" in out and "NO" in out  # 0.8 lies outside the training range
    report = json.loads((hyper_run / "sweep-val.json").read_text())
    rows = report["rows"]
    assert [r["phi"] for r in rows] == [0.1, 0.5, 0.8]
    assert [r["in_range"] for r in rows] == [True, True, False]
    assert rows[0]["flops"] < rows[1]["flops"] < rows[2]["flops"]
    assert all(0 <= r["dice"] <= 1 and r["ort_ms_1t"] > 0 and "hd95" in r for r in rows)
    # FLOPs rise with phi, so a phi is on the front when it beats the Dice of every smaller phi
    front = [r["phi"] for i, r in enumerate(rows) if all(r["dice"] > s["dice"] for s in rows[:i])]
    assert report["pareto_phis"] == front
    assert (hyper_run / "sweep-val.png").stat().st_size > 1000


def test_prune_and_cost_on_the_hypernetwork_itself_point_to_export(hyper_run, capsys):
    assert main(["prune", str(hyper_run), "--method", "l1", "--flops-ratio", "0.5", "--quiet"]) == 2
    assert f"prune that run: medslim sshn export {hyper_run} --phi 0.25\n" in capsys.readouterr().err
    assert not list(hyper_run.parent.glob("*-l1-*")) and not list(hyper_run.parent.glob(".*partial"))
    assert main(["cost", str(hyper_run), "--threads", "1", "--repeats", "2", "--no-onnx"]) == 0
    assert "is a scale-space hypernetwork: this was its forward at phi=0.25" in capsys.readouterr().err


def test_export_gives_a_plain_unet_run_that_every_command_takes(hyper_run, tmp_path, capsys):
    from medslim.artifacts import load
    from medslim.models.unet import UNet

    assert main(["sshn", "export", str(hyper_run), "--phi", "0.3", "--output", str(tmp_path)]) == 0
    run = tmp_path / "hyper-phi0.3"
    unet = load(run)
    assert type(unet) is UNet and unet.phi == 0.3
    assert json.loads((run / "results.json").read_text())["in_range"] is True
    assert main(["evaluate", str(run), "--split", "val"]) == 0
    assert main(["export", str(run), "--output", str(tmp_path / "u.onnx")]) == 0
    assert main(["prune", str(run), "--method", "l1", "--flops-ratio", "0.7", "--quiet", "--no-cost"]) == 0
    assert (tmp_path / "hyper-phi0.3-l1-f0.7" / "model.safetensors").exists()
    assert main(["sshn", "export", str(hyper_run), "--phi", "0.9", "--output", str(tmp_path)]) == 0
    assert "outside the training range" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["sshn", "sweep", "RUN", "--phis", "0.5:0.1:3"], "--phis"),
    (["sshn", "sweep", "RUN", "--repeats", "0"], "--repeats must be a positive integer"),
    (["sshn", "export", "RUN", "--phi", "0", "--name", "zero"], "--phi must lie in"),
    (["sshn", "sweep", "PLAIN"], "not a scale-space hypernetwork"),
])
def test_bad_sshn_input_gives_one_clear_line(argv, message, hyper_run, tmp_path, capsys, shared_data):
    if "PLAIN" in argv:
        assert main(["train", "kvasir-unet", "--data", str(shared_data), "--output", str(tmp_path),
                     "--name", "plain", "-o", "data.limit=24", "-o", "data.size=[32,32]",
                     "-o", "model.channels=[4,8]", "-o", "train.epochs=1", "--quiet"]) == 0
    before = sorted(p.name for p in hyper_run.parent.iterdir())
    argv = [str(hyper_run) if a == "RUN" else str(tmp_path / "plain") if a == "PLAIN" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in hyper_run.parent.iterdir()) == before


def test_sshn_train_refuses_a_config_without_a_hypernetwork(tmp_path, capsys):
    assert main(["sshn", "train", "kvasir-unet", "--output", str(tmp_path)]) == 2
    assert "needs model.name: sshn" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_hippocampus_3d_train_sweep_export(tmp_path, shared_data):
    from medslim.artifacts import load
    from medslim.sshn_jobs import export_sshn, sweep_run

    runs = tmp_path / "runs"
    assert main(["sshn", "train", "hippocampus-sshn", "--data", str(shared_data), "--output", str(runs),
                 "--name", "h", "-o", "data.limit=8", "-o", "data.size=[24,32,24]",
                 "-o", "model.channels=[4,4,4]", "-o", "model.hidden=[8]", "-o", "train.epochs=1",
                 "--quiet"]) == 0
    report = sweep_run(runs / "h", [0.2, 0.5], "test", repeats=2, hd95=False)
    assert [r["phi"] for r in report["rows"]] == [0.2, 0.5]
    assert all(0 <= r["dice"] <= 1 and "dice_per_class" in r for r in report["rows"])
    unet = load(export_sshn(runs / "h", 0.5))
    assert unet.spatial_dims == 3 and unet.phi == 0.5


@pytest.mark.parametrize("text, message", [("0.5:0.1:3", "STOP \\(0.1\\) is below START \\(0.5\\)"),
                                           ("0.1:0.5:0", "COUNT must be at least 1")])
def test_a_bad_sweep_range_says_what_is_wrong(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_phis(text)
