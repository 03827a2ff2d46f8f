"""One call that measures everything ``medslim cost`` and the benchmarks show.

The result is a JSON-ready dict. Per-thread latencies are keyed by the thread
count as a string so the dict looks the same after a JSON round trip. The
software versions and CPU name are included because latency numbers mean
nothing without them.
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from medslim.cost.counting import ExampleInput, as_inputs, count_flops, count_params
from medslim.cost.latency import latency_onnx, latency_torch
from medslim.cost.memory import peak_memory


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment() -> dict[str, Any]:
    """Versions and hardware that the latency numbers depend on."""
    import onnxruntime

    return {
        "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
    }


def _onnx_part(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    threads: Sequence[int],
    workdir: Optional[str | os.PathLike],
    repeats: int,
) -> dict[str, Any]:
    """Export to a temporary file, then time it in ONNX Runtime per thread count."""
    from medslim.cost.onnx_export import export_onnx

    with tempfile.TemporaryDirectory(prefix="medslim-cost-", dir=workdir) as tmp:
        info = export_onnx(model, inputs, Path(tmp) / "model.onnx")
        latency = {str(t): latency_onnx(info["path"], inputs, t, repeats=repeats) for t in threads}
    return {
        "onnx_latency": latency,
        "onnx_max_abs_diff": info["max_abs_diff"],
        "onnx_exporter": info["exporter"],
        "onnx_opset": info["opset"],
    }


def measure(
    model: nn.Module,
    example_input: ExampleInput,
    threads: Sequence[int] = (1, 2),
    onnx: bool = True,
    workdir: Optional[str | os.PathLike] = None,
    repeats: int = 20,
) -> dict[str, Any]:
    """Size, compute, latency (PyTorch and ONNX Runtime) and memory of ``model``.

    Latency is for the batch as given; pass a batch-1 example for the
    single-image numbers. With ``onnx=False`` the ONNX keys are present and
    None, so tables built from several results line up.
    """
    inputs = as_inputs(example_input)
    flops = count_flops(model, inputs)
    result: dict[str, Any] = {
        "params": count_params(model),
        "flops": flops,
        "macs": flops // 2,
        "input_shape": [list(t.shape) for t in inputs] if len(inputs) > 1 else list(inputs[0].shape),
        "threads": list(threads),
        "repeats": repeats,
        "torch_latency": {str(t): latency_torch(model, inputs, t, repeats=repeats) for t in threads},
        "onnx_latency": None,
        "onnx_max_abs_diff": None,
        "onnx_exporter": None,
        "onnx_opset": None,
    }
    if onnx:
        result.update(_onnx_part(model, inputs, threads, workdir, repeats))
    memory = peak_memory(model, inputs)
    result.update({k: memory[k] for k in ("activation_peak_bytes", "param_bytes", "input_bytes", "total_bytes")})
    result["memory_method"] = memory["method"]
    result.update(environment())
    return result
