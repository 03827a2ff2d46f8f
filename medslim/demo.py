"""``medslim demo``: the whole path on real data in a few minutes.

Find Kvasir-SEG, train the small reference U-Net at 128x128, prune it twice
(half and a quarter of its FLOPs kept, one fine-tuning epoch each), evaluate
every model on the held-out test images, measure their cost, and end with the
comparison report (built-in compare config ``kvasir-demo``).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path


def run_demo(data: str | None = None, output: str = "runs", epochs: int | None = None) -> Path:
    from medslim.compare import read_table, run_compare
    from medslim.report import report_comparison

    from medslim.errors import ConfigError
    from medslim._io import check_output_folder

    name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    overrides = [f"output={output}", f"name={name}"]
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"--epochs must be a positive integer, got {epochs!r}")
        overrides.append(f"base.overrides=[train.epochs={epochs}]")
    folder = check_output_folder(output) / name
    start = time.perf_counter()
    print("medslim demo: a U-Net on Kvasir-SEG at 128x128, two pruned versions of it, and the report")
    try:
        run_compare("kvasir-demo", overrides, data)
        report_comparison(folder)
    except BaseException:
        # the folder's name holds the time it started, so it can never be resumed
        shutil.rmtree(folder, ignore_errors=True)
        raise
    table = read_table(folder)
    base = folder / "runs" / "base"
    results = json.loads((base / "results.json").read_text())
    cost = json.loads((folder / "costs" / "base.json").read_text())["cost"]
    print(summary(results, cost, table, folder, time.perf_counter() - start))
    return folder


def summary(results: dict, cost: dict, table: dict, folder: Path, seconds: float) -> str:
    test = results["test"]
    shape = "x".join(map(str, cost["input_shape"]))
    ort = f", ONNX Runtime {cost['ort_ms']:.1f} ms" if cost.get("ort_ms") is not None else ""
    facts = [("base U-Net, test Dice (polyp)", f"{test['dice']:.4f} over {test['n_cases']} test images"),
             ("test HD95 (pixels)", f"{test.get('hd95', float('nan')):.2f}"),
             ("parameters", f"{cost['params']:,}"),
             (f"FLOPs ({shape})", f"{cost['flops'] / 1e9:.3f} GFLOP"),
             (f"latency, batch 1, {cost['threads']} thread", f"PyTorch {cost['torch_ms']:.1f} ms{ort}")]
    lines = ["", "medslim demo: done in {:.0f} s".format(seconds)]
    lines += [f"  {name:<32} {value}" for name, value in facts]
    lines += [
        "",
        "  model            Dice    GFLOPs  ORT ms  front",
    ]
    for r in table["rows"]:
        ort = "n/a" if r.get("ort_ms") is None else f"{r['ort_ms']:.1f}"
        lines.append(f"  {r['label']:15s}  {r['dice']:.4f}  {r['flops'] / 1e9:6.3f}  {ort:>6}  "
                     f"{'yes' if r.get('front_flops') else ''}")
    lines += ["", f"  report     {folder / 'report' / 'report.html'}",
              f"  table      {folder / 'table.csv'}", f"  models     {folder / 'runs'}"]
    return "\n".join(lines)
