"""Seeded train/validation/test splits, saved with each run.

A split is made once from a seed and then written into the run folder, so that
``--resume`` and ``evaluate`` use exactly the cases the model was (not) trained
on, even if the splitting code or the dataset listing changes later.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from medslim._io import write_json
from medslim.errors import ConfigError, DataError

SUBSETS = ("train", "val", "test")


class Split(dict):
    """A split read from a file: the plain ``{subset: ids}`` dict, plus ``source``.

    ``source`` names the file, so that a later check against the dataset (in
    ``build_data``) can say which file holds the unknown ids. Being a dict,
    it compares, iterates and serialises as before.
    """

    def __init__(self, subsets: Mapping[str, list[str]], source: str) -> None:
        super().__init__(subsets)
        self.source = source


def make_split(
    ids: Iterable[str],
    seed: int,
    n_test: int | None = None,
    test_fraction: float | None = None,
    val_fraction: float = 0.1,
    groups: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """Split ``ids`` into disjoint train/val/test lists, the same for the same seed.

    The test set is taken first (``n_test`` units, or ``test_fraction`` of them),
    then validation is ``val_fraction`` of what is left. With ``groups`` (id ->
    case) the units are cases, so all slices of one volume land in one subset
    and ``n_test`` counts cases. A non-zero fraction always gets at least one
    unit, so that a tiny ``limit`` still yields a usable validation set.
    Within each subset ids keep their input order.
    """
    ids = list(ids)
    if len(set(ids)) != len(ids):
        raise DataError("duplicate ids in the dataset listing; cannot split it")
    group_of = (lambda i: groups[i]) if groups is not None else (lambda i: i)
    units = sorted({group_of(i) for i in ids})
    n_test_units, n_val_units = _subset_sizes(len(units), n_test, test_fraction, val_fraction)
    order = np.random.default_rng(seed).permutation(len(units))
    test_units = {units[k] for k in order[:n_test_units]}
    val_units = {units[k] for k in order[n_test_units : n_test_units + n_val_units]}
    split: dict[str, list[str]] = {s: [] for s in SUBSETS}
    for i in ids:
        unit = group_of(i)
        split["test" if unit in test_units else "val" if unit in val_units else "train"].append(i)
    return split


def _subset_sizes(n: int, n_test, test_fraction, val_fraction) -> tuple[int, int]:
    """How many units go to test and validation; at least one must stay for training."""
    if n_test is not None and test_fraction is not None:
        raise ConfigError("give either data.n_test or data.test_fraction, not both")
    if test_fraction is not None and not 0 <= test_fraction < 1:
        raise ConfigError(f"data.test_fraction must be in [0, 1), got {test_fraction}")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    if n_test is None:
        n_test = _at_least_one(n, test_fraction or 0.0)
    if n_test < 0 or n_test >= n:
        raise ConfigError(f"data.n_test={n_test} leaves no training cases out of {n}")
    n_val = _at_least_one(n - n_test, val_fraction)
    if n_test + n_val >= n:
        raise ConfigError(
            f"only {n} cases: too few for a test set ({n_test}), a validation set "
            f"({n_val}) and a training set; use more cases or lower data.val_fraction"
        )
    return n_test, n_val


def _at_least_one(n: int, fraction: float) -> int:
    return 0 if fraction == 0 else max(1, round(fraction * n))


def check_split(split: Mapping[str, list[str]], ids: Iterable[str], source: str) -> dict[str, list[str]]:
    """Validate a split against the dataset's ids; ``source`` names it in errors."""
    if not isinstance(split, Mapping) or any(not isinstance(split.get(s), list) for s in SUBSETS):
        raise DataError(f"{source}: a split needs lists 'train', 'val' and 'test'")
    known = set(ids)
    missing = [i for s in SUBSETS for i in split[s] if i not in known]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(f"{source}: {len(missing)} ids are not in the dataset: {shown}")
    seen = [i for s in SUBSETS for i in split[s]]
    if len(set(seen)) != len(seen):
        raise DataError(f"{source}: the train, val and test lists overlap")
    return {s: list(split[s]) for s in SUBSETS}


def save_split(split: Mapping[str, list[str]], path: str | Path, seed: int | None = None) -> None:
    """Write a split as JSON (atomically), with its seed and subset sizes for people to read."""
    write_json(
        path,
        {
            "seed": seed,
            "counts": {s: len(split[s]) for s in SUBSETS},
            **{s: list(split[s]) for s in SUBSETS},
        },
    )


def load_split(path: str | Path, ids: Iterable[str] | None = None) -> Split:
    """Read a split written by :func:`save_split`; with ``ids``, check it against the dataset.

    The result remembers the file (``.source``) for later checks' messages.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DataError(f"split file not found: {path}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read split file {path}: {e}") from e
    if ids is None:
        ids = [i for s in SUBSETS for i in (data.get(s) or [])] if isinstance(data, dict) else []
    source = f"split file {path}"
    return Split(check_split(data, ids, source), source)
