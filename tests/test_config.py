import pytest

from medslim.config import load_config, parse_override
from medslim.errors import ConfigError


def test_builtin_config_with_overrides():
    cfg = load_config("kvasir-unet", ["train.epochs=3", "data.size=[64,64]", "model.channels=[4,8]"])
    assert cfg["train"]["epochs"] == 3
    assert cfg["data"]["size"] == [64, 64]
    assert cfg["model"]["channels"] == [4, 8]
    assert cfg["model"]["norm"] == "instance"  # the rest of the file is kept


def test_yaml_file_replaces_the_model_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {dataset: hippocampus}\nmodel: {name: monai.BasicUNet, spatial_dims: 3}\n")
    cfg = load_config(path)
    assert cfg["model"] == {"name": "monai.BasicUNet", "spatial_dims": 3}
    assert cfg["train"]["optimizer"] == "adam"


@pytest.mark.parametrize("override,match", [
    (["train.epoch=3"], "unknown option 'train.epoch'"),
    (["trian.epochs=3"], "unknown config key 'trian'"),
    (["train.optimizer=rmsprop"], "train.optimizer='rmsprop' is not one of"),
    (["train.frozen_norm_stats=imagenet"], "train.frozen_norm_stats='imagenet' is not one of"),
    (["train.epochs=0"], "train.epochs must be a positive integer"),
    (["epochs"], "must look like key.sub=value"),
])
def test_bad_options_are_named(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("kvasir-unet", override)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="no built-in config 'nope'"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_override_values_are_typed():
    assert parse_override("train.lr=1e-4") == ("train.lr", 1e-4)
    assert parse_override("train.deterministic=false") == ("train.deterministic", False)
    assert parse_override("name=abc") == ("name", "abc")


def test_with_low_resolution_wraps_the_network_as_backbone():
    from medslim.config import with_low_resolution

    cfg = load_config("kvasir-unet")
    low = with_low_resolution(cfg, [32], [256], head="bilinear")
    assert low["data"]["size"] == [32, 32] and low["data"]["label_size"] == [256, 256]
    assert low["model"] == {"name": "lowres", "backbone": cfg["model"], "head": "bilinear"}
    again = with_low_resolution(low, [64, 64], [256, 256])  # a lowres model is not wrapped twice
    assert again["model"]["backbone"] == cfg["model"] and again["data"]["size"] == [64, 64]
    assert cfg["model"]["name"] == "unet"  # the input is left alone
    with pytest.raises(ConfigError, match="--input-size must be one or two positive integers"):
        with_low_resolution(cfg, [0], [256])


@pytest.mark.parametrize("override, message", [
    ("train.lr=-1", "train.lr must be a number > 0"), ("train.lr=abc", "train.lr must be a number > 0"),
    ("train.lr=0", "train.lr must be a number > 0"),
    ("train.weight_decay=-1", "train.weight_decay must be a number >= 0"),
    ("train.sparsity=-0.1", "train.sparsity must be a number >= 0"),
    ("eval.overlap=1", "eval.overlap must be below 1"),
])
def test_numbers_out_of_range_are_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("kvasir-unet", [override])
