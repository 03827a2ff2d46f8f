"""Find a dataset on disk, and the registry of the datasets medslim knows.

A user's dataset can be in several places (a path on the command line, an
environment variable, the shared folder beside the project, the download
cache). This module checks them in a fixed, documented order and, when the
dataset is nowhere, says every place it looked so the user can fix it.

Only the standard library is imported here: ``medslim data list`` and the
CLI's argument checks must stay fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medslim.errors import DataError, unknown_name

ENV_DATA = "MEDSLIM_DATA"
ENV_CACHE = "MEDSLIM_CACHE"


@dataclass(frozen=True)
class DatasetInfo:
    """What medslim knows about one public dataset.

    ``markers`` are paths relative to the dataset folder that prove a folder
    holds it (a trailing ``/`` means a folder). ``url``/``checksum``/``kind``
    describe the official download used by :mod:`medslim.data.fetch`;
    ``expected_count`` is the number of samples in the official archive.
    """

    name: str
    task: str
    description: str
    markers: tuple[str, ...]
    url: str
    checksum: str | None
    kind: str  # "zip", "tar" or "file"
    expected_count: int | None
    source_note: str


DATASETS: dict[str, DatasetInfo] = {
    "kvasir-seg": DatasetInfo(
        name="kvasir-seg",
        task="2D binary segmentation",
        description="Kvasir-SEG: 1000 colonoscopy images with polyp masks (Jha et al., MMM 2020)",
        markers=("images/", "masks/"),
        url="https://datasets.simula.no/downloads/kvasir-seg.zip",
        # Simula publishes no checksum. This SHA-256 (46,227,172 bytes) is the one
        # recorded independently by torch-em (constantinpape/torch-em,
        # torch_em/data/datasets/medical/kvasir.py) and other projects; the
        # 1000 image/mask pairs are checked as well.
        checksum="sha256:03b30e21d584e04facf49397a2576738fd626815771afbbf788f74a7153478f7",
        kind="zip",
        expected_count=1000,
        source_note="no official checksum; SHA-256 as recorded by torch-em",
    ),
    "hippocampus": DatasetInfo(
        name="hippocampus",
        task="3D multi-class segmentation",
        description="Medical Segmentation Decathlon Task04_Hippocampus: 260 labelled MRI volumes",
        markers=("dataset.json",),
        # The mirror and md5 that MONAI's DecathlonDataset uses
        # (monai/apps/datasets.py, DecathlonDataset.resource / .md5).
        url="https://msd-for-monai.s3-us-west-2.amazonaws.com/Task04_Hippocampus.tar",
        checksum="md5:9d24dba78a72977dbd1d2e110310f31b",
        kind="tar",
        expected_count=260,
        source_note="md5 from MONAI's DecathlonDataset",
    ),
    "pneumoniamnist": DatasetInfo(
        name="pneumoniamnist",
        task="2D binary classification",
        description="MedMNIST v2 PneumoniaMNIST: 5856 chest X-rays at 28x28, normal vs pneumonia",
        markers=("pneumoniamnist.npz",),
        # medmnist 3.0.2 medmnist/info.py; the MedMNIST v2 record
        # (zenodo.org/record/6496656) lists the same md5 for this file.
        url="https://zenodo.org/records/10519652/files/pneumoniamnist.npz?download=1",
        checksum="md5:28209eda62fecd6e6a2d98b1501bb15f",
        kind="file",
        expected_count=None,
        source_note="md5 from medmnist's info.py",
    ),
}


def cache_dir() -> Path:
    """The folder that ``medslim data fetch`` fills: ``$MEDSLIM_CACHE`` or ``~/.cache/medslim/data``."""
    return Path(os.environ.get(ENV_CACHE) or "~/.cache/medslim/data").expanduser()


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry for ``name``; a ConfigError lists the known names."""
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    return DATASETS[name]


def has_markers(folder: Path, info: DatasetInfo) -> bool:
    """Whether ``folder`` holds every marker of ``info`` (so readers can use it)."""
    for marker in info.markers:
        path = folder / marker.rstrip("/")
        if not (path.is_dir() if marker.endswith("/") else path.is_file()):
            return False
    return True


def _describe(info: DatasetInfo) -> str:
    return " and ".join(info.markers)


def _repo_root() -> Path:
    """The folder that holds the ``medslim`` package (the checkout's root when installed editable)."""
    return Path(__file__).resolve().parent.parent.parent


def _in_folder(folder: Path, info: DatasetInfo) -> Path | None:
    """``folder`` itself or ``folder/<name>``, whichever holds the dataset, else None."""
    for candidate in (folder, folder / info.name):
        if candidate.is_dir() and has_markers(candidate, info):
            return candidate.resolve()
    return None


def _from_data_option(data: str | os.PathLike, info: DatasetInfo) -> Path:
    """Resolve ``--data PATH``; an explicit path that holds nothing usable is an error, never skipped."""
    path = Path(data).expanduser()
    if path.is_file() and len(info.markers) == 1 and path.name == info.markers[0]:
        return path.parent.resolve()  # the user pointed at the file itself
    if not path.is_dir():
        raise DataError(f"--data {path}: no such folder")
    found = _in_folder(path, info)
    if found is None:
        raise DataError(
            f"--data {path} does not hold the {info.name} dataset: expected {_describe(info)} "
            f"in {path} or in {path / info.name}"
        )
    return found


def _default_places(name: str) -> list[Path]:
    """The shared-folder and cache places, in order, without duplicates."""
    places = [
        Path.cwd() / ".." / "shared" / "data" / name,
        _repo_root() / ".." / "shared" / "data" / name,
        cache_dir() / name,
    ]
    unique: list[Path] = []
    for place in places:
        place = Path(os.path.abspath(place))  # shown to the user: no ".." in the path
        if place not in unique:
            unique.append(place)
    return unique


def find_dataset(name: str | None, data: str | os.PathLike | None = None) -> Path:
    """Return the folder holding dataset ``name``.

    Order: ``data`` (``--data``, the folder itself or its parent), then
    ``$MEDSLIM_DATA`` (same two forms), then ``../shared/data/<name>`` from the
    working directory and from the repository root, then the download cache.
    With ``name=None`` (a custom dataset) ``data`` is required and returned.
    """
    if name is None:
        if data is None:
            raise DataError("no dataset given: name a dataset or pass --data PATH")
        path = Path(data).expanduser()
        if not path.is_dir():
            raise DataError(f"--data {path}: no such folder")
        return path.resolve()
    info = dataset_info(name)
    if data is not None:
        return _from_data_option(data, info)
    looked: list[str] = []
    env = os.environ.get(ENV_DATA)
    if env:
        found = _in_folder(Path(env).expanduser(), info)
        if found is not None:
            return found
        looked.append(f"${ENV_DATA}={env} (and {Path(env) / name})")
    else:
        looked.append(f"${ENV_DATA} (not set)")
    for place in _default_places(name):
        if place.is_dir() and has_markers(place, info):
            return place.resolve()
        looked.append(str(place))
    raise DataError(_not_found_message(info, looked))


def _not_found_message(info: DatasetInfo, looked: list[str]) -> str:
    lines = [f"dataset {info.name!r} not found (a folder with {_describe(info)}); looked in:"]
    lines += [f"  - {place}" for place in looked]
    lines.append(f"Download it with `medslim data fetch {info.name}`, or pass --data PATH.")
    return "\n".join(lines)


def list_datasets(data: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per known dataset, with where it was found (or None), for ``medslim data list``."""
    rows = []
    for info in DATASETS.values():
        try:
            path: Path | None = find_dataset(info.name, data)
        except DataError:
            path = None  # a --data folder may hold only some of the datasets
        rows.append(
            {
                "name": info.name,
                "task": info.task,
                "description": info.description,
                "path": str(path) if path else None,
                "url": info.url,
            }
        )
    if data is not None and not any(row["path"] for row in rows):
        _check_data_folder(Path(data).expanduser())
    return rows


def _check_data_folder(path: Path) -> None:
    """A ``--data`` that is no folder is a typo, not a folder with no datasets in it.

    Called only when nothing was found, so that ``--data .../pneumoniamnist.npz``,
    a file that :func:`find_dataset` accepts, still lists that dataset.
    """
    if path.exists() and not path.is_dir():
        raise DataError(f"--data {path} is not a folder; pass the folder that holds the datasets")
    if not path.is_dir():
        raise DataError(f"--data {path}: no such folder")
