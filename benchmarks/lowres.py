"""Low-resolution input, full-resolution masks: the J-Net head against bilinear upsampling (issue 6).

On Kvasir-SEG, every model shares the seeded split, the ``kvasir-unet``
backbone (5-level U-Net, widths 16-256, instance norm) and its training
settings with ``--epochs`` epochs. Masks are scored at ``--output-size``
(256x256 by default). Per input size (32 and 64) and seed:

- ``jnet``: the backbone on the small image, its logits upsampled by the
  learned J-Net head started as nearest-neighbour upsampling, supervised at
  every scale;
- ``bilinear``: the same, with fixed bilinear upsampling in place of the head
  (same loss, same targets: the difference is the head alone);
- ``bilinear-low``: the backbone trained on downsized masks only, its logits
  upsampled bilinearly at test time (what users do today);

plus ``full``: the backbone on full-resolution input (``--full-seeds``), and
on request (``--arms jnet-default``) the head with PyTorch's default
initialisation (medslim's default, chosen after this benchmark).

Each row: test Dice and HD95 at the output size, parameters the head adds,
FLOPs, and frames per second in ONNX Runtime with 1 thread at batch 1
(our stand-in for an embedded CPU), the models timed in turns so that load
on the machine hits all alike. Finished runs are reused. Prints a table,
writes JSON and a figure of masks (input, bilinear, head, ground truth).

    python benchmarks/lowres.py --seeds 0 1 2
    python benchmarks/lowres.py --sizes 32 --seeds 0 --full-seeds --train-only   # part of it
    (an empty --full-seeds leaves out the full-resolution backbone, 95 minutes per seed on one CPU core)
    python benchmarks/lowres.py --seeds 0 1 2 --report-only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _merge import earlier_report, merged_rows  # noqa: E402

ARMS = ("jnet", "bilinear", "bilinear-low")
ABLATIONS = ("jnet-default",)  # the head with PyTorch's initialisation (medslim's default)
CONFIG = "kvasir-unet"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="input sizes")
    p.add_argument("--output-size", type=int, default=256)
    p.add_argument("--arms", nargs="+", choices=ARMS + ABLATIONS, default=list(ARMS))
    p.add_argument("--full-seeds", type=int, nargs="*", default=[0],
                   help="seeds of the full-resolution backbone (costly on a CPU)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--full-epochs", type=int, help="epochs of the full-resolution backbone (default --epochs)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training")
    p.add_argument("--repeats", type=int, default=60, help="ONNX Runtime timing rounds")
    p.add_argument("--data", help="folder holding kvasir-seg/")
    p.add_argument("--runs", default="benchmarks/runs/lowres")
    p.add_argument("--out", default="benchmarks/results/lowres-kvasir.json")
    p.add_argument("--report-only", action="store_true", help="train nothing; measure and report")
    p.add_argument("--train-only", action="store_true", help="train; measure and report later")
    args = p.parse_args(argv)
    args.full_epochs = args.full_epochs or args.epochs
    for size in args.sizes:
        if args.output_size % size or args.output_size // size not in (2, 4, 8, 16):
            p.error(f"--output-size {args.output_size} must be 2, 4, 8 or 16 times each input size")
    if args.epochs < 1 or args.repeats < 3:
        p.error("--epochs must be >= 1 and --repeats >= 3")
    return args


# ---------------------------------------------------------------- training

def run_name(arm: str, size: int, seed: int) -> str:
    return f"kvasir-{arm}-{size}-s{seed}"


def config(arm: str, size: int, seed: int, args) -> dict:
    from medslim.config import load_config, with_low_resolution

    out = args.output_size
    cfg = load_config(CONFIG, [f"seed={seed}", f"name={run_name(arm, size, seed)}", f"output={args.runs}",
                               f"train.epochs={args.epochs}", f"train.threads={args.threads}"])
    if arm == "full":
        cfg["data"]["size"] = [out, out]
        cfg["train"]["epochs"] = args.full_epochs
        return cfg
    cfg = with_low_resolution(cfg, [size], [out], head="bilinear" if arm.startswith("bilinear") else "jnet")
    if arm == "bilinear-low":
        cfg["model"]["supervise"] = "low"
    # "jnet" was run with the nearest-neighbour start, then medslim's default
    if arm.startswith("jnet"):
        cfg["model"]["init"] = "default" if arm == "jnet-default" else "nearest"
    return cfg


def train(arm: str, size: int, seed: int, args) -> Path:
    from medslim.jobs import train_run
    from medslim.runs import resumable

    name = run_name(arm, size, seed)
    run = Path(args.runs) / name
    if (run / "results.json").exists() or args.report_only:
        return run
    resume = resumable(args.runs, name)
    print(f"training {name}", flush=True)
    return train_run(config(arm, size, seed, args), data_path=args.data, resume=resume, progress=False)


def jobs(args, arms=None) -> list[tuple[str, int, int]]:
    low = [(arm, size, seed) for seed in args.seeds for size in args.sizes for arm in arms or args.arms]
    return low + [("full", args.output_size, seed) for seed in args.full_seeds]


# ---------------------------------------------------------------- measuring

def results_of(run: Path) -> dict | None:
    file = run / "results.json"
    if not file.exists():
        return None
    res = json.loads(file.read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return {"dice": res["test"]["dice"], "hd95": res["test"]["hd95"],
            "hd95_undefined": res["test"]["hd95_undefined"], "params": res["params"], "flops": res["flops"],
            "train_seconds": res["train_seconds"],
            "epoch_seconds": statistics.median(m["epoch_seconds"] for m in metrics)}


def head_params(run: Path) -> int:
    """Parameters outside the backbone: the head's (0 for bilinear, and for the full-size backbone)."""
    from medslim.artifacts import load

    model = load(run)
    backbone = getattr(model, "backbone", model)
    return sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in backbone.parameters())


def dice_with_bilinear_instead(run: Path, args) -> float:
    """Test Dice of a head run's own backbone with bilinear upsampling in place of its head.

    Tells how much of the head's result is the upsampler and how much the
    backbone it trained.
    """
    from medslim.artifacts import load
    from medslim.data.splits import load_split
    from medslim.jobs import load_data, read_run_config
    from medslim.training.evaluate import evaluate_split

    cfg = read_run_config(run)
    model = load(run)
    model.head = None  # LowResSegmenter falls back to bilinear upsampling
    data, _ = load_data(cfg, args.data, load_split(run / "split.json"))
    return evaluate_split(model, data, {**cfg["eval"], "hd95": False}, "test")["dice"]


def time_models(models: dict[str, Path], args) -> dict[str, dict]:
    """ONNX Runtime at 1 thread, batch 1: every model timed in turn, round after round."""
    from onnx_timing import time_in_turns

    return {k: {"median_ms": 1e3 * t, "fps": 1.0 / t} for k, t in time_in_turns(models, args.repeats).items()}


def collect(args) -> dict:
    rows = []
    for arm, size, seed in jobs(args, ARMS + ABLATIONS):
        run = Path(args.runs) / run_name(arm, size, seed)
        res = results_of(run)
        if res is not None:
            rows.append({"arm": arm, "input_size": size, "seed": seed, "run": str(run),
                         "head_params": head_params(run), **res})
            if arm.startswith("jnet"):
                rows[-1]["dice_head_swapped_for_bilinear"] = dice_with_bilinear_instead(run, args)
    timed = {}
    for arm, size, seed in jobs(args):
        key = f"{arm}-{size}"
        run = Path(args.runs) / run_name(arm, size, seed)
        if arm not in ABLATIONS and key not in timed and (run / "results.json").exists():
            timed[key] = run  # one trained model per configuration: speed does not depend on weights
    speed = time_models(timed, args) if timed else {}
    return {"rows": with_speed(rows, speed), "speed": speed}


def with_speed(rows: list[dict], speed: dict) -> list[dict]:
    """Rows with the timing of their network (an ablation shares the network of its arm).

    This run's timing where it timed the network, else the one recorded with
    the earlier rows (a report that adds seeds of one arm need not re-time the rest).
    """
    timing = {f"{r['arm']}-{r['input_size']}": {k: r[k] for k in ("median_ms", "fps") if k in r}
              for r in rows if "fps" in r and r["arm"] not in ABLATIONS}
    timing.update(speed)
    for row in rows:
        same_network = "jnet" if row["arm"] in ABLATIONS else row["arm"]
        row.update(timing.get(f"{same_network}-{row['input_size']}", {}))
    return rows


def earlier_rows(out: Path, args) -> list[dict]:
    """Rows of the earlier report, if they were trained with the same settings as this run's."""
    previous = earlier_report(out)
    settings = ("output_size", "epochs", "full_epochs")
    if previous and any(previous.get(k) != getattr(args, k) for k in settings):
        print(f"{out}: its results used other {', '.join(settings)}; they are replaced")
        return []
    return previous.get("rows", [])


def summary(rows: list[dict]) -> list[dict]:
    """Mean and spread over seeds per (arm, input size), and the targets per input size."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["arm"], row["input_size"]), []).append(row)
    out = []
    for (arm, size), rs in groups.items():
        dice = [r["dice"] for r in rs]
        out.append({"arm": arm, "input_size": size, "seeds": [r["seed"] for r in rs],
                    "dice_mean": statistics.mean(dice), "dice_sd": statistics.stdev(dice) if len(dice) > 1 else 0.0,
                    "hd95_mean": statistics.mean(r["hd95"] for r in rs),
                    "head_params": rs[0]["head_params"], "params": rs[0]["params"], "flops": rs[0]["flops"],
                    "fps": rs[0].get("fps"), "epoch_seconds": statistics.median(r["epoch_seconds"] for r in rs)})
        swapped = [r["dice_head_swapped_for_bilinear"] for r in rs if "dice_head_swapped_for_bilinear" in r]
        if swapped:
            out[-1]["dice_head_swapped_for_bilinear_mean"] = statistics.mean(swapped)
    order = ARMS + ABLATIONS
    return sorted(out, key=lambda r: (r["input_size"], order.index(r["arm"]) if r["arm"] in order else 9))


def targets(rows: list[dict], groups: list[dict]) -> list[dict]:
    """Per input size: Dice gain of the head over each bilinear baseline (paired by seed), FPS ratio."""
    by = {(r["arm"], r["input_size"], r["seed"]): r for r in rows}
    fps = {(g["arm"], g["input_size"]): g["fps"] for g in groups}
    full_fps = next((g["fps"] for g in groups if g["arm"] == "full"), None)
    out = []
    for size in sorted({r["input_size"] for r in rows if r["arm"] == "jnet"}):
        entry = {"input_size": size}
        for head, prefix in (("jnet", ""), ("jnet-default", "default_init_")):
            for base in ("bilinear", "bilinear-low"):
                gains = [100 * (by[(head, size, s)]["dice"] - by[(base, size, s)]["dice"])
                         for (a, z, s) in by if a == head and z == size and (base, size, s) in by]
                if gains:
                    entry[f"{prefix}gain_vs_{base}_points"] = gains
                    entry[f"{prefix}gain_vs_{base}_mean"] = statistics.mean(gains)
        if fps.get(("jnet", size)) and fps.get(("bilinear", size)):
            entry["fps_ratio_vs_bilinear"] = fps[("jnet", size)] / fps[("bilinear", size)]
        if fps.get(("jnet", size)) and full_fps:
            entry["fps_ratio_vs_full"] = fps[("jnet", size)] / full_fps
        entry["head_params"] = by.get(("jnet", size, rows[0]["seed"]), {}).get("head_params")
        out.append(entry)
    return out


# ---------------------------------------------------------------- figure

def mask_figure(args, size: int, seed: int, path: Path, n_images: int = 4) -> bool:
    """Input (as the network sees it), bilinear, head and ground truth for a few test images.

    False, and no figure, when the two runs it needs are not in ``--runs``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from medslim.artifacts import load
    from medslim.data.splits import load_split
    from medslim.jobs import load_data, read_run_config

    runs = {arm: Path(args.runs) / run_name(arm, size, seed) for arm in ("bilinear", "jnet")}
    if not all((r / "results.json").exists() for r in runs.values()):
        return False
    cfg = read_run_config(runs["jnet"])
    data, _ = load_data(cfg, args.data, load_split(runs["jnet"] / "split.json"))
    items = data.test[:n_images]
    preds = {}
    with torch.no_grad():
        for arm, run in runs.items():
            model = load(run)
            preds[arm] = [model(it["image"][None])[0].argmax(0) for it in items]
    titles = [f"input {size}x{size}", "bilinear", "J-Net head", f"ground truth {args.output_size}"]
    fig, axes = plt.subplots(len(items), 4, figsize=(9, 2.3 * len(items)))
    for i, it in enumerate(items):
        image = it["image"].permute(1, 2, 0)
        image = (image - image.min()) / (image.max() - image.min() + 1e-8)
        panels = [image, preds["bilinear"][i], preds["jnet"][i], it["label"][0]]
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(panel.numpy(), cmap=None if j == 0 else "gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- report

def print_report(report: dict) -> None:
    print(f"\nKvasir-SEG, masks at {report['output_size']}x{report['output_size']}, "
          f"{report['epochs']} epochs, ONNX Runtime 1 thread batch 1")
    print(f"{'model':<14}{'input':>6}{'seeds':>7}{'Dice':>16}{'HD95':>8}{'head p':>8}{'MFLOP':>9}"
          f"{'FPS':>8}{'s/epoch':>9}")
    for g in report["summary"]:
        fps = f"{g['fps']:.0f}" if g.get("fps") else "-"
        print(f"{g['arm']:<14}{g['input_size']:>6}{len(g['seeds']):>7}"
              f"{g['dice_mean']:>10.3f} ±{g['dice_sd']:.3f}{g['hd95_mean']:>8.1f}{g['head_params']:>8}"
              f"{g['flops'] / 1e6:>9.1f}{fps:>8}{g['epoch_seconds']:>9.1f}")
    for g in report["summary"]:
        if "dice_head_swapped_for_bilinear_mean" in g:
            print(f"{g['arm']} {g['input_size']}: the same backbones with bilinear upsampling in place of "
                  f"their head: Dice {g['dice_head_swapped_for_bilinear_mean']:.3f}")
    print("\ntargets: head - bilinear >= 5.5 Dice points, < 200 head parameters, FPS >= 80% of bilinear")
    for t in report["targets"]:
        parts = [f"input {t['input_size']}: head params {t['head_params']}"]
        for prefix, head in (("", "head"), ("default_init_", "default-init head")):
            for base in ("bilinear", "bilinear-low"):
                if f"{prefix}gain_vs_{base}_mean" in t:
                    pts = ", ".join(f"{g:+.1f}" for g in t[f"{prefix}gain_vs_{base}_points"])
                    parts.append(f"{head} vs {base} {t[f'{prefix}gain_vs_{base}_mean']:+.1f} pts ({pts})")
        if "fps_ratio_vs_bilinear" in t:
            parts.append(f"FPS {100 * t['fps_ratio_vs_bilinear']:.0f}% of bilinear")
        if "fps_ratio_vs_full" in t:
            parts.append(f"{t['fps_ratio_vs_full']:.1f}x the full-size backbone")
        print("  " + "; ".join(parts))


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.report_only:
        for arm, size, seed in jobs(args):
            train(arm, size, seed, args)
    if args.train_only:
        return 0
    from medslim._io import write_json
    from medslim.cost.measurement import environment

    data = collect(args)
    if not data["rows"]:
        print("no finished runs to report", file=sys.stderr)
        return 1
    out = Path(args.out)
    rows = with_speed(merged_rows(earlier_rows(out, args), data["rows"]), data["speed"])
    groups = summary(rows)
    report = {"dataset": "kvasir-seg", "output_size": args.output_size, "epochs": args.epochs,
              "full_epochs": args.full_epochs, "seeds": sorted({r["seed"] for r in rows if r["arm"] != "full"}),
              "full_seeds": sorted({r["seed"] for r in rows if r["arm"] == "full"}), "summary": groups,
              "targets": targets(rows, groups), "rows": rows,
              "environment": environment(), "date": time.strftime("%Y-%m-%d"),
              "command": "python benchmarks/lowres.py " + " ".join(sys.argv[1:])}
    figure = out.with_name(out.stem + "-masks.png")
    drawn = mask_figure(args, min(args.sizes), args.seeds[0], figure)
    write_json(out, report)
    print_report(report)
    print(f"\nwrote {out}" + (f" and {figure}" if drawn else
                                f"; no figure (it needs the jnet and bilinear runs at {min(args.sizes)}, "
                                f"seed {args.seeds[0]}; {figure} is left as it was)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
