"""The coverage list of issue 3 through Torch-Pruning 1.6.1 beside medslim.

For each network: prune to about half the FLOPs with the L1/L2 magnitude
criterion, then run forward, and record works / fails with what. medslim runs
``medslim.prune(..., method="l1", flops_ratio=0.5)`` and also checks backward
and ONNX export; Torch-Pruning runs its ``BasePruner`` with
``GroupMagnitudeImportance(p=1)``, ``pruning_ratio=0.5`` and the output
layers ignored, as its README shows. Torch-Pruning is an optional install:

    pip install --no-deps torch-pruning==1.6.1
    python benchmarks/vs_torch_pruning.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def cases() -> dict:
    from test_pruning_surgery import COVERAGE  # the same networks as the coverage test

    return COVERAGE


def last_convs(model: torch.nn.Module, out_channels: int) -> list:
    """Output layers to protect: every conv/linear producing the class channels."""
    layers = []
    for m in model.modules():
        if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
            width = getattr(m, "out_channels", getattr(m, "out_features", None))
            if width == out_channels:
                layers.append(m)
    return layers


def run_medslim(spec, x) -> str:
    from medslim.cost import count_flops, export_onnx
    from medslim.models import build_model
    from medslim.pruning import prune

    torch.manual_seed(0)
    net = build_model(spec).eval()
    small = prune(net, x, method="l1", flops_ratio=0.5)
    small(x)
    out = small.train()(torch.cat([x, x]))
    (sum(t.sum() for t in out) if isinstance(out, (list, tuple)) else out.sum()).backward()
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(small.eval(), x, Path(tmp) / "m.onnx")
    return f"works (FLOPs {count_flops(small, x) / count_flops(net, x):.2f})"


def run_torch_pruning(spec, x) -> str:
    import torch_pruning as tp

    from medslim.cost import count_flops
    from medslim.models import build_model

    torch.manual_seed(0)
    net = build_model(spec).eval()
    flops = count_flops(net, x)
    n_out = spec.get("out_channels", spec.get("num_classes", 2))
    pruner = tp.pruner.BasePruner(net, x, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=0.5, ignored_layers=last_convs(net, n_out))
    pruner.step()
    net(x)
    return f"works (FLOPs {count_flops(net, x) / flops:.2f})"


def attempt(fn, spec, x) -> str:
    try:
        return fn(spec, x)
    except Exception as err:  # the point is to record how each tool fails
        frame = traceback.extract_tb(err.__traceback__)[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        return f"fails: {type(err).__name__} at {where}: {str(err).splitlines()[0][:90]}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/vs_torch_pruning.json")
    args = p.parse_args(argv)
    try:
        from importlib.metadata import version

        import torch_pruning  # noqa: F401

        tp_version = version("torch-pruning")  # its __version__ string still says 1.6.0
    except ImportError:
        tp_version = None
        print("Torch-Pruning is not installed: pip install --no-deps torch-pruning==1.6.1")
    rows = []
    for name, (spec, side) in cases().items():
        x = torch.randn(1, 1, *[side] * spec["spatial_dims"])
        row = {"network": name, "medslim": attempt(run_medslim, spec, x),
               "torch_pruning": attempt(run_torch_pruning, spec, x) if tp_version else "not installed"}
        rows.append(row)
        print(f"{name:26s} | medslim: {row['medslim'][:60]:60s} | Torch-Pruning: {row['torch_pruning'][:110]}")
    from medslim._io import write_json

    write_json(args.out, {"date": time.strftime("%Y-%m-%d"), "torch_pruning_version": tp_version,
                          "torch_version": torch.__version__, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
