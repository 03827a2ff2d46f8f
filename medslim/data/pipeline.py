"""From a dataset on disk to the torch datasets the training loop consumes.

Deterministic preprocessing (resizing, intensity normalisation, padding) runs
once, in :func:`build_data`, and its results stay in memory: the datasets are
small, and recomputing it every epoch would cost more than training a small
network on one CPU core. Only the random augmentation runs per item.

Augmentation is a pure function of ``(seed, item index)``: the training loop
calls ``train.reseed(...)`` with an epoch-specific seed before each epoch, and a
run resumed at epoch k then sees exactly the augmentations an uninterrupted run
would, whatever the number of loader workers or the order items are drawn in.

MONAI is imported inside functions only, since importing it takes seconds and
``import medslim.data`` must stay cheap.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medslim.data.readers import RawData, case_of, decathlon_to_slices, read_dataset
from medslim.data.splits import check_split, make_split
from medslim.errors import ConfigError, DataError

DEFAULTS: dict[str, Any] = {
    "dataset": None,
    "format": None,
    "options": {},
    "size": None,
    "label_size": None,
    "slices": False,
    "normalize": None,
    "augment": True,
    "limit": None,
    "seed": 0,
    "n_test": None,
    "test_fraction": None,
    "val_fraction": 0.1,
    "divisible": 16,
}

#: Defaults that depend on the dataset, applied under the user's own values.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "kvasir-seg": {"n_test": 120, "size": [128, 128]},
    "hippocampus": {"test_fraction": 0.2},
    "pneumoniamnist": {"size": [28, 28]},
}

#: With ``limit`` a fixed test count may exceed the cases read: use its fraction.
LIMITED_DEFAULTS: dict[str, dict[str, Any]] = {
    "kvasir-seg": {"n_test": None, "test_fraction": 0.12},
}

PATCH_3D = (40, 56, 40)
NORMALIZERS = ("zscore", "minmax")


@dataclass
class TaskInfo:
    """What a model needs to know about the data it will be trained on."""

    task: str
    spatial_dims: int
    in_channels: int
    num_classes: int
    class_names: list[str]
    input_size: tuple[int, ...]
    #: the mask size when it differs from the input size (low-resolution input)
    label_size: tuple[int, ...] | None = None

    @property
    def output_factor(self) -> int | None:
        """Mask size / input size, or None when the masks are at the input size."""
        if self.label_size is None:
            return None
        return self.label_size[0] // self.input_size[0]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["label_size"] = None if self.label_size is None else list(self.label_size)
        return d


@dataclass
class TaskData:
    """The prepared data of one task: training set, evaluation items and their split."""

    info: TaskInfo
    split: dict[str, list[str]]
    train: torch.utils.data.Dataset
    val: Sequence[dict]
    test: Sequence[dict]


# --------------------------------------------------------------------------
# entry point


def build_data(cfg: Mapping[str, Any], root: str | Path, split: Mapping | None = None) -> TaskData:
    """Read, split and preprocess a dataset as the ``data`` section of a config says.

    ``split`` (for example one loaded from a run folder) replaces the seeded
    split; its ids must all be among the cases read.
    """
    opts = resolve_config(cfg)
    prep = _Preprocessor(opts["size"], opts["normalize"], opts["label_size"])
    raw = _read(opts, Path(root), prep)
    split = _choose_split(opts, raw, split)
    info = _task_info(opts, raw, split["train"])
    cases = dict(zip(raw.ids, zip(raw.images, raw.labels)))
    if info.task == "segmentation":
        _check_foreground(raw.source, [cases[i][1] for i in split["train"]])
    train = _train_dataset(info, [(i, *cases[i]) for i in split["train"]], opts)
    divisible = None if info.label_size else opts["divisible"]  # resized items need no padding
    val, test = ([_eval_item(info, i, *cases[i], divisible) for i in split[s]] for s in ("val", "test"))
    return TaskData(info, split, train, val, test)


# --------------------------------------------------------------------------
# configuration


def resolve_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``data`` section with defaults filled in and every value checked.

    ``size`` stays ``"default"`` when the user gave none, because its default
    depends on the spatial dimensions, known only once the data is read.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"the data section must be a mapping, got {type(cfg).__name__}")
    for key in cfg:
        if key not in DEFAULTS:
            raise ConfigError(f"unknown key {key!r} in the data section; allowed keys: {', '.join(DEFAULTS)}")
    name = cfg.get("dataset")
    if not isinstance(name, str) or not name:
        raise ConfigError("data.dataset is required: a dataset name such as 'kvasir-seg'")
    opts = {**DEFAULTS, "size": "default", **DATASET_DEFAULTS.get(name, {})}
    if cfg.get("limit") is not None and not {"n_test", "test_fraction"} & set(cfg):
        opts.update(LIMITED_DEFAULTS.get(name, {}))
    opts.update(cfg)
    _check_values(opts)
    return opts


def _check_values(o: dict[str, Any]) -> None:
    def need(key: str, ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"data.{key} must be {what}, got {o[key]!r}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    size = o["size"]
    need("size", size in (None, "default") or (
        isinstance(size, (list, tuple)) and len(size) in (2, 3) and all(is_int(s) and s > 0 for s in size)
    ), "null or a list of 2 or 3 positive integers")
    label_size = o["label_size"]
    need("label_size", label_size is None or (
        isinstance(label_size, (list, tuple)) and len(label_size) == 2 and all(is_int(s) and s > 0 for s in label_size)
    ), "null or a list of 2 positive integers (2D images)")
    if label_size is not None:
        _check_label_size(o["size"], label_size)
    need("format", o["format"] is None or isinstance(o["format"], str), "a format name")
    need("options", isinstance(o["options"], Mapping), "a mapping of reader options")
    need("slices", isinstance(o["slices"], bool), "true or false")
    need("augment", isinstance(o["augment"], bool), "true or false")
    need("normalize", o["normalize"] in (None, *NORMALIZERS), "one of " + ", ".join(NORMALIZERS))
    need("limit", o["limit"] is None or (is_int(o["limit"]) and o["limit"] > 0), "null or a positive integer")
    need("seed", is_int(o["seed"]), "an integer")
    need("n_test", o["n_test"] is None or (is_int(o["n_test"]) and o["n_test"] >= 0), "null or an integer >= 0")
    need("test_fraction", o["test_fraction"] is None or isinstance(o["test_fraction"], (int, float)), "null or a number")
    need("val_fraction", isinstance(o["val_fraction"], (int, float)), "a number")
    need("divisible", is_int(o["divisible"]) and o["divisible"] > 0, "a positive integer")


def _check_label_size(size: Any, label_size: Sequence[int]) -> None:
    """Masks at a whole multiple of the input size, the same along every axis."""
    if not isinstance(size, (list, tuple)) or len(size) != len(label_size):
        raise ConfigError(f"data.label_size {list(label_size)} needs data.size, the input size, with "
                          f"as many axes (e.g. data.size=[32,32] with data.label_size=[256,256])")
    ratios = {t / s for s, t in zip(size, label_size)}
    ratio = ratios.pop()
    if ratios or ratio != int(ratio) or ratio < 2:
        raise ConfigError(f"data.label_size {list(label_size)} must be the same whole multiple "
                          f"(2 or more) of data.size {list(size)} along every axis")


# --------------------------------------------------------------------------
# reading and splitting


def _read(opts: dict[str, Any], root: Path, prep: "_Preprocessor") -> RawData:
    """Read the dataset, cut it into slices if asked, and preprocess every case once."""
    reader = opts["format"] or opts["dataset"]
    if not opts["slices"]:
        return read_dataset(reader, root, limit=opts["limit"], preprocess=prep, **opts["options"])
    raw = read_dataset(reader, root, limit=opts["limit"], **opts["options"])
    if raw.spatial_dims != 3 or raw.task != "segmentation":
        raise ConfigError(f"data.slices needs a 3D segmentation dataset; {opts['dataset']!r} is not one")
    raw = decathlon_to_slices(raw)
    pairs = [prep(image, label) for image, label in zip(raw.images, raw.labels)]
    raw.images, raw.labels = [p[0] for p in pairs], [p[1] for p in pairs]
    return raw


def _choose_split(opts: dict[str, Any], raw: RawData, given: Mapping | None) -> dict[str, list[str]]:
    """The given split, else the dataset's official one, else a seeded one (by case)."""
    if given is not None:
        source = getattr(given, "source", None) or "the given split"  # a loaded Split names its file
        return check_split(given, raw.ids, source)
    fixed_test = opts["n_test"] is not None or opts["test_fraction"] is not None
    if raw.official_split is not None and not fixed_test:
        return {s: list(v) for s, v in raw.official_split.items()}
    groups = {i: case_of(i) for i in raw.ids} if opts["slices"] else None
    return make_split(
        raw.ids,
        opts["seed"],
        n_test=opts["n_test"],
        test_fraction=opts["test_fraction"] if fixed_test else 0.2,
        val_fraction=opts["val_fraction"],
        groups=groups,
    )


def _check_foreground(source: Path, train_labels: Sequence[Any]) -> None:
    """Refuse a training set whose masks are all background.

    It would train without error and report Dice 0. Some empty masks are fine
    (negative cases). The masks are already in memory here, read and resized
    by the readers, so this costs no second pass over the files.
    """
    if not any(bool(label.any()) for label in train_labels):
        raise DataError(
            f"{source}: all {len(train_labels)} masks of the training split are empty "
            f"(no foreground pixel); nothing could be learned, check the mask files"
        )


def _task_info(opts: dict[str, Any], raw: RawData, train_ids: list[str]) -> TaskInfo:
    by_id = dict(zip(raw.ids, raw.images))
    shapes = [tuple(by_id[i].shape[1:]) for i in train_ids]
    size = _input_size(opts, raw, shapes)
    if len(size) != raw.spatial_dims:
        raise ConfigError(f"data.size {list(size)} does not match the {raw.spatial_dims}D images")
    if opts["label_size"] is not None and (raw.task != "segmentation" or raw.spatial_dims != 2):
        raise ConfigError(f"data.label_size needs 2D segmentation data; {opts['dataset']!r} is not such data")
    return TaskInfo(
        task=raw.task,
        spatial_dims=raw.spatial_dims,
        in_channels=int(raw.images[0].shape[0]),
        num_classes=raw.num_classes,
        class_names=list(raw.class_names),
        input_size=size,
        label_size=None if opts["label_size"] is None else tuple(opts["label_size"]),
    )


def _input_size(opts: dict[str, Any], raw: RawData, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The training size: the resize target (2D), the patch (3D) or the largest native size.

    A native size is rounded up to ``divisible`` for segmentation, so that a
    U-Net accepts the padded training items.
    """
    size = opts["size"]
    if size == "default":
        size = PATCH_3D if raw.spatial_dims == 3 else None
    if size is not None:
        return tuple(int(s) for s in size)
    largest = np.max(np.array(shapes), axis=0)
    k = opts["divisible"] if raw.task == "segmentation" else 1
    return tuple(int(math.ceil(s / k) * k) for s in largest)


# --------------------------------------------------------------------------
# preprocessing (once per case)


@contextlib.contextmanager
def _plain_tensors() -> Iterator[None]:
    """Run MONAI transforms without MetaTensor bookkeeping.

    We keep no metadata, and the bookkeeping costs about ten times the work of
    a flip on a 128x128 image. MONAI's switch is global, so it is restored.
    """
    from monai.data import get_track_meta, set_track_meta

    before = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(before)


class _Preprocessor:
    """Resize (2D only, when a size is set) and normalise one case; the readers' hook.

    Returns torch tensors: the image as float32 (C, *S), a segmentation label
    as uint8 (*S) when it fits (to keep a thousand label maps small), a class
    label as an int64 scalar.
    """

    def __init__(self, size: Any, normalize: str | None, label_size: Any = None):
        self.size = None if size in (None, "default") else tuple(size)
        self.label_size = None if label_size is None else tuple(label_size)
        self.normalize = normalize

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        from monai.transforms import NormalizeIntensity, ScaleIntensity

        segmentation = label.ndim > 0
        image_t, label_t = torch.as_tensor(image, dtype=torch.float32), torch.as_tensor(label)
        with _plain_tensors():
            if self.size is not None and image.ndim == 3:
                image_t, label_t = self._resize(image_t, label_t, segmentation)
            method = self.normalize or ("zscore" if segmentation else "minmax")
            if method == "zscore":
                image_t = NormalizeIntensity(channel_wise=True)(image_t)
            else:
                image_t = ScaleIntensity(minv=0.0, maxv=1.0)(image_t)
        if segmentation:
            label_t = label_t.to(torch.uint8 if int(label_t.max()) < 256 else torch.int64)
        return image_t.contiguous(), label_t.contiguous()

    def _resize(self, image: torch.Tensor, label: torch.Tensor, segmentation: bool):
        from monai.transforms import Resize

        if len(self.size) != image.ndim - 1:
            raise ConfigError(f"data.size {list(self.size)} does not match the {image.ndim - 1}D images")
        label_done = self.label_size is None or tuple(label.shape) == self.label_size
        if tuple(image.shape[1:]) == self.size and label_done:
            return image, label
        shrinking = all(t <= s for t, s in zip(self.size, image.shape[1:]))
        image = Resize(self.size, mode="area" if shrinking else "bilinear")(image)
        if segmentation:
            target = self.label_size or self.size
            label = Resize(target, mode="nearest-exact")(label[None].float())[0].round().long()
        return image, label


def _eval_item(info: TaskInfo, case: str, image: torch.Tensor, label: torch.Tensor,
               divisible: int | None) -> dict:
    """An un-augmented item; segmentation items are padded at the end to ``divisible`` (None: not padded).

    ``shape`` is the label's size before padding: ``x[..., :shape[0], :shape[1]]`` undoes it.
    """
    from monai.transforms import DivisiblePad, SpatialPad

    with _plain_tensors():
        if info.task == "classification":
            return {"image": SpatialPad(info.input_size)(image), "label": label.long(), "id": case}
        pad = DivisiblePad(divisible, method="end") if divisible else (lambda t: t)
        return {
            "image": pad(image),
            "label": pad(label[None]).long(),
            "id": case,
            "shape": tuple(int(s) for s in label.shape),
        }


# --------------------------------------------------------------------------
# the augmented training set


class AugmentedDataset(torch.utils.data.Dataset):
    """Fixed-size training items, augmented as a pure function of ``(seed, index)``.

    ``spatial`` transforms are applied to the image and, with the same random
    draw, to a segmentation label; ``intensity`` transforms to the image only.
    """

    def __init__(self, items: list[tuple[str, torch.Tensor, torch.Tensor]], spatial: list, intensity: list, seed: int):
        self.ids = [case for case, _, _ in items]
        self._images = [image for _, image, _ in items]
        self._labels = [label for _, _, label in items]
        self._spatial = spatial
        self._intensity = intensity
        self._seed = int(seed)

    def reseed(self, seed: int) -> None:
        """Choose the augmentation stream; call it before each epoch with an epoch-specific seed.

        With loader workers, call it before creating the epoch's iterator: the
        workers copy the dataset when they start.
        """
        self._seed = int(seed)

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> dict:
        index = range(len(self))[index]
        state = np.random.RandomState([self._seed % 2**32, self._seed // 2**32 % 2**32, index])
        for t in self._spatial + self._intensity:
            t.set_random_state(state=state)
        image, label = self._images[index], self._labels[index]
        segmentation = label.ndim > 0
        if segmentation:
            label = label[None]
        with _plain_tensors():
            for t in self._spatial:
                image = t(image)
                if segmentation:
                    label = t(label, randomize=False)
            for t in self._intensity:
                image = t(image)
        image = torch.as_tensor(image).to(torch.float32, copy=True).contiguous()
        return {"image": image, "label": torch.as_tensor(label).long().contiguous(), "id": self.ids[index]}


def _train_dataset(info: TaskInfo, items: list[tuple[str, torch.Tensor, torch.Tensor]], opts: dict) -> AugmentedDataset:
    """Pad training cases to at least the training size once, and pick the random transforms."""
    from monai.transforms import SpatialPad

    size = info.input_size
    with _plain_tensors():
        pad = SpatialPad(size)
        padded = [(case, pad(image), pad(label[None])[0] if label.ndim else label) for case, image, label in items]
    spatial = []
    if any(tuple(image.shape[1:]) != size for _, image, _ in padded):
        from monai.transforms import RandSpatialCrop

        spatial.append(RandSpatialCrop(size, random_size=False))
    spatial_aug, intensity = _augmentations(info) if opts["augment"] else ([], [])
    return AugmentedDataset(padded, spatial + spatial_aug, intensity, opts["seed"])


def _augmentations(info: TaskInfo) -> tuple[list, list]:
    """Cheap, label-preserving transforms for each kind of task.

    Segmentation: flips along every axis, and in 2D quarter turns (square
    sizes only, to keep items one size) and mild intensity changes.
    Classification (chest X-rays): no flips, since left and right differ in
    anatomy; a small affine jitter and mild intensity changes instead.
    """
    from monai.transforms import RandAffine, RandFlip, RandRotate90, RandScaleIntensity, RandShiftIntensity

    mild = [RandScaleIntensity(0.1, prob=0.3), RandShiftIntensity(0.1, prob=0.3)]
    if info.task == "classification":
        jitter = tuple(0.05 * s for s in info.input_size)
        affine = RandAffine(
            prob=0.5, rotate_range=math.pi / 18, translate_range=jitter, scale_range=0.1, padding_mode="border"
        )
        return [], [affine, *mild]
    spatial = [RandFlip(prob=0.5, spatial_axis=a) for a in range(info.spatial_dims)]
    if info.spatial_dims == 3:
        return spatial, []
    if info.input_size[0] == info.input_size[1]:
        spatial.append(RandRotate90(prob=0.5, max_k=3, spatial_axes=(0, 1)))
    return spatial, mild
