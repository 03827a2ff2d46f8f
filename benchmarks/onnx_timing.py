"""ONNX Runtime latency of several saved models, timed in turns (shared by the benchmark scripts).

The machine is shared and noisy: timing each model in a block would hand one
model a quiet minute and another a busy one. Here every model runs once per
round, round after round, so load on the machine hits all alike, and the
median of each model's times is what the benchmarks report.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def time_in_turns(models: dict[str, Path], repeats: int, warmup: int = 5) -> dict[str, float]:
    """Median seconds per batch-1 call, 1 thread, of each run folder's model in ONNX Runtime."""
    import numpy as np
    import torch

    from medslim.artifacts import load
    from medslim.cost import export_onnx
    from medslim.cost.latency import ort_feeds, ort_session

    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for key, run in models.items():
            model = load(run)
            example = torch.randn(*model.medslim_manifest["extra"]["input_shape"])
            file = Path(tmp) / f"{key}.onnx"
            export_onnx(model, example, file)  # checked against PyTorch
            session = ort_session(file, threads=1)
            sessions[key] = (session, ort_feeds(session, example))
        times = sessions_in_turns(sessions, repeats, warmup)
    return {k: float(np.median(v)) for k, v in times.items()}


def sessions_in_turns(sessions: dict, repeats: int, warmup: int = 5, settle: int = 0) -> dict[str, list[float]]:
    """Seconds of every timed call of each ``(session, feeds)``, one timed call per session per round.

    ``settle`` untimed calls come before each timed one. With more than one
    thread they are needed: the worker threads of the session that ran last
    keep spinning for a while, and the next session's first calls run up to
    twice as slow beside them (measured on this 2-core machine; two untimed
    calls of a 10 ms model were not always enough, five were).
    """
    for session, feeds in sessions.values():
        for _ in range(warmup):
            session.run(None, feeds)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(repeats):
        for key, (session, feeds) in sessions.items():
            for _ in range(settle):
                session.run(None, feeds)
            start = time.perf_counter()
            session.run(None, feeds)
            times[key].append(time.perf_counter() - start)
    return times
