"""``medslim demo``: the whole path on real data in a few minutes.

Find Kvasir-SEG, train the small reference U-Net at 128x128, evaluate it on
the held-out test images, and measure its cost, then say where everything is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def run_demo(data: str | None = None, output: str = "runs", epochs: int | None = None) -> Path:
    from medslim.config import load_config
    from medslim.jobs import cost_run, train_run

    overrides = [f"output={output}", f"name=demo-{time.strftime('%Y%m%d-%H%M%S')}"]
    if epochs:
        overrides.append(f"train.epochs={epochs}")
    cfg = load_config("kvasir-demo", overrides)
    start = time.perf_counter()
    print(f"medslim demo: training a U-Net on Kvasir-SEG at 128x128 for {cfg['train']['epochs']} epochs")
    run = train_run(cfg, data_path=data)
    print("medslim demo: measuring parameters, FLOPs and latency (PyTorch and ONNX Runtime)")
    cost = cost_run(run, threads=cfg["cost"]["threads"], repeats=cfg["cost"]["repeats"])
    results = json.loads((run / "results.json").read_text())
    print(summary(results, cost, run, time.perf_counter() - start))
    return run


def summary(results: dict, cost: dict, run: Path, seconds: float) -> str:
    test = results["test"]
    lines = [
        "",
        "medslim demo: done in {:.0f} s".format(seconds),
        f"  test Dice (polyp)      {test['dice']:.4f}   over {test['n_cases']} test images",
        f"  test HD95 (pixels)     {test.get('hd95', float('nan')):.2f}",
        f"  parameters             {cost['params']:,}",
        f"  FLOPs (1x3x128x128)    {cost['flops'] / 1e9:.3f} GFLOP  ({cost['macs'] / 1e9:.3f} GMAC)",
    ]
    for key, label in (("torch_latency", "PyTorch"), ("onnx_latency", "ONNX Runtime")):
        for threads, lat in (cost.get(key) or {}).items():
            lines.append(f"  latency {label:13s}  {lat['median_ms']:.1f} ms median, "
                         f"{lat['p90_ms']:.1f} ms p90 ({threads} thread{'s' if str(threads) != '1' else ''})")
    lines.append(f"  run folder             {run}")
    return "\n".join(lines)
