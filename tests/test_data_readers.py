"""Readers: the real datasets read correctly, and every kind of bad input is named."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medslim.data.readers import (
    case_of,
    decathlon_to_slices,
    read_dataset,
    read_decathlon,
    read_image_folders,
    read_medmnist,
)
from medslim.errors import ConfigError, DataError


def _q(path) -> str:
    return re.escape(str(path))


def _dataset(shared_data: Path, name: str) -> Path:
    path = shared_data / name
    if not path.is_dir():
        pytest.skip(f"{name} not found in {shared_data}")
    return path


@pytest.fixture
def kvasir(shared_data):
    return _dataset(shared_data, "kvasir-seg")


@pytest.fixture
def hippocampus(shared_data):
    return _dataset(shared_data, "hippocampus")


@pytest.fixture
def pneumonia(shared_data):
    return _dataset(shared_data, "pneumoniamnist")


@pytest.fixture
def kvasir_copy(kvasir, tmp_path) -> Path:
    """Three real Kvasir-SEG pairs in tmp_path, to damage."""
    root = tmp_path / "kvasir"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
        for path in sorted((kvasir / sub).glob("*.jpg"))[:3]:
            shutil.copy(path, root / sub / path.name)
    return root


@pytest.fixture
def hippo_copy(hippocampus, tmp_path) -> Path:
    """Three real Hippocampus cases in tmp_path with their own dataset.json."""
    root = tmp_path / "hippo"
    meta = json.loads((hippocampus / "dataset.json").read_text())
    meta["training"] = meta["training"][:3]
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for entry in meta["training"]:
        for key in ("image", "label"):
            shutil.copy(hippocampus / entry[key], root / entry[key])
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _first(root: Path, sub: str) -> Path:
    return sorted((root / sub).iterdir())[0]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())


# --------------------------------------------------------------------------
# real data


def test_kvasir_32_images(kvasir):
    raw = read_dataset("kvasir-seg", kvasir, limit=32)
    assert len(raw.images) == len(raw.labels) == len(raw.ids) == 32
    assert raw.ids == sorted(raw.ids)
    assert (raw.task, raw.spatial_dims, raw.num_classes) == ("segmentation", 2, 2)
    for image, label in zip(raw.images, raw.labels):
        assert image.shape == (3, 256, 256) and image.dtype == np.float32
        assert label.shape == (256, 256) and label.dtype == np.int64
        assert set(np.unique(label)) <= {0, 1}
    assert any(label.any() for label in raw.labels)


def test_hippocampus_8_volumes(hippocampus):
    raw = read_dataset("hippocampus", hippocampus, limit=8)
    assert len(raw.ids) == 8 and raw.ids[0] == "hippocampus_001"
    assert (raw.task, raw.spatial_dims, raw.num_classes) == ("segmentation", 3, 3)
    assert raw.class_names == ["background", "Anterior", "Posterior"]
    for image, label in zip(raw.images, raw.labels):
        assert image.ndim == 4 and image.shape[0] == 1 and image.dtype == np.float32
        assert label.shape == image.shape[1:] and label.dtype == np.int64
        assert set(np.unique(label)) <= {0, 1, 2}


def test_slices_keep_case_ids(hippocampus):
    raw = read_decathlon(hippocampus, limit=2)
    sliced = decathlon_to_slices(raw)
    assert sliced.spatial_dims == 2
    assert len(sliced.ids) == sum(label.shape[2] for label in raw.labels)
    assert sliced.ids[12] == "hippocampus_001:z012"
    assert {case_of(i) for i in sliced.ids} == set(raw.ids)
    assert sliced.images[0].shape == (1, *raw.labels[0].shape[:2])
    assert np.array_equal(sliced.labels[12], raw.labels[0][:, :, 12])
    assert decathlon_to_slices(raw, axis=0).ids[0] == "hippocampus_001:x000"


def test_pneumoniamnist_official_split(pneumonia):
    raw = read_dataset("pneumoniamnist", pneumonia)
    assert {s: len(v) for s, v in raw.official_split.items()} == {"train": 4708, "val": 524, "test": 624}
    assert (raw.task, raw.num_classes, raw.class_names) == ("classification", 2, ["normal", "pneumonia"])
    assert raw.images[0].shape == (1, 28, 28) and raw.images[0].dtype == np.float32
    assert raw.labels[0].shape == () and raw.labels[0].dtype == np.int64
    assert raw.ids[12] == "train/00012"


def test_medmnist_limit_takes_both_classes(pneumonia):
    raw = read_medmnist(pneumonia / "pneumoniamnist.npz", limit=10)
    assert [len(v) for v in raw.official_split.values()] == [10, 10, 10]
    train_labels = {int(label) for label, i in zip(raw.labels, raw.ids) if i.startswith("train/")}
    assert train_labels == {0, 1}


# --------------------------------------------------------------------------
# synthetic folders: modes and options


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)


def test_grey_rgba_and_label_masks(tmp_path):
    grey = np.full((8, 10), 7, np.uint8)
    _save(tmp_path / "g" / "images" / "a.png", grey)
    _save(tmp_path / "g" / "masks" / "a.png", np.eye(8, 10, dtype=np.uint8) * 2)
    raw = read_image_folders(tmp_path / "g", mask_mode="labels")
    assert raw.images[0].shape == (1, 8, 10) and raw.num_classes == 3
    assert raw.labels[0].max() == 2  # not binarised

    rgba = np.zeros((8, 8, 4), np.uint8)
    _save(tmp_path / "c" / "images" / "a.png", rgba)
    _save(tmp_path / "c" / "masks" / "a.bmp", np.full((8, 8), 255, np.uint8))
    raw = read_image_folders(tmp_path / "c")
    assert raw.images[0].shape == (3, 8, 8) and raw.labels[0].min() == 1


def test_binary_masks_stored_as_0_1_stay_foreground(tmp_path):
    _save(tmp_path / "images" / "a.png", np.zeros((4, 4), np.uint8))
    _save(tmp_path / "masks" / "a.png", np.ones((4, 4), np.uint8))
    assert read_image_folders(tmp_path).labels[0].min() == 1


# --------------------------------------------------------------------------
# bad input


def test_missing_roots(tmp_path):
    with pytest.raises(DataError, match=_q(tmp_path / "nope")):
        read_image_folders(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="dataset.json"):
        read_decathlon(tmp_path / "empty")
    with pytest.raises(DataError, match=r"no \.npz file found in"):
        read_medmnist(tmp_path / "empty")
    with pytest.raises(DataError, match="x.npz"):
        read_medmnist(tmp_path / "x.npz")


def test_empty_image_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match=f"no images .* found in {_q(tmp_path / 'images')}"):
        read_image_folders(tmp_path)


@pytest.mark.parametrize("damage", [_truncate, _garbage])
@pytest.mark.parametrize("sub", ["images", "masks"])
def test_corrupt_image_or_mask(kvasir_copy, damage, sub):
    bad = _first(kvasir_copy, sub)
    damage(bad)
    with pytest.raises(DataError, match=f"cannot read .*{_q(bad)}"):
        read_image_folders(kvasir_copy)


def test_image_without_mask(kvasir_copy):
    mask = _first(kvasir_copy, "masks")
    mask.unlink()
    with pytest.raises(DataError, match=f"{_q(kvasir_copy / 'images' / mask.name)} has no mask"):
        read_image_folders(kvasir_copy)


def test_size_mismatch_names_both_files(kvasir_copy):
    mask = _first(kvasir_copy, "masks")
    Image.open(mask).resize((128, 100)).save(mask, "JPEG")
    image = kvasir_copy / "images" / mask.name
    with pytest.raises(DataError) as err:
        read_image_folders(kvasir_copy)
    assert all(s in str(err.value) for s in (str(image), str(mask), "(256, 256)", "(100, 128)"))


def test_folder_labels_out_of_range(tmp_path):
    _save(tmp_path / "images" / "a.png", np.zeros((4, 4), np.uint8))
    _save(tmp_path / "masks" / "a.png", np.full((4, 4), 3, np.uint8))
    with pytest.raises(DataError, match=rf"{_q(tmp_path / 'masks' / 'a.png')}.*outside 0\.\.1"):
        read_image_folders(tmp_path, mask_mode="labels", num_classes=2)


def test_nan_in_tiff(tmp_path):
    image = np.zeros((4, 4), np.float32)
    image[1, 1] = np.nan
    _save(tmp_path / "images" / "a.tif", image, "F")
    _save(tmp_path / "masks" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match=f"{_q(tmp_path / 'images' / 'a.tif')}.*NaN"):
        read_image_folders(tmp_path)


@pytest.mark.parametrize("damage", [_truncate, _garbage])
@pytest.mark.parametrize("sub", ["imagesTr", "labelsTr"])
def test_corrupt_nifti(hippo_copy, damage, sub):
    bad = _first(hippo_copy, sub)
    damage(bad)
    with pytest.raises(DataError, match=f"cannot read NIfTI file {_q(bad)}"):
        read_decathlon(hippo_copy)


def _replace_volume(path: Path, array: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


def test_decathlon_label_out_of_range(hippo_copy):
    label_path = _first(hippo_copy, "labelsTr")
    label = np.asanyarray(nib.load(str(label_path)).dataobj).astype(np.uint8)
    label[0, 0, 0] = 5
    _replace_volume(label_path, label)
    with pytest.raises(DataError, match=rf"{_q(label_path)}.*outside 0\.\.2"):
        read_decathlon(hippo_copy)


def test_decathlon_size_mismatch(hippo_copy):
    label_path = _first(hippo_copy, "labelsTr")
    _replace_volume(label_path, np.zeros((10, 11, 12), np.uint8))
    image_path = _first(hippo_copy, "imagesTr")
    with pytest.raises(DataError) as err:
        read_decathlon(hippo_copy)
    assert str(image_path) in str(err.value) and str(label_path) in str(err.value)
    assert "(10, 11, 12)" in str(err.value)


def test_decathlon_nan(hippo_copy):
    image_path = _first(hippo_copy, "imagesTr")
    image = nib.load(str(image_path)).get_fdata(dtype=np.float32)
    image[3, 3, 3] = np.inf
    _replace_volume(image_path, image)
    with pytest.raises(DataError, match=f"{_q(image_path)}.*NaN or infinite"):
        read_decathlon(hippo_copy)


def test_decathlon_missing_volume(hippo_copy):
    label_path = _first(hippo_copy, "labelsTr")
    label_path.unlink()
    with pytest.raises(DataError, match=f"not found: {_q(label_path)}"):
        read_decathlon(hippo_copy)


def test_bad_dataset_json(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match=f"cannot read {_q(tmp_path / 'dataset.json')}"):
        read_decathlon(tmp_path)


def test_medmnist_damaged(tmp_path, pneumonia):
    bad = tmp_path / "bad.npz"
    _garbage(bad)
    with pytest.raises(DataError, match=f"cannot read MedMNIST file {_q(bad)}"):
        read_medmnist(bad)
    partial = tmp_path / "partial.npz"
    np.savez(partial, train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match=f"{_q(partial)} is not a MedMNIST file: missing arrays train_labels"):
        read_medmnist(partial)
    truncated = tmp_path / "truncated.npz"
    shutil.copy(pneumonia / "pneumoniamnist.npz", truncated)
    _truncate(truncated)
    with pytest.raises(DataError, match=_q(truncated)):
        read_medmnist(truncated)


def _medmnist_arrays(dtype=np.float32) -> dict[str, np.ndarray]:
    arrays = {}
    for s, n in (("train", 4), ("val", 2), ("test", 2)):
        arrays[f"{s}_images"] = np.zeros((n, 28, 28), dtype)
        arrays[f"{s}_labels"] = np.array([[i % 2] for i in range(n)], np.uint8)
    return arrays


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_medmnist_nan_names_array_and_index(tmp_path, bad):
    """A NaN pixel would otherwise show only as a NaN training loss."""
    arrays = _medmnist_arrays()
    arrays["val_images"][1, 2, 3] = bad
    arrays["val_images"][1, 5, 0] = bad
    path = tmp_path / "nan.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=rf"{_q(path)}: val_images holds 2 NaN .*val_images\[1, 2, 3\]"):
        read_medmnist(path)


def test_medmnist_finite_floats_are_read(tmp_path):
    path = tmp_path / "ok.npz"
    np.savez(path, **_medmnist_arrays())
    assert len(read_medmnist(path).images) == 8


def test_unknown_format_and_option(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset or format 'nifti'.*decathlon, folders"):
        read_dataset("nifti", tmp_path)
    with pytest.raises(ConfigError, match="unknown option for format 'folders' 'mask'"):
        read_dataset("kvasir-seg", tmp_path, mask="x")
