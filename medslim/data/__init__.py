"""Datasets: readers for on-disk layouts, seeded splits and the training pipeline.

Names are loaded lazily: the pipeline needs torch and MONAI, which take seconds
to import, and ``import medslim.data`` must stay cheap (the CLI imports it).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "build_data": "medslim.data.pipeline",
    "TaskData": "medslim.data.pipeline",
    "TaskInfo": "medslim.data.pipeline",
    "RawData": "medslim.data.readers",
    "read_dataset": "medslim.data.readers",
    "make_split": "medslim.data.splits",
    "save_split": "medslim.data.splits",
    "load_split": "medslim.data.splits",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medslim.data' has no attribute {name!r}")
