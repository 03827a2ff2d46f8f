"""Readers for the on-disk layouts medslim understands, returning data in memory.

Every reader checks what it reads (missing or corrupt files, size mismatches,
out-of-range labels, NaN/inf values) and raises :class:`DataError` naming the
file, because a bad case found mid-training costs far more than one found at
load time. The datasets medslim targets are small enough to hold in memory.

A reader may be given a ``preprocess`` callback, applied to each case right
after it has been read and checked. The pipeline uses it to shrink images
while reading, so that (for example) 1000 full-size Kvasir-SEG images never sit
in memory at once as float32.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medslim.errors import DataError, unknown_name

#: ``preprocess(image, label) -> (image, label)``, applied to each checked case;
#: what it returns is stored as is (the pipeline's hook returns torch tensors).
Preprocess = Callable[[np.ndarray, np.ndarray], "tuple[Any, Any]"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SLICE_SEPARATOR = ":"

# Class names of the MedMNIST sets we know; others get "class0", "class1", ...
_MEDMNIST_CLASS_NAMES = {"pneumoniamnist": ["normal", "pneumonia"]}


@dataclass
class RawData:
    """A whole dataset in memory, as read from disk (before resizing or normalising)."""

    images: list[np.ndarray]
    labels: list[np.ndarray]
    ids: list[str]
    task: str
    spatial_dims: int
    num_classes: int
    class_names: list[str]
    source: Path
    official_split: dict[str, list[str]] | None = field(default=None)


# --------------------------------------------------------------------------
# shared checks


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} not found: {path}")
    return path


def _check_finite(array: np.ndarray, path: Path, what: str = "image") -> None:
    """A whole array at once, since a NaN pixel otherwise surfaces only as a NaN loss."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    finite = np.isfinite(array)
    if not finite.all():
        first = ", ".join(str(int(i)) for i in np.unravel_index(np.argmin(finite), finite.shape))
        raise DataError(f"{path}: {what} holds {int(finite.size - finite.sum())} NaN or infinite values, "
                        f"the first at {what}[{first}]")


def _check_label_range(label: np.ndarray, num_classes: int, path: Path) -> None:
    lo, hi = int(label.min()), int(label.max())
    if lo < 0 or hi >= num_classes:
        found = sorted(int(v) for v in np.unique(label))[:10]
        raise DataError(
            f"{path}: label values {found} outside 0..{num_classes - 1} "
            f"(the dataset has {num_classes} classes)"
        )


def _check_same_size(image: np.ndarray, image_path: Path, label: np.ndarray, label_path: Path):
    if image.shape[1:] != label.shape:
        raise DataError(
            f"size mismatch: image {image_path} is {tuple(image.shape[1:])} but "
            f"mask {label_path} is {tuple(label.shape)}"
        )


def _apply(preprocess: Preprocess | None, image: np.ndarray, label: np.ndarray):
    return (image, label) if preprocess is None else preprocess(image, label)


# --------------------------------------------------------------------------
# image folders (Kvasir-SEG and similar)


def read_image_folders(
    root: str | Path,
    image_dir: str = "images",
    mask_dir: str = "masks",
    grayscale: bool = False,
    mask_mode: str = "binary",
    num_classes: int | None = None,
    limit: int | None = None,
    preprocess: Preprocess | None = None,
) -> RawData:
    """Read image/mask pairs that share a file stem (``images/a.jpg`` + ``masks/a.png``).

    ``mask_mode="binary"`` thresholds masks at 127, since JPEG masks (Kvasir-SEG)
    carry compression noise around 0 and 255; masks already stored as 0/1 are
    kept as they are. ``mask_mode="labels"`` keeps the stored integers as class
    indices; ``num_classes`` then bounds them (default: largest label + 1).
    """
    if mask_mode not in ("binary", "labels"):
        raise unknown_name("mask_mode", mask_mode, ["binary", "labels"])
    root = _require_dir(Path(root).absolute(), "dataset folder")
    images = _files_by_stem(_require_dir(root / image_dir, "image folder"))
    masks = _files_by_stem(_require_dir(root / mask_dir, "mask folder"))
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {root / image_dir}")
    ids = sorted(images)[:limit]
    out = RawData([], [], [], "segmentation", 2, 0, [], root)
    max_label = 0
    for case in ids:
        if case not in masks:
            raise DataError(f"image {images[case]} has no mask: no {case}.* in {root / mask_dir}")
        image = _read_image(images[case], grayscale)
        label = _read_mask(masks[case], mask_mode)
        _check_same_size(image, images[case], label, masks[case])
        if out.images and image.shape[0] != out.images[0].shape[0]:
            raise DataError(
                f"{images[case]} has {image.shape[0]} channels but {images[ids[0]]} has "
                f"{out.images[0].shape[0]}; use grayscale=True or convert the images"
            )
        if num_classes is not None:
            _check_label_range(label, num_classes, masks[case])
        max_label = max(max_label, int(label.max()))
        image, label = _apply(preprocess, image, label)
        out.images.append(image)
        out.labels.append(label)
        out.ids.append(case)
    out.num_classes = num_classes or (2 if mask_mode == "binary" else max(2, max_label + 1))
    out.class_names = _segmentation_class_names(out.num_classes)
    return out


def _segmentation_class_names(num_classes: int) -> list[str]:
    if num_classes == 2:
        return ["background", "foreground"]
    return ["background"] + [f"class{i}" for i in range(1, num_classes)]


def _files_by_stem(folder: Path) -> dict[str, Path]:
    """Image files in ``folder`` by stem; two files with one stem are ambiguous."""
    found: dict[str, Path] = {}
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in found:
            raise DataError(f"two files for one case in {folder}: {found[path.stem].name}, {path.name}")
        found[path.stem] = path
    return found


def _open_image(path: Path):
    """Open and fully decode an image, so truncated files fail here and not later."""
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
        raise DataError(f"cannot read image {path}: {e}") from e
    return img


def _read_image(path: Path, grayscale: bool) -> np.ndarray:
    """An image as float32 (C, H, W): grey -> 1 channel, colour -> 3 (alpha dropped)."""
    img = _open_image(path)
    if grayscale:
        img = img.convert("L") if img.mode not in ("I", "I;16", "F") else img
    elif img.mode in ("1", "LA", "L"):
        img = img.convert("L")
    elif img.mode not in ("I", "I;16", "F"):
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.float32)
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    _check_finite(arr, path)
    return np.ascontiguousarray(arr)


def _read_mask(path: Path, mask_mode: str) -> np.ndarray:
    """A mask as an int64 (H, W) label map (see :func:`read_image_folders`)."""
    img = _open_image(path)
    if img.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
        img = img.convert("L")
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise DataError(f"cannot read mask {path}: expected a single-channel image, got shape {arr.shape}")
    if mask_mode == "binary" and img.mode != "1" and arr.max() > 1:
        arr = arr > 127
    return arr.astype(np.int64)


# --------------------------------------------------------------------------
# Medical Segmentation Decathlon / nnU-Net raw layout


def read_decathlon(
    root: str | Path, limit: int | None = None, preprocess: Preprocess | None = None
) -> RawData:
    """Read a Decathlon-style folder: ``dataset.json``, ``imagesTr/``, ``labelsTr/``.

    Cases are listed by the ``training`` entries of ``dataset.json`` (MSD), or,
    without them, by the label files in ``labelsTr`` with one image file per
    channel, ``<case>_0000.nii.gz`` and so on (nnU-Net v2). They are read in
    sorted id order, so ``limit`` picks the same cases on every machine.
    """
    root = _require_dir(Path(root).absolute(), "dataset folder")
    meta_path = root / "dataset.json"
    meta = _read_json(meta_path)
    class_names = _decathlon_labels(meta, meta_path)
    channels = meta.get("channel_names", meta.get("modality")) or {"0": "image"}
    cases = sorted(_decathlon_cases(meta, meta_path, root, len(channels)).items())[:limit]
    if not cases:
        raise DataError(f"no training cases listed in {meta_path}")
    out = RawData([], [], [], "segmentation", 3, len(class_names), class_names, root)
    for case, (image_paths, label_path) in cases:
        image = _read_volume_channels(image_paths, len(channels))
        label = _read_label_volume(label_path)
        _check_same_size(image, image_paths[0], label, label_path)
        _check_label_range(label, out.num_classes, label_path)
        image, label = _apply(preprocess, image, label)
        out.images.append(image)
        out.labels.append(label)
        out.ids.append(case)
    return out


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"missing {path.name}: {path} not found")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e


def _decathlon_labels(meta: Any, path: Path) -> list[str]:
    """Class names in index order from MSD ``{"0": "bg"}`` or nnU-Net ``{"bg": 0}`` labels."""
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{path} has no 'labels' mapping")
    try:
        if all(isinstance(v, int) for v in labels.values()):
            pairs = {int(v): str(k) for k, v in labels.items()}
        else:
            pairs = {int(k): str(v) for k, v in labels.items()}
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: 'labels' must map class indices to names ({e})") from e
    if sorted(pairs) != list(range(len(pairs))):
        raise DataError(f"{path}: label indices {sorted(pairs)} are not 0..{len(pairs) - 1}")
    return [pairs[i] for i in range(len(pairs))]


def _decathlon_cases(meta: dict, path: Path, root: Path, n_channels: int) -> dict[str, tuple[list[Path], Path]]:
    """``case id -> ([image files], label file)`` from ``training`` or from ``labelsTr``."""
    if "training" in meta:
        cases = {}
        for entry in meta["training"]:
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise DataError(f"{path}: each 'training' entry needs 'image' and 'label', got {entry!r}")
            image = root / entry["image"]
            cases[_strip_nifti(image.name)] = ([image], root / entry["label"])
        return cases
    ending = meta.get("file_ending", ".nii.gz")
    labels_dir = _require_dir(root / "labelsTr", "label folder")
    cases = {}
    for label in labels_dir.glob(f"*{ending}"):
        case = label.name[: -len(ending)]
        images = [root / "imagesTr" / f"{case}_{c:04d}{ending}" for c in range(n_channels)]
        cases[case] = (images, label)
    return cases


def _strip_nifti(name: str) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", name)


def _load_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    if not path.is_file():
        raise DataError(f"NIfTI file not found: {path}")
    try:
        return np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as e:  # nibabel, gzip and zlib raise many kinds on bad files
        raise DataError(f"cannot read NIfTI file {path}: {e}") from e


def _read_volume_channels(paths: list[Path], n_channels: int) -> np.ndarray:
    """A float32 (C, x, y, z) volume from one 3D/4D file or one 3D file per channel."""
    parts = []
    for path in paths:
        vol = _load_nifti(path).astype(np.float32)
        if vol.ndim == 4:
            vol = np.moveaxis(vol, -1, 0)
        elif vol.ndim == 3:
            vol = vol[None]
        else:
            raise DataError(f"{path}: expected a 3D or 4D volume, got shape {vol.shape}")
        _check_finite(vol, path)
        parts.append(vol)
    image = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if image.shape[0] != n_channels:
        raise DataError(
            f"{paths[0]}: {image.shape[0]} channels but dataset.json lists {n_channels} modalities"
        )
    return np.ascontiguousarray(image)


def _read_label_volume(path: Path) -> np.ndarray:
    label = _load_nifti(path)
    if label.ndim != 3:
        raise DataError(f"{path}: expected a 3D label volume, got shape {label.shape}")
    if not np.issubdtype(label.dtype, np.integer):
        if not np.isfinite(label).all() or (label != np.round(label)).any():
            raise DataError(f"{path}: label volume holds non-integer values")
    return label.astype(np.int64)


def decathlon_to_slices(raw: RawData, axis: int = -1) -> RawData:
    """Cut each 3D volume into 2D slices along a spatial ``axis`` (-1: the last, z).

    Slice ids are ``<case>:<axis letter><index>`` (``hippocampus_001:z012``) so
    that :func:`case_of` recovers the volume: splits must keep all slices of
    one volume together, or test slices would have neighbours in training.
    """
    if raw.spatial_dims != 3 or raw.task != "segmentation":
        raise DataError(f"{raw.source}: only 3D segmentation volumes can be cut into slices")
    spatial_axis = axis % 3
    letter = "xyz"[spatial_axis]
    out = RawData([], [], [], raw.task, 2, raw.num_classes, list(raw.class_names), raw.source)
    for image, label, case in zip(raw.images, raw.labels, raw.ids):
        for k in range(label.shape[spatial_axis]):
            out.images.append(np.ascontiguousarray(np.take(image, k, axis=spatial_axis + 1)))
            out.labels.append(np.ascontiguousarray(np.take(label, k, axis=spatial_axis)))
            out.ids.append(f"{case}{SLICE_SEPARATOR}{letter}{k:03d}")
    return out


def case_of(item_id: str) -> str:
    """The case (volume) id of a slice id, or the id itself for a whole case."""
    return item_id.rsplit(SLICE_SEPARATOR, 1)[0]


# --------------------------------------------------------------------------
# MedMNIST v2 .npz


def read_medmnist(
    path_or_root: str | Path, limit: int | None = None, preprocess: Preprocess | None = None
) -> RawData:
    """Read a 2D MedMNIST v2 ``.npz`` (one file, or a folder holding one).

    The official train/val/test split is kept in ``official_split``. ``limit``
    takes up to that many rows of each split, evenly spaced rather than the
    first ones, because the train rows are ordered by class and the first rows
    would all be one class.
    """
    path = _find_npz(Path(path_or_root).absolute())
    arrays = _load_npz(path)
    num_classes = 1 + max(int(arrays[f"{s}_labels"].max(initial=0)) for s in ("train", "val", "test"))
    num_classes = max(2, num_classes)
    names = _MEDMNIST_CLASS_NAMES.get(path.stem, [f"class{i}" for i in range(num_classes)])
    out = RawData([], [], [], "classification", 2, num_classes, names, path, official_split={})
    for subset in ("train", "val", "test"):
        images, labels = arrays[f"{subset}_images"], arrays[f"{subset}_labels"]
        rows = _spread(len(images), limit)
        out.official_split[subset] = [f"{subset}/{i:05d}" for i in rows]
        for i in rows:
            image = _medmnist_image(images[i])
            label = np.asarray(labels[i].reshape(()), dtype=np.int64)
            image, label = _apply(preprocess, image, label)
            out.images.append(image)
            out.labels.append(label)
        out.ids.extend(out.official_split[subset])
    return out


def _find_npz(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"MedMNIST file not found: {path}")
    found = sorted(path.glob("*.npz"))
    if not found:
        raise DataError(f"no .npz file found in {path}")
    named = path / f"{path.name}.npz"
    if len(found) > 1 and named not in found:
        raise DataError(f"several .npz files in {path}: {', '.join(p.name for p in found)}; name one")
    return named if named in found else found[0]


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """All six MedMNIST arrays, decoded now so that a damaged file fails here."""
    keys = [f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")]
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataError(f"{path} is not a MedMNIST file: missing arrays {', '.join(missing)}")
            arrays = {k: npz[k] for k in keys}
    except DataError:
        raise
    except Exception as e:  # zipfile, zlib and numpy raise many kinds on bad files
        raise DataError(f"cannot read MedMNIST file {path}: {e}") from e
    for s in ("train", "val", "test"):
        images, labels = arrays[f"{s}_images"], arrays[f"{s}_labels"]
        if len(images) != len(labels):
            raise DataError(f"{path}: {len(images)} {s} images but {len(labels)} labels")
        if labels.ndim != 2 or labels.shape[1] != 1:
            raise DataError(f"{path}: {s}_labels has shape {labels.shape}; only single-label sets are supported")
        if images.ndim == 4 and images.shape[-1] != 3 or images.ndim not in (3, 4):
            raise DataError(f"{path}: {s}_images has shape {images.shape}; only 2D grey or RGB sets are supported")
    for key, array in arrays.items():
        _check_finite(array, path, key)
    return arrays


def _spread(n: int, limit: int | None) -> list[int]:
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, limit).round().astype(int).tolist()))


def _medmnist_image(row: np.ndarray) -> np.ndarray:
    image = row.astype(np.float32)
    return image[None] if image.ndim == 2 else np.ascontiguousarray(np.moveaxis(image, -1, 0))


# --------------------------------------------------------------------------
# dispatch

READERS: dict[str, Callable[..., RawData]] = {
    "folders": read_image_folders,
    "decathlon": read_decathlon,
    "medmnist": read_medmnist,
}

#: dataset name -> (format, reader options)
DATASETS: dict[str, tuple[str, dict[str, Any]]] = {
    "kvasir-seg": ("folders", {"mask_mode": "binary"}),
    "hippocampus": ("decathlon", {}),
    "pneumoniamnist": ("medmnist", {}),
}


def read_dataset(name_or_format: str, root: str | Path, limit: int | None = None, **options) -> RawData:
    """Read a known dataset by name, or any dataset by format name."""
    if name_or_format in DATASETS:
        fmt, defaults = DATASETS[name_or_format]
        options = {**defaults, **options}
    elif name_or_format in READERS:
        fmt = name_or_format
    else:
        raise unknown_name("dataset or format", name_or_format, [*DATASETS, *READERS])
    reader = READERS[fmt]
    allowed = [p for p in inspect.signature(reader).parameters if p not in ("root", "path_or_root", "limit")]
    for key in options:
        if key not in allowed:
            raise unknown_name(f"option for format {fmt!r}", key, allowed)
    return reader(root, limit=limit, **options)
