"""Reference U-Net baselines: Kvasir-SEG 2D at 128x128 and Hippocampus 3D.

Trains the built-in configs ``kvasir-unet`` (seeded 880/120 split, one run per
training seed) and ``hippocampus-unet`` (seeded 80/20 case split), then
measures each model: Dice and HD95 per class on the test split, parameters,
FLOPs, PyTorch and ONNX Runtime latency at batch 1, and training time.
Finished runs are reused, so an interrupted benchmark continues where it
stopped. Prints a table and writes JSON.

    python benchmarks/baseline.py --dataset kvasir --seeds 0 1 2
    python benchmarks/baseline.py --dataset hippocampus --seeds 0
    python benchmarks/baseline.py --measure-only      # cost of finished runs, machine quiet

GPU users: ``--full-size`` trains Kvasir-SEG at 256x256 (CPU default: 128x128).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

CONFIGS = {"kvasir": "kvasir-unet", "hippocampus": "hippocampus-unet"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=[*CONFIGS, "all"], default="all")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, help="override the config's epoch count")
    p.add_argument("--threads", type=int, default=None, help="torch threads for training")
    p.add_argument("--data", help="folder holding kvasir-seg/ and hippocampus/")
    p.add_argument("--runs", default="benchmarks/runs", help="where the trained runs go")
    p.add_argument("--out", default="benchmarks/results/baseline.json")
    p.add_argument("--full-size", action="store_true", help="Kvasir-SEG at 256x256 (for GPUs)")
    p.add_argument("--skip-cost", action="store_true", help="train only; measure later")
    p.add_argument("--measure-only", action="store_true", help="measure finished runs, train nothing")
    p.add_argument("--latency-threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=30)
    return p.parse_args(argv)


def run_name(dataset: str, seed: int, args) -> str:
    size = "-256" if args.full_size and dataset == "kvasir" else ""
    return f"baseline-{dataset}{size}-s{seed}"


def train_one(dataset: str, seed: int, args) -> Path:
    from medslim.config import load_config
    from medslim.jobs import train_run
    from medslim.runs import resumable

    run = Path(args.runs) / run_name(dataset, seed, args)
    if (run / "results.json").exists():
        return run
    overrides = [f"seed={seed}", f"name={run.name}", f"output={args.runs}"]
    if args.epochs:
        overrides.append(f"train.epochs={args.epochs}")
    if args.threads:
        overrides.append(f"train.threads={args.threads}")
    if args.full_size and dataset == "kvasir":
        overrides.append("data.size=[256,256]")
    cfg = load_config(CONFIGS[dataset], overrides)
    resume = resumable(args.runs, run.name)
    return train_run(cfg, data_path=args.data, resume=resume, progress=True)


def measure_one(run: Path, args) -> None:
    from medslim.jobs import cost_run

    cost_run(run, threads=args.latency_threads, repeats=args.repeats)


def row(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    cost = json.loads((run / "cost.json").read_text()) if (run / "cost.json").exists() else {}
    test = results["test"]
    out = {
        "run": run.name, "dataset": results["dataset"], "seed": config["seed"],
        "split_seed": config["data"].get("seed", 0), "epochs": results["epochs"],
        "best_epoch": results["best_epoch"], "train_seconds": round(results["train_seconds"], 1),
        "dice": test["dice"], "dice_per_class": test["dice_per_class"],
        "hd95": test.get("hd95"), "hd95_per_class": test.get("hd95_per_class"), "n_test": test["n_cases"],
    }
    if cost:
        out.update({
            "params": cost["params"], "flops": cost["flops"], "input_shape": cost["input_shape"],
            "torch_ms": {t: v["median_ms"] for t, v in cost["torch_latency"].items()},
            "onnx_ms": {t: v["median_ms"] for t, v in (cost["onnx_latency"] or {}).items()},
            "cpu": cost["cpu"], "torch_version": cost["torch_version"],
            "onnxruntime_version": cost["onnxruntime_version"],
        })
    return out


def summarise(rows: list[dict]) -> dict:
    by = {}
    for r in rows:
        by.setdefault(r["dataset"], []).append(r)
    summary = {}
    for ds, rs in by.items():
        dice = [r["dice"] for r in rs]
        hd = [r["hd95"] for r in rs if r["hd95"] is not None]
        summary[ds] = {"runs": len(rs), "dice_mean": statistics.mean(dice),
                       "dice_sd": statistics.stdev(dice) if len(dice) > 1 else 0.0,
                       "hd95_mean": statistics.mean(hd) if hd else None,
                       "train_seconds_median": statistics.median(r["train_seconds"] for r in rs)}
    return summary


def print_table(rows: list[dict]) -> None:
    head = f"{'run':28s} {'Dice':>6s} {'HD95':>7s} {'params':>10s} {'GFLOP':>7s} " \
           f"{'torch ms 1t/2t':>15s} {'onnx ms 1t/2t':>15s} {'train s':>8s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        t = "/".join(f"{v:.1f}" for v in r.get("torch_ms", {}).values()) or "-"
        o = "/".join(f"{v:.1f}" for v in r.get("onnx_ms", {}).values()) or "-"
        flops = f"{r['flops'] / 1e9:.2f}" if "flops" in r else "-"
        params = f"{r['params']:,}" if "params" in r else "-"
        hd = f"{r['hd95']:.2f}" if r["hd95"] is not None else "-"
        print(f"{r['run']:28s} {r['dice']:6.4f} {hd:>7s} {params:>10s} {flops:>7s} {t:>15s} {o:>15s} "
              f"{r['train_seconds']:8.0f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    datasets = list(CONFIGS) if args.dataset == "all" else [args.dataset]
    runs = []
    for ds in datasets:
        for seed in args.seeds:
            run = Path(args.runs) / run_name(ds, seed, args)
            if not args.measure_only:
                run = train_one(ds, seed, args)
            if not (run / "results.json").exists():
                continue
            if not args.skip_cost and (args.measure_only or not (run / "cost.json").exists()):
                measure_one(run, args)
            runs.append(run)
    rows = [row(r) for r in runs]
    print_table(rows)
    from medslim._io import write_json

    write_json(args.out, {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
                          "summary": summarise(rows), "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
