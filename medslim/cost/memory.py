"""Peak CPU memory of one inference.

PyTorch's CPU tensors come from its own allocator, which ``tracemalloc`` does
not see, and process RSS mixes in everything the process did before. So we
run one forward under ``torch.profiler.profile(profile_memory=True)``, which
records every CPU allocation and free made through PyTorch's allocator with a
time stamp, sort those events by time and take the maximum of their running
sum: the peak of tensor bytes that were live at once during the forward.

What this counts: activations, temporaries (e.g. im2col buffers), the output.
What it does not: parameters, buffers and the input (allocated before the
forward; reported separately), and memory allocated outside PyTorch's
allocator (oneDNN/MKL internal scratch, Python objects). Allocator caching is
not modelled, so the number is a lower bound on what the OS sees. A warm-up
forward runs first so one-time caches do not count as activations.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import torch
from torch import nn

from medslim.cost.counting import ExampleInput, as_inputs, evaluating

METHOD = "torch.profiler CPU allocator events: peak of running live bytes during one forward"


def _memory_events(prof) -> list[tuple[int, int]]:
    """(time ns, signed bytes) of every CPU allocation (+) and free (-).

    ``prof.events()`` folds allocations into the op that made them, losing
    their order, so we read the raw (semi-private) kineto events instead.
    """
    events = prof.profiler.kineto_results.events()
    return [(e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]" and _is_cpu(e)]


def _is_cpu(event) -> bool:
    """True for host allocations (the device type prints as ``DeviceType.CPU``)."""
    return str(event.device_type()).endswith("CPU")


def peak_live_bytes(events: list[tuple[int, int]]) -> int:
    """Maximum of the running sum of allocation sizes in time order (never below 0)."""
    live = peak = 0
    for _, nbytes in sorted(events, key=lambda e: e[0]):
        live += nbytes
        peak = max(peak, live)
    return peak


def model_bytes(model: nn.Module) -> int:
    """Bytes held by the model itself: parameters plus buffers (e.g. BN running stats)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


@contextlib.contextmanager
def _native_stderr_silenced():
    """Hide the profiler's native start/stop lines, which bypass Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory(model: nn.Module, example_input: ExampleInput, threads: int = 1) -> dict[str, Any]:
    """Peak memory in bytes of one inference on ``example_input`` (batch as given; pass batch 1).

    Returns {"activation_peak_bytes", "param_bytes" (parameters and buffers),
    "input_bytes", "total_bytes" (sum of the three), "method"}. ``threads``
    is pinned (and restored) because per-thread scratch buffers change the peak.
    """
    from torch.profiler import ProfilerActivity, profile

    inputs = as_inputs(example_input)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with evaluating(model):
            model(*inputs)  # warm-up: one-time caches are not activations
            with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU],
                                                    profile_memory=True) as prof:
                model(*inputs)
    finally:
        torch.set_num_threads(previous)
    activation = peak_live_bytes(_memory_events(prof))
    params = model_bytes(model)
    input_bytes = sum(t.numel() * t.element_size() for t in inputs)
    return {
        "activation_peak_bytes": activation,
        "param_bytes": params,
        "input_bytes": input_bytes,
        "total_bytes": activation + params + input_bytes,
        "method": METHOD,
    }
