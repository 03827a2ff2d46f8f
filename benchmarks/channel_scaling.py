"""Channel scaling: a small classifier selected from a frozen pretrained VGG16-BN (issue 7).

No ImageNet weights can be downloaded here, so the benchmark builds its own
transfer setting from the shared data:

1. **source task**: polyp vs no-polyp crops cut from Kvasir-SEG images by
   their masks (RGB, ``--size`` pixels; crops of one image stay in one
   split). A VGG16-BN (``--width``, linear head on global pooling) is
   pretrained on it once (seed 0).
2. **target task**: PneumoniaMNIST (official split) upsampled to ``--size``
   pixels. The source backbone loads with its first convolution summed over
   RGB (a grey image copied to three channels gives the same features), and
   the head starts fresh. Per seed:

   - ``full``: every weight fine-tuned;
   - ``head``: the backbone frozen (batch-norm statistics too, or with
     ``--head-norm-stats target`` re-estimated once on the target training
     images), the head trained;
   - ``channel_scaling``: from the ``head`` run, rounds of scale training and
     removal until ``--params-ratio`` of the parameters remain;
   - ``slimming`` and ``l1``: the ``full`` model pruned by batch-norm scale
     (the slimming criterion, without its sparsity pre-training) or by L1
     filter norm to the parameter count channel scaling reached, then
     fine-tuned for ``--finetune-epochs``.

Rows: test accuracy and AUC, parameters, FLOPs, ONNX Runtime latency (1
thread, batch 1, models timed in turns), and for channel scaling its rounds
and wall time. Finished runs are reused. The full-size setting (width 1,
224 pixels) is a flag away, for a GPU:

    python benchmarks/channel_scaling.py --seeds 0 1 2
    python benchmarks/channel_scaling.py --width 1 --size 224   # GPU
    python benchmarks/channel_scaling.py --report-only
    python benchmarks/channel_scaling.py --seeds 3 4 --report-only --merge earlier.json   # pool seeds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _merge import earlier_report  # noqa: E402

ARMS = ("full", "head", "channel_scaling", "slimming", "l1")
# settings two reports must share for their rows to be pooled; the round budget may differ, because it
# only matters on a seed that used it up, and each pooled channel-scaling row records its rounds
POOLED_SETTINGS = ("source_epochs", "lr", "params_ratio", "lam", "threshold", "round_epochs", "round_lr",
                   "finetune_epochs", "head_norm_stats")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--width", type=float, default=0.25, help="VGG16-BN width multiplier (1 = the real VGG16)")
    p.add_argument("--size", type=int, default=64, help="image size of both tasks")
    p.add_argument("--source-epochs", type=int, default=15)
    p.add_argument("--epochs", type=int, default=10, help="target training of the full and head arms")
    p.add_argument("--lr", type=float, default=1e-3, help="target training rate (full, head)")
    p.add_argument("--params-ratio", type=float, default=0.05, help="channel scaling's target")
    p.add_argument("--head-norm-stats", choices=["source", "target"], default="source",
                   help="the frozen backbone's batch-norm statistics in the head and channel-scaling "
                        "arms: the source task's, or re-estimated on the target training images (AdaBN)")
    p.add_argument("--lam", type=float, default=1e-3)
    p.add_argument("--threshold", type=float, default=0.05)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--round-epochs", type=int, default=3, help="epochs per channel-scaling round")
    p.add_argument("--round-lr", type=float, default=1e-2)
    p.add_argument("--finetune-epochs", type=int, default=5, help="after slimming and L1 pruning")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training")
    p.add_argument("--repeats", type=int, default=100, help="ONNX Runtime timing rounds")
    p.add_argument("--data", default=None, help="folder holding kvasir-seg/ and pneumoniamnist/")
    p.add_argument("--runs", default="benchmarks/runs/channel_scaling")
    p.add_argument("--out", default="benchmarks/results/channel-scaling.json")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--merge", nargs="+", default=[], metavar="REPORT",
                   help="earlier reports (JSON) whose rows join this one for the (arm, seed) pairs not "
                        "measured here, the first report listed first; refused if made with other settings")
    args = p.parse_args(argv)
    if not 0 < args.params_ratio <= 1 or args.size < 32 or args.width <= 0:
        p.error("--params-ratio must be in (0, 1], --size at least 32, --width positive")
    return args


def data_root(args) -> Path:
    root = Path(args.data) if args.data else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (root / "kvasir-seg").is_dir() or not (root / "pneumoniamnist").is_dir():
        sys.exit(f"benchmarks/channel_scaling.py: kvasir-seg/ and pneumoniamnist/ not found in {root}; "
                 "pass --data")
    return root


# ---------------------------------------------------------------- source task

def make_crops(kvasir: Path, out: Path, size: int, seed: int = 0, crop: int = 96) -> dict:
    """Polyp / no-polyp crops of ``crop`` pixels from the 256-pixel images, resized to ``size``.

    A crop is a polyp crop if at least 30% of it is polyp, a background crop
    if none of it is; up to one of each per image, at random positions
    (seeded). Images are split 70/10/20 before cropping. Written as a
    MedMNIST-layout ``.npz`` so medslim's own reader and pipeline load it.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = sorted(p.stem for p in (kvasir / "images").glob("*.jpg"))
    order = rng.permutation(len(names))
    cut = {"train": order[:int(0.7 * len(names))], "val": order[int(0.7 * len(names)):int(0.8 * len(names))],
           "test": order[int(0.8 * len(names)):]}
    arrays = {}
    for split, idx in cut.items():
        images, labels = [], []
        for i in sorted(idx):
            image = np.asarray(Image.open(kvasir / "images" / f"{names[i]}.jpg").convert("RGB"))
            mask = np.asarray(Image.open(kvasir / "masks" / f"{names[i]}.jpg").convert("L")) > 127
            for label, ok in ((1, lambda f: f >= 0.3), (0, lambda f: f == 0)):
                for _ in range(40):
                    y, x = rng.integers(0, image.shape[0] - crop + 1), rng.integers(0, image.shape[1] - crop + 1)
                    if ok(mask[y:y + crop, x:x + crop].mean()):
                        patch = Image.fromarray(image[y:y + crop, x:x + crop]).resize((size, size), Image.BILINEAR)
                        images.append(np.asarray(patch))
                        labels.append(label)
                        break
        arrays[f"{split}_images"] = np.stack(images).astype(np.uint8)
        arrays[f"{split}_labels"] = np.array(labels, dtype=np.int64)[:, None]
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return {s: {"crops": int(len(arrays[f"{s}_labels"])), "polyp": int(arrays[f"{s}_labels"].sum())}
            for s in cut}


def model_spec(args, in_channels: int) -> dict:
    return {"name": "vgg16_bn", "in_channels": in_channels, "num_classes": 2, "width": args.width,
            "hidden": 0}


def base_config(args, name: str, seed: int, dataset, epochs: int, lr: float) -> dict:
    from medslim.config import load_config

    cfg = load_config(None, [f"seed={seed}", f"name={name}", f"output={args.runs}", f"train.epochs={epochs}",
                             f"train.threads={args.threads}", "train.batch_size=64", f"train.lr={lr}"])
    cfg["data"] = dataset
    cfg["model"] = model_spec(args, 3 if dataset.get("format") == "medmnist" else 1)
    return cfg


def pretrain_source(args, root: Path) -> Path:
    from medslim.jobs import train_run

    run = Path(args.runs) / "source"
    if (run / "results.json").exists() or args.report_only:
        return run
    npz = Path(args.runs) / "source-data" / "kvasir-crops" / "kvasir-crops.npz"
    if not npz.exists():
        counts = make_crops(root / "kvasir-seg", npz, args.size)
        print(f"source crops: {counts}", flush=True)
    dataset = {"dataset": "kvasir-crops", "format": "medmnist", "size": [args.size, args.size]}
    cfg = base_config(args, "source", 0, dataset, args.source_epochs, 1e-3)
    print("pretraining the source network", flush=True)
    return train_run(cfg, data_path=str(npz.parent), progress=False)


# ---------------------------------------------------------------- target task

def target_run(args, arm: str, seed: int, source: Path, root: Path) -> Path:
    from medslim.jobs import train_run

    name = f"{arm}-s{seed}"
    run = Path(args.runs) / name
    if (run / "results.json").exists() or args.report_only:
        return run
    dataset = {"dataset": "pneumoniamnist", "size": [args.size, args.size]}
    cfg = base_config(args, name, seed, dataset, args.epochs, args.lr)
    cfg["train"]["pretrained"] = str(source.absolute())
    cfg["train"]["freeze_backbone"] = arm == "head"
    if arm == "head":
        cfg["train"]["frozen_norm_stats"] = args.head_norm_stats
    print(f"training {name}", flush=True)
    return train_run(cfg, data_path=str(root / "pneumoniamnist"), progress=False)


def pruned_run(args, arm: str, seed: int, root: Path, params_ratio: float | None = None) -> Path:
    from medslim.jobs import prune_run

    name = f"{arm}-s{seed}"
    run = Path(args.runs) / name
    if (run / "results.json").exists() or args.report_only:
        return run
    print(f"pruning {name}", flush=True)
    data = str(root / "pneumoniamnist")
    if arm == "channel_scaling":
        options = {"lam": args.lam, "threshold": args.threshold, "rounds": args.rounds,
                   "epochs": args.round_epochs, "lr": args.round_lr}
        return prune_run(Path(args.runs) / f"head-s{seed}", arm, params_ratio=args.params_ratio, name=name,
                         data_path=data, progress=False, measure=False, options=options)
    method = "slimming" if arm == "slimming" else "l1"
    return prune_run(Path(args.runs) / f"full-s{seed}", method, params_ratio=params_ratio, name=name,
                     finetune_epochs=args.finetune_epochs, data_path=data, progress=False, measure=False)


def run_all(args, root: Path) -> None:
    source = pretrain_source(args, root)
    for seed in args.seeds:
        for arm in ("full", "head"):
            if arm in args.arms or {"channel_scaling", "slimming", "l1"} & set(args.arms):
                target_run(args, arm, seed, source, root)
        if "channel_scaling" in args.arms or {"slimming", "l1"} & set(args.arms):
            cs = pruned_run(args, "channel_scaling", seed, root)
        for arm in ("slimming", "l1"):
            if arm in args.arms:
                ratio = json.loads((cs / "results.json").read_text())["params_ratio"]
                pruned_run(args, arm, seed, root, params_ratio=ratio)


# ---------------------------------------------------------------- measuring

def row_of(args, arm: str, seed: int) -> dict | None:
    from medslim.artifacts import load
    from medslim.cost import count_flops, count_params

    import torch

    run = Path(args.runs) / f"{arm}-s{seed}"
    if not (run / "results.json").exists():
        return None
    res = json.loads((run / "results.json").read_text())
    model = load(run)
    example = torch.zeros(*model.medslim_manifest["extra"]["input_shape"])
    row = {"arm": arm, "seed": seed, "run": str(run), "accuracy": res["test"]["accuracy"],
           "auc": res["test"]["auc"], "params": count_params(model), "flops": count_flops(model, example)}
    if arm in ("full", "head"):
        row["train_seconds"] = res["train_seconds"]
        row["trainable_params"] = res.get("trainable_params", row["params"])
    else:
        pruning = json.loads((run / "pruning.json").read_text())
        row["prune_seconds"] = pruning["seconds"]
        if arm == "channel_scaling":
            row["rounds"] = pruning["steps"]
            row["round_log"] = [{k: r[k] for k in ("round", "selecting", "removed", "params", "seconds")}
                                for r in pruning["rounds"]]
    return row


def pooled_rows(args, measured: list[dict]) -> list[dict]:
    """Rows of the ``--merge`` reports for the (arm, seed) pairs ``measured`` lacks, marked by their file.

    Their runs may be gone (the runs folder is not kept), so their accuracy, AUC, parameters and FLOPs
    are taken as recorded; the ONNX Runtime latency is measured again per arm.
    """
    have = {(r["arm"], r["seed"]) for r in measured}
    out = []
    for path in args.merge:
        report = earlier_report(Path(path))
        if not report.get("rows"):
            raise SystemExit(f"--merge {path}: no such report, or it has no rows")
        theirs = dict(report.get("settings", {}), **{k: report.get(k) for k in ("width", "size", "epochs")})
        differs = sorted(k for k in POOLED_SETTINGS + ("width", "size", "epochs")
                         if theirs.get(k) != getattr(args, k))
        if differs:
            raise SystemExit(f"--merge {path}: made with other settings ({', '.join(differs)}); not pooled")
        for r in report["rows"]:
            if (r["arm"], r["seed"]) not in have:
                have.add((r["arm"], r["seed"]))
                out.append(dict(r, pooled_from=str(path), round_budget=theirs.get("rounds")))
    return out


def collect(args) -> list[dict]:
    rows = [r for seed in args.seeds for arm in ARMS if (r := row_of(args, arm, seed)) is not None]
    first = {}
    for r in rows:
        first.setdefault(r["arm"], Path(r["run"]))  # one model per arm: pruned widths barely differ by seed
    rows += pooled_rows(args, rows)
    from onnx_timing import time_in_turns

    to_time = {a: run for a, run in first.items() if a != "head"}
    timed = time_in_turns(to_time, args.repeats, warmup=10) if to_time else {}
    speed = {a: {"ort_ms": 1e3 * t} for a, t in timed.items()}
    speed["head"] = speed.get("full", {})  # the same network
    for r in rows:
        r.update(speed.get(r["arm"], {}))
    return rows


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for arm in ARMS:
        rs = [r for r in rows if r["arm"] == arm]
        if not rs:
            continue
        acc, auc = [r["accuracy"] for r in rs], [r["auc"] for r in rs]
        entry = {"arm": arm, "seeds": [r["seed"] for r in rs],
                 "accuracy_mean": statistics.mean(acc), "accuracy_sd": statistics.stdev(acc) if len(rs) > 1 else 0.0,
                 "auc_mean": statistics.mean(auc), "auc_sd": statistics.stdev(auc) if len(rs) > 1 else 0.0,
                 "params_mean": statistics.mean(r["params"] for r in rs),
                 "flops_mean": statistics.mean(r["flops"] for r in rs), "ort_ms": rs[0].get("ort_ms")}
        if arm == "channel_scaling":
            entry["rounds"] = [r["rounds"] for r in rs]
            entry["wall_seconds"] = [r["prune_seconds"] for r in rs]
        out.append(entry)
    return out


def targets(rows: list[dict]) -> dict:
    by = {(r["arm"], r["seed"]): r for r in rows}
    seeds = sorted({s for (a, s) in by if a == "channel_scaling" and ("full", s) in by})
    if not seeds:
        return {}
    removed = [1 - by[("channel_scaling", s)]["params"] / by[("full", s)]["params"] for s in seeds]
    gap = [100 * (by[("channel_scaling", s)]["accuracy"] - by[("full", s)]["accuracy"]) for s in seeds]
    return {"seeds": seeds, "params_removed": removed, "accuracy_minus_full_points": gap,
            "removed_95": all(r >= 0.95 for r in removed),
            "accuracy_at_least_full_mean": statistics.mean(gap) >= 0,
            "accuracy_at_least_full_every_seed": all(g >= 0 for g in gap)}


def print_report(report: dict) -> None:
    print(f"\nPneumoniaMNIST at {report['size']}x{report['size']}, VGG16-BN width {report['width']} pretrained "
          f"on Kvasir-SEG crops; ONNX Runtime 1 thread batch 1")
    print(f"{'arm':<17}{'seeds':>6}{'accuracy':>17}{'AUC':>16}{'params':>10}{'MFLOP':>9}{'ORT ms':>8}")
    for g in report["summary"]:
        ms = f"{g['ort_ms']:.2f}" if g.get("ort_ms") else "-"
        print(f"{g['arm']:<17}{len(g['seeds']):>6}{g['accuracy_mean']:>10.3f} ±{g['accuracy_sd']:.3f}"
              f"{g['auc_mean']:>9.3f} ±{g['auc_sd']:.3f}{g['params_mean']:>10.0f}{g['flops_mean'] / 1e6:>9.1f}{ms:>8}")
        if g["arm"] == "channel_scaling":
            print(f"{'':<17}rounds {g['rounds']}, wall time "
                  + ", ".join(f"{s / 60:.1f}" for s in g["wall_seconds"]) + " min")
    t = report["targets"]
    if t:
        print("\ntargets: >= 95% of parameters removed with accuracy >= full fine-tuning")
        print("  removed " + ", ".join(f"{100 * r:.1f}%" for r in t["params_removed"])
              + "; accuracy - full " + ", ".join(f"{g:+.1f}" for g in t["accuracy_minus_full_points"]) + " pts")


def main(argv=None) -> int:
    args = parse_args(argv)
    root = data_root(args)
    pooled_rows(args, [])  # a --merge report that cannot be pooled is refused before any training
    if not args.report_only:
        run_all(args, root)
    from medslim._io import write_json
    from medslim.cost.measurement import environment

    rows = collect(args)
    if not rows:
        print("no finished runs to report", file=sys.stderr)
        return 1
    source = Path(args.runs) / "source" / "results.json"
    report = {"width": args.width, "size": args.size, "seeds": sorted({r["seed"] for r in rows}),
              "epochs": args.epochs, "merged": args.merge,
              "source": json.loads(source.read_text())["test"] if source.exists() else None,
              "settings": {k: getattr(args, k) for k in POOLED_SETTINGS + ("rounds",)},
              "summary": summary(rows), "targets": targets(rows), "rows": rows,
              "environment": environment(), "date": time.strftime("%Y-%m-%d"),
              "command": "python benchmarks/channel_scaling.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print_report(report)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
