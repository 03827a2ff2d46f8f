"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder holding kvasir-seg/, hippocampus/ and pneumoniamnist/.

    ``MEDSLIM_DATA`` wins; else ``../shared/data`` beside the repository. Tests
    that need it are skipped, with the reason, where it is absent.
    """
    env = os.environ.get("MEDSLIM_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real data not found at {path}: set MEDSLIM_DATA to the shared data folder")
    return path


@pytest.fixture
def one_thread():
    """One torch thread: the machine is shared, and tiny models run fastest on one anyway."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
