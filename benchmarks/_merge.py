"""Merge a benchmark's new results into its earlier JSON.

A benchmark run of a few seeds (or a few methods) must add to the recorded
results, not replace them: the rows of the runs it measured are replaced, the
others are kept. Keys identify a trained run, so a row is never counted twice.
"""

from __future__ import annotations

import json
from pathlib import Path


def earlier_report(path: Path) -> dict:
    """The JSON a previous run wrote to ``path``, or ``{}`` when there is none.

    Read at write time, not at start-up: another benchmark process may have
    written the file while this one trained.
    """
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:  # refuse to silently drop earlier results
        raise SystemExit(f"{path}: not valid JSON ({err}); move it away to start a fresh report") from err


def merged_rows(old: list[dict], new: list[dict], key: str = "run") -> list[dict]:
    """``old`` with the rows of the same ``key`` replaced by ``new`` ones, then the rest of ``new``."""
    fresh = {r[key]: r for r in new}
    out = [fresh.pop(r[key], r) for r in old]
    return out + list(fresh.values())
