"""The job functions behind the commands: what they read and refuse."""

import warnings

import numpy as np
import pytest

from medslim.errors import ConfigError, DataError
from medslim.jobs import load_data


def _medmnist_npz(folder, n=12, rgb=True):
    rng = np.random.default_rng(0)
    shape = (n, 16, 16, 3) if rgb else (n, 16, 16)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = rng.integers(0, 255, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2)[:, None]
    folder.mkdir()
    np.savez(folder / f"{folder.name}.npz", **arrays)
    return folder


def test_a_dataset_of_ones_own_in_a_known_format(tmp_path):
    folder = _medmnist_npz(tmp_path / "crops")
    data, root = load_data({"data": {"dataset": "crops", "format": "medmnist"}}, str(folder))
    assert root == folder.resolve()
    assert data.info.in_channels == 3 and data.info.num_classes == 2 and len(data.train) == 12
    with pytest.raises(DataError, match="no such folder"):
        load_data({"data": {"dataset": "crops", "format": "medmnist"}}, str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match="unknown dataset 'crops'"):
        load_data({"data": {"dataset": "crops"}}, str(folder))  # without a format the name must be known


def test_a_frozen_backbone_without_pretrained_weights_is_warned_about():
    from medslim.jobs import start_from_pretrained
    from medslim.models import build_model

    cfg = {"train": {"freeze_backbone": True}, "seed": 0}
    net = build_model({"name": "vgg16_bn", "in_channels": 1, "num_classes": 2, "width": 0.0625})
    with pytest.warns(UserWarning, match="freezes a randomly initialised backbone"):
        out = start_from_pretrained(net, cfg, train_data=None)
    assert out["trainable"] and all(name.startswith("classifier") for name in out["trainable"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        start_from_pretrained(net, cfg, train_data=None, fresh=False)  # a resumed run is not warned again
