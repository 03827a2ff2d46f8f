"""Integration: real data, real (tiny) networks, a few epochs."""

import json

import pytest
import torch

from medslim.artifacts import load
from medslim.config import load_config
from medslim.errors import ConfigError, DataError
from medslim.jobs import train_run

pytestmark = pytest.mark.slow

KVASIR_TINY = ["data.limit=32", "data.size=[64,64]", "model.channels=[4,8,16]",
               "train.batch_size=8", "train.lr=0.01", "eval.batch_size=8"]


def _cfg(name, tmp_path, base="kvasir-unet", extra=()):
    return load_config(base, [*KVASIR_TINY, *extra] if base == "kvasir-unet" else list(extra)) | {
        "name": name, "output": str(tmp_path / "runs")}


def _losses(run):
    return [json.loads(ln)["train_loss"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_kvasir_run_folder_is_complete(tmp_path, shared_data):
    run = train_run(_cfg("k", tmp_path, extra=["train.epochs=4"]), data_path=shared_data, progress=False)
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "split.json", "metrics.jsonl", "results.json", "model.json",
            "model.safetensors", "best.safetensors", "checkpoint"} <= names
    results = json.loads((run / "results.json").read_text())
    test = results["test"]
    assert 0.0 <= test["dice"] <= 1.0 and len(test["dice_per_class"]) == 1
    assert test["n_cases"] == len(json.loads((run / "split.json").read_text())["test"])
    losses = _losses(run)
    assert len(losses) == 4 and losses[-1] < losses[0]
    model = load(run)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    assert not (tmp_path / "runs" / ".k.partial").exists()


def test_same_seed_same_run(tmp_path, shared_data):
    a = train_run(_cfg("a", tmp_path, extra=["train.epochs=1"]), data_path=shared_data, progress=False)
    b = train_run(_cfg("b", tmp_path, extra=["train.epochs=1"]), data_path=shared_data, progress=False)
    assert _losses(a) == _losses(b)
    assert json.loads((a / "split.json").read_text()) == json.loads((b / "split.json").read_text())


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, shared_data, monkeypatch):
    full = train_run(_cfg("full", tmp_path, extra=["train.epochs=3"]), data_path=shared_data, progress=False)

    def kill_after_epoch_2(event):
        if event["event"] == "epoch" and event["epoch"] == 2:
            raise KeyboardInterrupt

    import medslim.progress

    with monkeypatch.context() as m:
        m.setattr(medslim.progress, "training_progress", lambda label, enabled=True: (kill_after_epoch_2, lambda: None))
        with pytest.raises(KeyboardInterrupt):
            train_run(_cfg("cut", tmp_path, extra=["train.epochs=3"]), data_path=shared_data)
    assert (tmp_path / "runs" / ".cut.partial" / "checkpoint").exists()
    assert not (tmp_path / "runs" / "cut").exists()
    resumed = train_run(_cfg("cut", tmp_path, extra=["train.epochs=3"]), data_path=shared_data,
                        resume=True, progress=False)
    assert _losses(resumed) == pytest.approx(_losses(full), rel=1e-5)
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(load(resumed)(x), load(full)(x), atol=1e-5)


def test_hippocampus_3d_with_sliding_windows(tmp_path, shared_data):
    cfg = load_config("hippocampus-unet", ["data.limit=8", "data.size=[24,32,24]", "model.channels=[4,8,16]",
                                           "train.epochs=1", "train.batch_size=2"])
    cfg |= {"name": "h", "output": str(tmp_path / "runs")}
    run = train_run(cfg, data_path=shared_data, progress=False)
    test = json.loads((run / "results.json").read_text())["test"]
    assert set(test["dice_per_class"]) == {"Anterior", "Posterior"}
    assert test["n_cases"] >= 1
    manifest = json.loads((run / "model.json").read_text())
    assert manifest["extra"]["input_shape"] == [1, 1, 24, 32, 24]


def test_pneumoniamnist_classification(tmp_path, shared_data):
    cfg = load_config("pneumoniamnist-vgg", ["data.limit=200", "model.width=0.0625", "model.hidden=16",
                                              "train.epochs=1", "train.batch_size=32"])
    cfg |= {"name": "p", "output": str(tmp_path / "runs")}
    run = train_run(cfg, data_path=shared_data, progress=False)
    test = json.loads((run / "results.json").read_text())["test"]
    assert 0 <= test["accuracy"] <= 1 and 0 <= test["auc"] <= 1


def test_wrong_channel_count_fails_before_training(tmp_path, shared_data):
    cfg = _cfg("wrong", tmp_path, extra=["model.in_channels=1"])
    with pytest.raises(ConfigError, match="in_channels=1 does not fit the data, which has 3 image channels"):
        train_run(cfg, data_path=shared_data, progress=False)
    assert not (tmp_path / "runs").exists()  # not even an empty output folder


def test_missing_data_leaves_nothing(tmp_path):
    cfg = _cfg("nodata", tmp_path)
    with pytest.raises(DataError, match="nowhere"):
        train_run(cfg, data_path=tmp_path / "nowhere", progress=False)
    assert not (tmp_path / "runs").exists()


def test_failed_rerun_keeps_the_earlier_run(tmp_path, shared_data):
    first = train_run(_cfg("keep", tmp_path, extra=["train.epochs=1"]), data_path=shared_data, progress=False)
    before = (first / "results.json").read_text()
    with pytest.raises(ConfigError, match="already exists"):
        train_run(_cfg("keep", tmp_path, extra=["train.epochs=1"]), data_path=shared_data, progress=False)
    with pytest.raises(ConfigError, match="in_channels=7 does not fit the data"):
        train_run(_cfg("keep", tmp_path, extra=["model.in_channels=7"]), data_path=shared_data,
                  overwrite=True, progress=False)
    assert (first / "results.json").read_text() == before


@pytest.mark.parametrize("model", [
    ["model.name=monai.BasicUNet", "model.features=[4,4,8,8,16,4]"],
    ["model.name=monai.DynUNet", "model.kernel_size=[3,3,3]", "model.strides=[1,2,2]",
     "model.upsample_kernel_size=[2,2]", "model.filters=[4,8,16]", "model.deep_supervision=true",
     "model.deep_supr_num=1"],
])
def test_monai_networks_train_through_the_same_loop(tmp_path, shared_data, model):
    cfg = load_config("kvasir-unet", ["data.limit=16", "data.size=[32,32]", "train.epochs=1"])
    cfg["model"] = {"name": model[0].split("=")[1]}
    from medslim.config import parse_override, set_dotted

    for item in model[1:]:
        set_dotted(cfg, *parse_override(item))
    cfg |= {"name": "monai", "output": str(tmp_path / "runs")}
    run = train_run(cfg, data_path=shared_data, progress=False)
    assert 0 <= json.loads((run / "results.json").read_text())["test"]["dice"] <= 1
    assert load(run)(torch.zeros(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_sparsity_regulariser_shrinks_norm_scales(tmp_path, shared_data):
    def scales(run):
        model = load(run)
        return sum(m.weight.abs().sum().item() for m in model.modules()
                   if isinstance(m, torch.nn.InstanceNorm2d))

    plain = train_run(_cfg("plain", tmp_path, extra=["train.epochs=2"]), data_path=shared_data, progress=False)
    sparse = train_run(_cfg("sparse", tmp_path, extra=["train.epochs=2", "train.sparsity=0.01"]),
                       data_path=shared_data, progress=False)
    assert scales(sparse) < scales(plain)


class _Images(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": torch.tensor(0), "id": str(i)}


def test_reestimated_frozen_norm_stats_are_those_of_the_new_data():
    from medslim.training.loop import reestimate_frozen_norm_stats

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 1), torch.nn.BatchNorm2d(2),
                              torch.nn.InstanceNorm2d(2, affine=True))
    for p in [*net[0].parameters(), *net[1].parameters(), *net[5].parameters()]:
        p.requires_grad_(False)  # a frozen first block (and an instance norm, which has no statistics)
    net[1].running_mean.fill_(7.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.randn(24, 1, 8, 8) * 3 + 5  # target data far from the "source" statistics
    assert reestimate_frozen_norm_stats(net, _Images(images), {"batch_size": 8}, seed=0) == 1
    with torch.no_grad():
        features = net[0](images)
    assert torch.allclose(net[1].running_mean, features.mean((0, 2, 3)), atol=1e-4)
    assert net[1].momentum == 0.1 and not net[1].training and net[4].training  # modes as before, frozen norm fixed
    for name, tensor in net.state_dict().items():
        if name not in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
            assert torch.equal(tensor, before[name]), name  # weights and the trainable norm untouched


def test_fit_takes_a_folder_name_as_a_string_and_creates_it(tmp_path, shared_data, monkeypatch):
    from medslim.jobs import fill_model_spec, load_data
    from medslim.models import build_model
    from medslim.training.loop import fit

    cfg = _cfg("api", tmp_path, extra=["train.epochs=1"])
    data, _ = load_data(cfg, shared_data)
    model = build_model(fill_model_spec(cfg["model"], data.info))
    monkeypatch.chdir(tmp_path)
    result = fit(model, data, cfg, "runs/x")  # as the README's Python example calls it
    assert result.epochs_run == 1
    assert (tmp_path / "runs" / "x" / "metrics.jsonl").exists()
