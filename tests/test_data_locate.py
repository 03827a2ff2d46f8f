"""Tests for medslim.data.locate: the resolution order and its error messages.

Dataset folders are faked in tmp_path with just their markers; only the last
test reads the real ``../shared/data`` (and skips without it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from medslim.data import locate
from medslim.data.locate import DATASETS, cache_dir, find_dataset, list_datasets
from medslim.errors import ConfigError, DataError


def make_dataset(folder: Path, name: str) -> Path:
    """A folder that holds just the markers of ``name``."""
    folder.mkdir(parents=True, exist_ok=True)
    for marker in DATASETS[name].markers:
        if marker.endswith("/"):
            (folder / marker).mkdir(exist_ok=True)
        else:
            (folder / marker).write_text("{}")
    return folder


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Every place looked at, empty, under tmp_path; the real shared folder is hidden."""
    paths = {
        "data": tmp_path / "given",
        "env": tmp_path / "env",
        "cwd": tmp_path / "proj" / "sub",
        "cwd_shared": tmp_path / "proj" / "shared" / "data",
        "repo": tmp_path / "repo" / "medslim-checkout",
        "repo_shared": tmp_path / "repo" / "shared" / "data",
        "cache": tmp_path / "cache",
    }
    for key in ("data", "env", "cwd", "repo"):
        paths[key].mkdir(parents=True)
    monkeypatch.chdir(paths["cwd"])
    monkeypatch.setattr(locate, "_repo_root", lambda: paths["repo"])
    monkeypatch.setenv("MEDSLIM_DATA", str(paths["env"]))
    monkeypatch.setenv("MEDSLIM_CACHE", str(paths["cache"]))
    return paths


def test_resolution_order(places: dict[str, Path]) -> None:
    """Each place wins over every later one; removing it reveals the next."""
    name = "kvasir-seg"
    order = [
        make_dataset(places["env"] / name, name),
        make_dataset(places["cwd_shared"] / name, name),
        make_dataset(places["repo_shared"] / name, name),
        make_dataset(places["cache"] / name, name),
    ]
    given = make_dataset(places["data"] / name, name)
    assert find_dataset(name, data=places["data"]) == given.resolve()
    for expected in order:
        assert find_dataset(name) == expected.resolve()
        for marker in DATASETS[name].markers:  # break this place: the next one is used
            os.rmdir(expected / marker)


def test_data_option_is_the_folder_itself_or_its_parent(places: dict[str, Path]) -> None:
    direct = make_dataset(places["data"] / "my-copy", "hippocampus")
    assert find_dataset("hippocampus", data=direct) == direct.resolve()
    parent = make_dataset(places["data"] / "pneumoniamnist", "pneumoniamnist")
    assert find_dataset("pneumoniamnist", data=places["data"]) == parent.resolve()
    assert find_dataset("pneumoniamnist", data=str(parent / "pneumoniamnist.npz")) == parent.resolve()


def test_env_holding_the_dataset_itself(places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_dataset(places["env"] / "somewhere", "hippocampus")
    monkeypatch.setenv("MEDSLIM_DATA", str(folder))
    assert find_dataset("hippocampus") == folder.resolve()


def test_wrong_data_folder_errors_without_falling_through(places: dict[str, Path]) -> None:
    make_dataset(places["cache"] / "kvasir-seg", "kvasir-seg")  # would be found if it fell through
    make_dataset(places["data"] / "hippocampus", "hippocampus")
    with pytest.raises(DataError) as err:
        find_dataset("kvasir-seg", data=places["data"])
    message = str(err.value)
    assert str(places["data"]) in message and "images/" in message and "masks/" in message
    with pytest.raises(DataError, match="no such folder"):
        find_dataset("kvasir-seg", data=places["data"] / "missing")


def test_unknown_name() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'.*hippocampus, kvasir-seg, pneumoniamnist"):
        find_dataset("mnist")


def test_not_found_lists_every_place(places: dict[str, Path]) -> None:
    with pytest.raises(DataError) as err:
        find_dataset("hippocampus")
    message = str(err.value)
    for key in ("env", "cwd_shared", "repo_shared", "cache"):
        assert str(places[key]) in message
    assert "dataset.json" in message
    assert "medslim data fetch hippocampus" in message and "--data PATH" in message


def test_not_found_says_env_is_unset(places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDSLIM_DATA")
    with pytest.raises(DataError, match=r"\$MEDSLIM_DATA \(not set\)"):
        find_dataset("pneumoniamnist")


def test_custom_dataset_folder(places: dict[str, Path]) -> None:
    assert find_dataset(None, data=places["data"]) == places["data"].resolve()
    with pytest.raises(DataError, match="no such folder"):
        find_dataset(None, data=places["data"] / "missing")
    with pytest.raises(DataError, match="--data"):
        find_dataset(None)


def test_cache_dir_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDSLIM_CACHE", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "medslim" / "data"


def test_list_datasets(places: dict[str, Path]) -> None:
    found = make_dataset(places["cache"] / "pneumoniamnist", "pneumoniamnist")
    rows = {row["name"]: row for row in list_datasets()}
    assert set(rows) == set(DATASETS)
    assert rows["pneumoniamnist"]["path"] == str(found.resolve())
    assert rows["kvasir-seg"]["path"] is None
    for row in rows.values():
        assert row["url"].startswith("https://") and row["task"] and row["description"]
    # with --data, datasets that folder lacks are simply not found
    rows = {row["name"]: row for row in list_datasets(data=places["data"])}
    assert all(row["path"] is None for row in rows.values())


def test_finds_the_real_shared_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shared = Path(locate.__file__).resolve().parents[2].parent / "shared" / "data"
    if not (shared / "kvasir-seg").is_dir():
        pytest.skip(f"shared data folder {shared} is absent")
    monkeypatch.delenv("MEDSLIM_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # found from the repository root, not the working directory
    for name in DATASETS:
        assert find_dataset(name) == (shared / name).resolve()


def test_list_datasets_with_a_data_path_that_is_no_folder(places: dict[str, Path]) -> None:
    """A mistyped --data is an error naming it, not a list of datasets "not found"."""
    missing = places["data"] / "nosuch"
    with pytest.raises(DataError, match=f"--data {re.escape(str(missing))}: no such folder"):
        list_datasets(data=missing)
    a_file = places["data"] / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(DataError, match=f"--data {re.escape(str(a_file))} is not a folder"):
        list_datasets(data=a_file)
    # the MedMNIST file itself is a --data that find_dataset accepts: it stays listed
    npz = make_dataset(places["data"] / "pneumoniamnist", "pneumoniamnist") / "pneumoniamnist.npz"
    rows = {row["name"]: row["path"] for row in list_datasets(data=npz)}
    assert rows["pneumoniamnist"] == str(npz.parent.resolve()) and rows["kvasir-seg"] is None
