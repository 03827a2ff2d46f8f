"""Splits: seeded, disjoint, covering, case-keeping, and saved/loaded faithfully."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medslim.data.splits import load_split, make_split, save_split
from medslim.errors import ConfigError, DataError

IDS = [f"case_{i:04d}" for i in range(1000)]


def _flat(split):
    return [i for s in ("train", "val", "test") for i in split[s]]


def test_kvasir_convention():
    split = make_split(IDS, seed=0, n_test=120)
    assert [len(split[s]) for s in ("train", "val", "test")] == [792, 88, 120]
    assert sorted(_flat(split)) == IDS


def test_same_seed_same_split_other_seed_other_split():
    assert make_split(IDS, seed=3, test_fraction=0.2) == make_split(IDS, seed=3, test_fraction=0.2)
    assert make_split(IDS, seed=3, test_fraction=0.2) != make_split(IDS, seed=4, test_fraction=0.2)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(3, 60),
    seed=st.integers(0, 2**32 - 1),
    test_fraction=st.floats(0.0, 0.4),
    val_fraction=st.floats(0.0, 0.3),
)
def test_disjoint_and_covering(n, seed, test_fraction, val_fraction):
    ids = [f"id{i}" for i in range(n)]
    split = make_split(ids, seed, test_fraction=test_fraction, val_fraction=val_fraction)
    assert sorted(_flat(split)) == sorted(ids)
    assert split["train"]
    if val_fraction > 0:
        assert split["val"]


def test_groups_keep_slices_together():
    ids = [f"vol{v}:z{k:03d}" for v in range(20) for k in range(5)]
    groups = {i: i.split(":")[0] for i in ids}
    split = make_split(ids, seed=1, test_fraction=0.2, groups=groups)
    cases = {s: {groups[i] for i in split[s]} for s in split}
    assert not (cases["train"] & cases["test"]) and not (cases["train"] & cases["val"])
    assert len(cases["test"]) == 4 and len(split["test"]) == 20


def test_impossible_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="n_test=10 leaves no training cases"):
        make_split(IDS[:10], 0, n_test=10)
    with pytest.raises(ConfigError, match="either data.n_test or data.test_fraction"):
        make_split(IDS, 0, n_test=1, test_fraction=0.1)
    with pytest.raises(ConfigError, match="too few"):
        make_split(IDS[:2], 0, test_fraction=0.5)


def test_save_and_load(tmp_path):
    split = make_split(IDS, seed=7, n_test=120)
    path = tmp_path / "run" / "split.json"
    save_split(split, path, seed=7)
    saved = json.loads(path.read_text())
    assert saved["seed"] == 7 and saved["counts"] == {"train": 792, "val": 88, "test": 120}
    assert load_split(path, IDS) == split


def test_load_split_with_unknown_ids(tmp_path):
    path = tmp_path / "split.json"
    save_split({"train": ["a", "x1"], "val": ["x2"], "test": ["b"]}, path)
    with pytest.raises(DataError, match=rf"split file {re.escape(str(path))}: 2 ids are not in the dataset: x1, x2"):
        load_split(path, ["a", "b"])


def test_load_split_bad_files(tmp_path):
    with pytest.raises(DataError, match="split file not found"):
        load_split(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(DataError, match=f"cannot read split file {re.escape(str(tmp_path / 'bad.json'))}"):
        load_split(tmp_path / "bad.json")
    (tmp_path / "wrong.json").write_text('{"train": []}')
    with pytest.raises(DataError, match="needs lists 'train', 'val' and 'test'"):
        load_split(tmp_path / "wrong.json")
