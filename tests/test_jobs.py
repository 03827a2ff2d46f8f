"""The job functions behind the commands: what they read and refuse."""

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
