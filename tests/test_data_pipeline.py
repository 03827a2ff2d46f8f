"""build_data: item formats for each dataset, seeded augmentation, config checks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medslim.data import TaskInfo, build_data
from medslim.data.pipeline import AugmentedDataset, _augmentations
from medslim.data.splits import load_split, save_split
from medslim.errors import ConfigError, DataError


def _dataset(shared_data: Path, name: str) -> Path:
    path = shared_data / name
    if not path.is_dir():
        pytest.skip(f"{name} not found in {shared_data}")
    return path


@pytest.fixture(scope="module")
def kvasir_data(shared_data):
    cfg = {"dataset": "kvasir-seg", "limit": 24, "size": [64, 64]}
    return build_data(cfg, _dataset(shared_data, "kvasir-seg"))


@pytest.fixture(scope="module")
def hippo_data(shared_data):
    cfg = {"dataset": "hippocampus", "limit": 6, "size": [32, 32, 32]}
    return build_data(cfg, _dataset(shared_data, "hippocampus"))


def _same(a: dict, b: dict) -> bool:
    return a["id"] == b["id"] and torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_kvasir_items(kvasir_data):
    info = kvasir_data.info
    assert (info.task, info.spatial_dims, info.in_channels, info.num_classes) == ("segmentation", 2, 3, 2)
    assert info.input_size == (64, 64)
    # with a limit the 120-image test set becomes its fraction, 12%
    assert {s: len(v) for s, v in kvasir_data.split.items()} == {"train": 19, "val": 2, "test": 3}
    item = kvasir_data.train[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1, 64, 64) and item["label"].dtype == torch.int64
    assert set(item["label"].unique().tolist()) <= {0, 1}
    val = kvasir_data.val[0]
    assert val["image"].shape == (3, 64, 64) and val["label"].shape == (1, 64, 64) and val["shape"] == (64, 64)
    assert abs(float(val["image"].mean())) < 1e-3  # z-scored, no augmentation
    assert [v["id"] for v in kvasir_data.test] == kvasir_data.split["test"]
    json.dumps(info.to_dict())


def test_reseed_makes_augmentation_deterministic(kvasir_data):
    train = kvasir_data.train
    train.reseed(11)
    first = [train[i] for i in range(6)]
    train.reseed(12)
    other = [train[i] for i in range(6)]
    train.reseed(11)
    again = [train[i] for i in reversed(range(6))][::-1]  # order of access does not matter
    assert all(_same(a, b) for a, b in zip(first, again))
    assert not all(_same(a, b) for a, b in zip(first, other))
    train.reseed(0)


def test_spatial_augmentation_moves_image_and_label_together():
    label = torch.zeros(40, 30, 20, dtype=torch.uint8)
    label[5:20, 3:9, 2:15] = 2
    label[25:30, 10:28, 4:6] = 1
    image = label[None].float()
    info = TaskInfo("segmentation", 3, 1, 3, ["a", "b", "c"], (24, 24, 16))
    from monai.transforms import RandSpatialCrop

    spatial, _ = _augmentations(info)
    data = AugmentedDataset([("x", image, label)], [RandSpatialCrop((24, 24, 16)), *spatial], [], seed=0)
    for seed in range(8):
        data.reseed(seed)
        item = data[0]
        assert item["image"].shape == (1, 24, 24, 16)
        assert torch.equal(item["image"].long(), item["label"])


def test_hippocampus_patches_and_padded_volumes(hippo_data):
    info = hippo_data.info
    assert (info.spatial_dims, info.in_channels, info.num_classes, info.input_size) == (3, 1, 3, (32, 32, 32))
    item = hippo_data.train[0]
    assert item["image"].shape == (1, 32, 32, 32) and item["label"].shape == (1, 32, 32, 32)
    for val in [*hippo_data.val, *hippo_data.test]:
        shape = val["shape"]
        assert len(shape) == 3 and all(s % 16 == 0 for s in val["image"].shape[1:])
        assert val["label"].shape == (1, *val["image"].shape[1:]) and val["label"].dtype == torch.int64
        inside = val["label"][(0, *(slice(0, s) for s in shape))]
        assert int(inside.sum()) == int(val["label"].sum())  # padding is background


def test_hippocampus_slices_split_by_case(shared_data):
    cfg = {"dataset": "hippocampus", "limit": 5, "slices": True}
    data = build_data(cfg, _dataset(shared_data, "hippocampus"))
    cases = {s: {i.split(":")[0] for i in ids} for s, ids in data.split.items()}
    assert sum(len(c) for c in cases.values()) == 5 == len(set().union(*cases.values()))
    assert data.info.spatial_dims == 2 and all(s % 16 == 0 for s in data.info.input_size)
    item = data.train[0]
    assert item["image"].shape == (1, *data.info.input_size)
    assert data.val[0]["label"].shape[0] == 1 and len(data.val[0]["shape"]) == 2


def test_pneumoniamnist_upsampled(shared_data):
    cfg = {"dataset": "pneumoniamnist", "limit": 12, "size": [64, 64]}
    data = build_data(cfg, _dataset(shared_data, "pneumoniamnist"))
    assert data.info.task == "classification" and data.info.input_size == (64, 64)
    assert {s: len(v) for s, v in data.split.items()} == {"train": 12, "val": 12, "test": 12}
    assert all(i.startswith("train/") for i in data.split["train"])
    item = data.train[3]
    assert item["image"].shape == (1, 64, 64) and item["label"].shape == () and item["label"].dtype == torch.int64
    test = data.test[0]
    assert 0.0 <= float(test["image"].min()) and float(test["image"].max()) <= 1.0  # min-max scaled


def test_given_split_is_used(kvasir_data, shared_data, tmp_path):
    path = tmp_path / "split.json"
    save_split(kvasir_data.split, path, seed=0)
    cfg = {"dataset": "kvasir-seg", "limit": 24, "size": [64, 64], "seed": 5}
    root = _dataset(shared_data, "kvasir-seg")
    again = build_data(cfg, root, split=load_split(path))
    assert again.split == kvasir_data.split
    bad = {**kvasir_data.split, "test": ["not-a-case"]}
    with pytest.raises(DataError, match="the given split: 1 ids are not in the dataset: not-a-case"):
        build_data(cfg, root, split=bad)


def _tiny_kvasir(root: Path, foreground: list[bool]) -> Path:
    """A Kvasir-like folder of 16x16 images; case i has a foreground square when ``foreground[i]``."""
    from PIL import Image

    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i, has in enumerate(foreground):
        Image.fromarray(np.full((16, 16, 3), 10 * i, np.uint8)).save(root / "images" / f"c{i}.png")
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = 255 if has else 0
        Image.fromarray(mask).save(root / "masks" / f"c{i}.png")
    return root


TINY = {"dataset": "kvasir-seg", "size": [16, 16], "n_test": 1, "val_fraction": 0.2}


def test_all_masks_empty_is_refused(tmp_path):
    """It would train without error and report Dice 0."""
    root = _tiny_kvasir(tmp_path / "empty", [False] * 6)
    message = f"{re.escape(str(root.absolute()))}: all 4 masks of the training split are empty"
    with pytest.raises(DataError, match=message):
        build_data(TINY, root)


def test_some_empty_masks_are_negative_cases(tmp_path):
    root = _tiny_kvasir(tmp_path / "some", [True] + [False] * 5)
    data = build_data({**TINY, "n_test": 0, "val_fraction": 0.0}, root)
    assert len(data.split["train"]) == 6


def test_loaded_split_with_unknown_ids_names_its_file(tmp_path):
    root = _tiny_kvasir(tmp_path / "data", [True] * 6)
    path = tmp_path / "run" / "split.json"
    save_split({"train": ["c0", "c1", "nosuch"], "val": ["x"], "test": ["c2"]}, path)
    message = f"split file {re.escape(str(path))}: 2 ids are not in the dataset: nosuch, x"
    with pytest.raises(DataError, match=message):
        build_data(TINY, root, split=load_split(path))


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"dataset": "kvasir-seg", "sise": [64, 64]}, "unknown key 'sise' in the data section; allowed keys: dataset"),
        ({"size": [64, 64]}, "data.dataset is required"),
        ({"dataset": "kvasir-seg", "normalize": "l2"}, "data.normalize must be one of zscore, minmax"),
        ({"dataset": "kvasir-seg", "size": [64]}, "data.size must be"),
        ({"dataset": "kvasir-seg", "limit": 0}, "data.limit must be"),
        ({"dataset": "mnist"}, "unknown dataset or format 'mnist'"),
    ],
)
def test_config_errors(cfg, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        build_data(cfg, tmp_path)


def test_low_resolution_images_with_full_resolution_masks(shared_data):
    cfg = {"dataset": "kvasir-seg", "limit": 12, "size": [32, 32], "label_size": [128, 128]}
    data = build_data(cfg, _dataset(shared_data, "kvasir-seg"))
    assert data.info.label_size == (128, 128) and data.info.output_factor == 4
    item = data.train[0]
    assert item["image"].shape == (3, 32, 32) and item["label"].shape == (1, 128, 128)
    test = data.test[0]
    assert test["image"].shape == (3, 32, 32) and test["label"].shape == (1, 128, 128)
    assert test["shape"] == (128, 128)
    assert TaskInfo(**data.info.to_dict()).label_size == [128, 128]


@pytest.mark.parametrize(("extra", "message"), [
    ({"size": None, "label_size": [256, 256]}, r"data.label_size \[256, 256\] needs data.size"),
    ({"size": [32, 32], "label_size": [100, 100]}, "must be the same whole multiple"),
    ({"size": [32, 32], "label_size": [64, 128]}, "must be the same whole multiple"),
    ({"size": [32, 32], "label_size": [32, 32]}, "must be the same whole multiple"),
    ({"size": [32, 32], "label_size": [64]}, "data.label_size must be null or a list of 2"),
])
def test_label_size_errors(extra, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        build_data({"dataset": "kvasir-seg", **extra}, tmp_path)


def test_label_size_needs_2d_segmentation(shared_data):
    cfg = {"dataset": "pneumoniamnist", "limit": 20, "size": [28, 28], "label_size": [56, 56]}
    with pytest.raises(ConfigError, match="data.label_size needs 2D segmentation data"):
        build_data(cfg, _dataset(shared_data, "pneumoniamnist"))


def test_size_of_wrong_dimension(shared_data):
    cfg = {"dataset": "kvasir-seg", "limit": 4, "size": [32, 32, 32]}
    with pytest.raises(ConfigError, match=r"data.size \[32, 32, 32\] does not match the 2D images"):
        build_data(cfg, _dataset(shared_data, "kvasir-seg"))


def test_import_is_cheap():
    code = "import sys, medslim.data; assert 'monai' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
