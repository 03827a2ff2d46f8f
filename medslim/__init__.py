"""medslim: make medical-imaging CNNs small and fast, and show the trade-off.

The top-level names are loaded lazily so that ``import medslim`` (and the CLI's
``--help``) stays fast: MONAI alone takes seconds to import.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load": "medslim.artifacts",
    "save": "medslim.artifacts",
    "build_model": "medslim.models",
    "count_params": "medslim.cost",
    "count_flops": "medslim.cost",
    "MedslimError": "medslim.errors",
    "prune": "medslim.pruning",
    "attach_head": "medslim.models.jnet",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medslim' has no attribute {name!r}")
