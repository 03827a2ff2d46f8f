"""Cost of a network: parameters, FLOPs, CPU latency, ONNX export, memory.

Importing this package loads torch only; ONNX, ONNX Runtime and MONAI are
imported inside the functions that need them, so the CLI stays quick.
FLOPs follow PyTorch's flop counter (1 multiply-add = 2 FLOPs); see
:mod:`medslim.cost.counting`.
"""

from __future__ import annotations

from medslim.cost.counting import count_flops, count_macs, count_params
from medslim.cost.latency import latency_onnx, latency_torch
from medslim.cost.memory import peak_memory
from medslim.cost.onnx_export import ExportError, export_onnx
from medslim.cost.measurement import measure

__all__ = [
    "ExportError",
    "count_flops",
    "count_macs",
    "count_params",
    "export_onnx",
    "latency_onnx",
    "latency_torch",
    "measure",
    "peak_memory",
]
