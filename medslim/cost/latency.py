"""CPU inference latency in PyTorch and ONNX Runtime.

Both timers follow the same protocol so their numbers can be compared: a few
untimed warm-up runs (first calls pay for allocator growth, oneDNN primitive
creation and ORT's lazy initialisation), then ``repeats`` timed runs with
``time.perf_counter`` on the batch exactly as given. We report the median
(robust to a noisy shared machine) next to p90, mean and min. The thread count
is pinned explicitly because it changes CPU latency more than most model edits.
"""

from __future__ import annotations

import numbers
import os
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from medslim.cost.counting import ExampleInput, as_inputs, evaluating
from medslim.errors import ConfigError


def _summarise(times_s: list[float], threads: int) -> dict[str, Any]:
    """Milliseconds statistics of the timed runs."""
    ms = np.asarray(times_s) * 1000.0
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "repeats": int(ms.size),
        "threads": int(threads),
    }


def _check_count(name: str, value: Any, least: int) -> None:
    """An integer option (threads, repeats, warmup) of at least ``least``, named when it is not.

    torch.set_num_threads(0) raises a bare RuntimeError, and ORT reads 0 as "all cores".
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")


def _time_calls(call: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    _check_count("repeats", repeats, 1)
    _check_count("warmup", warmup, 0)
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def latency_torch(
    model: nn.Module,
    example_input: ExampleInput,
    threads: int = 1,
    warmup: int = 3,
    repeats: int = 20,
) -> dict[str, Any]:
    """Eager PyTorch forward latency on CPU with ``threads`` intra-op threads.

    The global thread setting is restored afterwards so measuring does not
    change the caller's process.
    """
    inputs = as_inputs(example_input)
    _check_count("threads", threads, 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with evaluating(model):
            times = _time_calls(lambda: model(*inputs), warmup, repeats)
    finally:
        torch.set_num_threads(previous)
    return _summarise(times, threads)


def ort_session(onnx_path: str | os.PathLike, threads: int = 1, profile_prefix: str | None = None):
    """A CPU ONNX Runtime session configured for reproducible latency.

    One intra-op pool of ``threads`` threads, no inter-op parallelism,
    sequential execution and all graph optimisations: the setting a deployed
    single-model CPU service would use. ``profile_prefix`` turns on ONNX
    Runtime's per-operator profiler, writing its JSON under that prefix.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(os.fspath(onnx_path), options, providers=["CPUExecutionProvider"])


def ort_feeds(session, example_input: ExampleInput) -> dict[str, np.ndarray]:
    """Map the example tensors, in order, onto the session's input names."""
    inputs = as_inputs(example_input)
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"the ONNX model takes {len(names)} inputs, got {len(inputs)}")
    return {name: t.detach().cpu().numpy() for name, t in zip(names, inputs)}


def latency_onnx(
    onnx_path: str | os.PathLike,
    example_input: ExampleInput,
    threads: int = 1,
    warmup: int = 3,
    repeats: int = 20,
) -> dict[str, Any]:
    """ONNX Runtime (CPUExecutionProvider) latency of an exported model."""
    _check_count("threads", threads, 1)
    session = ort_session(onnx_path, threads)
    feeds = ort_feeds(session, example_input)
    times = _time_calls(lambda: session.run(None, feeds), warmup, repeats)
    return _summarise(times, threads)
