"""Pruning methods side by side on real data: Kvasir-SEG (2D) and Hippocampus (3D).

Per dataset and seed, all rows share the U-Net, the data split and the
training settings of the baseline configs (``kvasir-unet``,
``hippocampus-unet``):

- ``baseline``: the unpruned U-Net (reused from benchmarks/baseline.py);
- ``sauron`` and ``sauron-lam0``: pruned while training, for the baseline's
  epoch count (the threshold schedule is compressed to that budget:
  ``--sauron-patience``, ``--sauron-plateau``; see docs/pruning.md);
- post-hoc methods on the trained baseline, each to the FLOPs Sauron reached
  (from its run, or from its row in the earlier JSON when ``sauron`` is not
  in ``--methods``) and to ``--levels`` of the baseline FLOPs, then fine-tuned
  ``--finetune-epochs`` epochs at the learning rate / 10: ``taylor_gn``
  (iterative, one fine-tuning epoch per step), ``l1``, ``fpgm``, ``hrank``,
  ``slimming`` (the affine instance-norm scales of the baseline, which was
  trained without slimming's L1 sparsity term), ``random``;
- ``slimming-sparse``: network slimming as its paper does it: a second
  training of the baseline with the L1 term on the norm scales
  (``--sparsity``, the run ``sparse-<dataset>-s<seed>``, reported as the row
  ``sparse-baseline``), then cut by those scales and fine-tuned like the
  post-hoc rows;
- ``uniform``: every layer cut by the same fraction, re-initialised and
  trained from scratch for the baseline's epoch count;
- ``tp-l1``: Torch-Pruning 1.6.1 (optional install) with its L1 group
  magnitude importance and its default per-layer ratio, the ratio bisected
  to the same FLOPs, then fine-tuned like the post-hoc rows.

Every row: Dice and HD95 (mean and per class), parameters, FLOPs, ONNX
Runtime latency at batch 1, total training time (for post-hoc rows the
baseline's training plus pruning and fine-tuning). Finished runs are reused,
so an interrupted benchmark continues; train with ``--skip-cost`` while the
machine is busy, then run again without it on a quiet machine to measure
latency. Prints a table, writes JSON and a Dice-vs-FLOPs plot per dataset
plus Sauron's epoch-time plot. Rows are merged into the JSON by run name, so
a run of a few methods or seeds adds to the earlier rows (the summary and
plots cover them all) instead of replacing them.

    python benchmarks/pruning.py --dataset kvasir --seeds 0 1 2
    python benchmarks/pruning.py --dataset hippocampus --seeds 0 --levels 0.25
    python benchmarks/pruning.py --dataset kvasir --seeds 0 --skip-cost   # train only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import exit_code  # noqa: E402
from _merge import earlier_report, merged_rows  # noqa: E402
from _plots import finish  # noqa: E402

CONFIGS = {"kvasir": "kvasir-unet", "hippocampus": "hippocampus-unet"}
POSTHOC = ("taylor_gn", "l1", "fpgm", "hrank", "slimming", "random")
EXTERNAL = ("tp-l1",)
METHODS = ("sauron", "sauron-lam0", *POSTHOC, "slimming-sparse", "uniform", *EXTERNAL)
LEVEL_METHODS = (*POSTHOC, "slimming-sparse")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=[*CONFIGS, "all"], default="all")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="rows to run (the baseline always runs)")
    p.add_argument("--levels", type=float, nargs="*", default=[0.5, 0.25, 0.1],
                   help="FLOPs ratios for the post-hoc methods, besides Sauron's")
    p.add_argument("--level-methods", nargs="+", choices=LEVEL_METHODS, default=list(LEVEL_METHODS),
                   help="post-hoc methods also run at --levels")
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--sparsity", type=float, default=1e-4,
                   help="slimming-sparse: weight of the L1 term on the norm scales (the paper's 1e-4)")
    p.add_argument("--sauron-patience", type=int, default=0)
    p.add_argument("--sauron-plateau", action="store_true",
                   help="keep the paper's loss-plateau rule (meant for 500+ epochs)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training")
    p.add_argument("--data", help="folder holding kvasir-seg/ and hippocampus/")
    p.add_argument("--runs", default="benchmarks/runs")
    p.add_argument("--out", default="benchmarks/results/pruning.json")
    p.add_argument("--skip-cost", action="store_true", help="train only; measure later")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: table, plots and JSON from the runs that are finished")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--full-size", action="store_true", help="Kvasir-SEG at 256x256 (for GPUs)")
    args = p.parse_args(argv)
    if "tp-l1" in args.methods and importlib.util.find_spec("torch_pruning") is None:
        print("tp-l1 row skipped: Torch-Pruning is not installed (pip install --no-deps torch-pruning==1.6.1)")
        args.methods = [m for m in args.methods if m != "tp-l1"]
    return args


# ----------------------------------------------------------------------------- runs


def baseline_run(dataset: str, seed: int, args) -> Path:
    import baseline

    return baseline.train_one(dataset, seed, argparse.Namespace(
        runs=args.runs, epochs=None, threads=args.threads, full_size=args.full_size, data=args.data))


def sauron_run(dataset: str, seed: int, lam: float, args) -> Path:
    return trained_variant(dataset, seed, f"sauron{'-lam0' if lam == 0 else ''}-{dataset}-s{seed}", args, [
        "prune.method=sauron", f"prune.lam={lam}", f"prune.patience={args.sauron_patience}",
        f"prune.plateau={str(args.sauron_plateau).lower()}"])


def sparse_base_run(dataset: str, seed: int, args) -> Path:
    """The baseline trained again with network slimming's L1 term on the norm scales."""
    return trained_variant(dataset, seed, f"sparse-{dataset}-s{seed}", args, [f"train.sparsity={args.sparsity}"])


def trained_variant(dataset: str, seed: int, name: str, args, overrides: list[str]) -> Path:
    """The run ``name``: the dataset's baseline config with ``overrides``; trained unless finished."""
    from medslim.config import load_config
    from medslim.jobs import train_run
    from medslim.runs import resumable

    run = Path(args.runs) / name
    if (run / "results.json").exists() or args.report_only:
        return run
    overrides = [f"seed={seed}", f"name={name}", f"output={args.runs}", f"train.threads={args.threads}",
                 *overrides]
    if args.full_size and dataset == "kvasir":
        overrides.append("data.size=[256,256]")
    cfg = load_config(CONFIGS[dataset], overrides)
    resume = resumable(args.runs, name)
    return train_run(cfg, data_path=args.data, resume=resume, progress=False)


def posthoc_run(base: Path, method: str, ratio: float, args) -> Path:
    from medslim.jobs import prune_run

    name = f"{method}-{base.name.removeprefix('baseline-')}-f{ratio:.3f}"
    run = Path(args.runs) / name
    if (run / "results.json").exists() or args.report_only:
        return run
    uniform = method == "uniform"
    epochs = _config(base)["train"]["epochs"] if uniform else args.finetune_epochs
    steps = max(1, args.finetune_epochs) if method == "taylor_gn" else 1
    return prune_run(base, method, flops_ratio=ratio, name=name, output=args.runs,
                     finetune_epochs=1 if steps > 1 else epochs, steps=steps,
                     finetune_lr=_config(base)["train"]["lr"] if uniform else None,
                     data_path=args.data, progress=False, measure=False,
                     external=torch_pruning_l1(ratio, _n_classes(base)) if method == "tp-l1" else None)


def _n_classes(run: Path) -> int:
    from medslim.artifacts import load_manifest

    return load_manifest(run)["model"]["out_channels"]


def torch_pruning_l1(ratio: float, n_classes: int):
    """Torch-Pruning's L1 pruner, its uniform ratio bisected until the FLOPs reach ``ratio``."""
    def run(model, example):
        import copy

        import torch_pruning as tp

        from medslim.cost import count_flops
        from vs_torch_pruning import last_convs

        flops0 = count_flops(model, example)

        def pruned_at(fraction: float):
            net = copy.deepcopy(model).eval()
            tp.pruner.BasePruner(net, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                 pruning_ratio=fraction, ignored_layers=last_convs(net, n_classes)).step()
            return net, count_flops(net, example) / flops0

        low, high = 0.0, 0.95
        for _ in range(12):  # FLOPs fall monotonically with the ratio; 12 halvings: +-0.0002
            mid = (low + high) / 2
            low, high = (mid, high) if pruned_at(mid)[1] > ratio else (low, mid)
        return pruned_at(high)[0]
    return run


def _config(run: Path) -> dict:
    from medslim.jobs import read_run_config

    return read_run_config(run)


# ----------------------------------------------------------------------------- rows


def row(run: Path, kind: str, base_seconds: float | None = None) -> dict:
    """One table row; ``base_seconds``: the baseline's training time, added to a post-hoc row's."""
    results = json.loads((run / "results.json").read_text())
    test = results["test"]
    cost = json.loads((run / "cost.json").read_text()) if (run / "cost.json").exists() else {}
    pruning = json.loads((run / "pruning.json").read_text()) if (run / "pruning.json").exists() else {}
    seconds = results.get("train_seconds", 0.0) + pruning.get("seconds", 0.0)
    if base_seconds is not None and kind not in ("uniform",):
        seconds += base_seconds
    out = {"run": run.name, "method": kind, "seed": _config(run)["seed"], "dice": test["dice"],
           "dice_per_class": test["dice_per_class"], "hd95": test.get("hd95"),
           "hd95_per_class": test.get("hd95_per_class"), "train_seconds": round(seconds, 1)}
    if cost:
        out.update({"params": cost["params"], "flops": cost["flops"],
                    "onnx_ms": {t: v["median_ms"] for t, v in (cost["onnx_latency"] or {}).items()},
                    "torch_ms": {t: v["median_ms"] for t, v in cost["torch_latency"].items()}})
    else:
        out.update(model_size(run))
    return out


def _train_seconds(run: Path) -> float:
    return json.loads((run / "results.json").read_text())["train_seconds"]


def model_size(run: Path) -> dict:
    import torch

    from medslim.artifacts import load
    from medslim.cost import count_flops, count_params

    model = load(run)
    shape = model.medslim_manifest["extra"]["input_shape"]
    return {"params": count_params(model), "flops": count_flops(model, torch.zeros(*shape))}


def sauron_epochs(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.append({"epoch": rec["epoch"], "seconds": rec["epoch_seconds"],
                    "flops": rec["sauron"]["flops"], "params": rec["sauron"]["params"],
                    "val_dice": rec.get("val", {}).get("dice"),
                    "tau_median": statistics.median(rec["sauron"]["tau"].values())})
    return out


# ----------------------------------------------------------------------------- one dataset


def run_dataset(dataset: str, seed: int, args, recorded: list[dict] = ()) -> tuple[list[dict], dict]:
    """Every row of one seed; ``recorded``: the rows of the earlier report (see ``recorded_baseline``)."""
    base = baseline_run(dataset, seed, args) if not args.report_only else \
        Path(args.runs) / f"baseline-{dataset}-s{seed}"
    base_row = recorded_baseline(base, recorded, args)
    runs: list[tuple[Path, str]] = [] if base_row else [(base, "baseline")]
    tags: dict[str, str] = {}  # run name -> the FLOPs level it was pruned to ("sauron" or a ratio)
    epochs: dict = {}
    sauron_ratio = None
    for method, lam in (("sauron", 0.5), ("sauron-lam0", 0.0)):
        if method in args.methods:
            run = sauron_run(dataset, seed, lam, args)
            if not (run / "results.json").exists():  # --report-only: not trained yet
                continue
            runs.append((run, method))
            epochs[method] = sauron_epochs(run)
            if method == "sauron":
                base_flops = base_row["flops"] if base_row else model_size(base)["flops"]
                sauron_ratio = json.loads((run / "results.json").read_text())["flops"] / base_flops
    if sauron_ratio is None:
        sauron_ratio = recorded_sauron_ratio(dataset, seed, recorded)
    levels = {round(sauron_ratio, 3): "sauron"} if sauron_ratio is not None else {}
    sparse = None
    if "slimming-sparse" in args.methods:
        sparse = sparse_base_run(dataset, seed, args)
        if (sparse / "results.json").exists():
            runs.append((sparse, "sparse-baseline"))
            tags[sparse.name] = "1"
    for method in [m for m in (*POSTHOC, "slimming-sparse", "uniform", *EXTERNAL) if m in args.methods]:
        source = base
        if method == "slimming-sparse":
            if not (sparse / "results.json").exists():
                continue
            source = sparse
        todo = dict(levels)
        for ratio in (args.levels if method in args.level_methods else []):
            todo.setdefault(round(ratio, 3), f"{ratio:g}")
        for ratio, level in todo.items():
            run = posthoc_run(source, "slimming" if method == "slimming-sparse" else method, ratio, args)
            if (run / "results.json").exists():
                runs.append((run, method))
                tags[run.name] = level
    if not args.skip_cost:
        measure((r for r, _ in runs), args.repeats)
    base_seconds = base_row["train_seconds"] if base_row else _train_seconds(base)
    sparse_seconds = _train_seconds(sparse) if sparse is not None and (sparse / "results.json").exists() else None
    seconds_before = {"baseline": None, "sauron": None, "sauron-lam0": None, "sparse-baseline": None,
                      "slimming-sparse": sparse_seconds}
    rows = [row(r, kind, seconds_before.get(kind, base_seconds)) for r, kind in runs]
    if base_row:
        rows.insert(0, base_row)
        runs.insert(0, (base, "baseline"))
    if not args.skip_cost:
        for r, (run, kind) in zip(rows, runs):
            if kind.startswith("sauron"):
                r["step_times"] = sauron_step_times(run, args.threads)
    flops0 = rows[0]["flops"]
    for r in rows:
        r["level"] = tags.get(r["run"], "1" if r["method"] == "baseline" else "sauron")
        r["flops_ratio"] = r["flops"] / flops0
        r["dice_drop_points"] = 100 * (rows[0]["dice"] - r["dice"])
    return rows, epochs


def recorded_sauron_ratio(dataset: str, seed: int, recorded: list[dict]) -> float | None:
    """The FLOPs ratio Sauron reached on this seed, from the earlier report (None if never run).

    Lets a later run of some post-hoc methods (without ``sauron`` in
    ``--methods``, or after its run folder was cleaned away) still cut to
    Sauron's FLOPs, as every post-hoc row is meant to.
    """
    found = next((r for r in recorded if r["run"] == f"sauron-{dataset}-s{seed}"), None)
    return found["flops_ratio"] if found else None


def recorded_baseline(base: Path, recorded: list[dict], args) -> dict | None:
    """The baseline's row from the earlier report, when a report-only run finds its folder gone.

    Run folders are working files (ignored by git) and may be cleaned away;
    the JSON is the record. A row trained against this baseline (Sauron with
    lambda 0, say) is then reported against the baseline's recorded Dice and
    FLOPs instead of retraining it for an hour. Only in ``--report-only``:
    a training run always trains or reuses the baseline itself.
    """
    if (base / "results.json").exists() or not args.report_only:
        return None
    found = next((r for r in recorded if r["run"] == base.name), None)
    if found is None:
        raise SystemExit(f"{base}: no finished baseline run, and {args.out} holds no row for it; "
                         "train it first (run without --report-only)")
    return dict(found)


def measure(runs, repeats: int) -> None:
    from medslim.jobs import cost_run

    for run in runs:
        if not (run / "cost.json").exists():
            cost_run(run, threads=[1, 2], repeats=repeats)


def sauron_step_times(run: Path, threads: int, repeats: int = 15) -> dict:
    """Training-step time of the network Sauron started from and of the one it ended with.

    The per-epoch times in metrics.jsonl are confounded by whatever else the
    machine ran meanwhile, so this times both networks back to back, steps
    interleaved, each with the Sauron regulariser and Adam as in training
    (a batch of the training shape; the timing does not depend on values).
    """
    import time

    import torch

    from medslim.artifacts import load
    from medslim.data.pipeline import TaskInfo
    from medslim.jobs import training_hook
    from medslim.models import build_model
    from medslim.training.losses import make_loss

    cfg = _config(run)
    torch.set_num_threads(threads)
    last = load(run)
    first = build_model(last.medslim_manifest["model"])
    info = TaskInfo(**last.medslim_manifest["extra"]["task"])
    batch = torch.randn(cfg["train"]["batch_size"], info.in_channels, *info.input_size)
    labels = torch.randint(0, info.num_classes, (batch.shape[0], 1, *info.input_size))
    loss_fn = make_loss(info.task, cfg["train"]["loss"])
    steps = []
    for net in (first, last):
        hook = training_hook(cfg, info)  # the run's own Sauron settings
        hook.begin(net.train())
        steps.append((net, hook, torch.optim.Adam(net.parameters(), lr=1e-4)))

    def step(net, hook, optimizer) -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(batch), labels)
        extra = hook.extra_loss()  # None with lambda 0: no regulariser term
        if extra is not None:
            loss = loss + extra
        loss.backward()
        hook.after_backward(net)
        optimizer.step()
        return time.perf_counter() - start

    times: list[list[float]] = [[], []]
    for i in range(repeats + 2):
        for k, parts in enumerate(steps):
            seconds = step(*parts)
            if i >= 2:  # two warm-up steps each
                times[k].append(seconds)
    for _, hook, _ in steps:
        hook.close()
    first_ms, last_ms = (1000 * statistics.median(t) for t in times)
    return {"threads": threads, "repeats": repeats, "batch": list(batch.shape),
            "first_step_ms": round(first_ms, 1), "last_step_ms": round(last_ms, 1),
            "speedup": round(first_ms / last_ms, 2)}


# ----------------------------------------------------------------------------- output


def print_table(dataset: str, rows: list[dict]) -> None:
    print(f"\n{dataset}")
    head = (f"{'run':38s} {'Dice':>6s} {'drop':>6s} {'HD95':>7s} {'params':>9s} {'FLOPs%':>7s} "
            f"{'ORT ms 1t':>9s} {'train s':>8s}")
    print(head)
    print("-" * len(head))
    for r in sorted(rows, key=lambda r: (-r["flops_ratio"], r["method"])):
        ort = r.get("onnx_ms", {}).get("1")
        print(f"{r['run']:38s} {r['dice']:6.3f} {r['dice_drop_points']:6.1f} "
              f"{(r['hd95'] or float('nan')):7.2f} {r['params']:9d} {100 * r['flops_ratio']:7.1f} "
              f"{(ort if ort is not None else float('nan')):9.2f} {r['train_seconds']:8.0f}")


def summarise(rows: list[dict]) -> list[dict]:
    """One entry per method and FLOPs level: mean and standard deviation over the seeds.

    Post-hoc rows "at Sauron's FLOPs" are pooled across seeds even though
    each seed's Sauron stopped at a slightly different ratio; the mean ratio
    is reported with them.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["level"]), []).append(r)
    out = []
    for (method, level), rs in groups.items():
        def stats(key):
            xs = [r[key] for r in rs]
            return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)

        dice, dice_sd = stats("dice")
        drop, drop_sd = stats("dice_drop_points")
        ort = [r["onnx_ms"]["1"] for r in rs if r.get("onnx_ms", {}).get("1") is not None]
        out.append({"method": method, "level": level, "seeds": sorted(r["seed"] for r in rs),
                    "dice_mean": round(dice, 4), "dice_sd": round(dice_sd, 4),
                    "drop_mean": round(drop, 2), "drop_sd": round(drop_sd, 2),
                    "flops_ratio_mean": round(stats("flops_ratio")[0], 4),
                    "params_mean": round(stats("params")[0]),
                    "onnx_ms_1t_median": round(statistics.median(ort), 2) if ort else None,
                    "train_seconds_mean": round(stats("train_seconds")[0])})
    level_flops = {}
    for e in out:
        level_flops[e["level"]] = max(level_flops.get(e["level"], 0.0), e["flops_ratio_mean"])
    return sorted(out, key=lambda e: (-level_flops[e["level"]], -e["dice_mean"]))


def print_summary(dataset: str, summary: list[dict]) -> None:
    print(f"\n{dataset}: mean +- sd over seeds")
    head = f"{'method':16s} {'level':>7s} {'seeds':>6s} {'Dice':>14s} {'drop':>12s} {'FLOPs%':>7s} {'params':>9s}"
    print(head)
    print("-" * len(head))
    for e in summary:
        print(f"{e['method']:16s} {e['level']:>7s} {len(e['seeds']):6d} "
              f"{e['dice_mean']:7.3f} +-{e['dice_sd']:5.3f} {e['drop_mean']:5.1f} +-{e['drop_sd']:4.1f} "
              f"{100 * e['flops_ratio_mean']:7.1f} {e['params_mean']:9d}")


def plot(dataset: str, summary: list[dict], epochs: dict, folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(e["method"] for e in summary):
        pts = sorted((100 * e["flops_ratio_mean"], e["dice_mean"], e["dice_sd"])
                     for e in summary if e["method"] == method)
        x, y, sd = zip(*pts)
        ax.errorbar(x, y, yerr=sd, marker="o", capsize=3, linestyle="-" if len(pts) > 1 else "",
                    label=method)
    ax.set_xscale("log")
    written.append(finish(fig, ax, folder / f"pruning-{dataset}-dice-flops.png", title=f"{dataset}: Dice vs FLOPs",
                          xlabel="FLOPs (% of the unpruned U-Net, log scale)",
                          ylabel="test Dice (mean +- sd over seeds)"))
    if epochs:
        fig, ax = plt.subplots(figsize=(7, 4))
        for method, recs in epochs.items():
            ax.plot([e["epoch"] for e in recs], [e["seconds"] for e in recs], marker=".", label=f"{method} s/epoch")
        ax2 = ax.twinx()
        for method, recs in epochs.items():
            ax2.plot([e["epoch"] for e in recs], [e["flops"] / 1e9 for e in recs], linestyle="--",
                     label=f"{method} GFLOPs")
        ax.set_xlabel("epoch")
        ax.set_ylabel("seconds per epoch")
        ax2.set_ylabel("GFLOPs after the epoch (dashed)")
        ax.set_title(f"{dataset}: Sauron epoch time as the network shrinks")
        ax.legend(loc="upper right", fontsize=8)
        path = folder / f"pruning-{dataset}-sauron-epochs.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def main(argv=None) -> int:
    from medslim._io import write_json
    from medslim.cost.measurement import environment

    args = parse_args(argv)
    datasets = list(CONFIGS) if args.dataset == "all" else [args.dataset]
    out = Path(args.out)
    for dataset in datasets:
        all_rows, all_epochs = [], {}
        recorded = earlier_report(out).get(dataset, {}).get("rows", [])
        for seed in args.seeds:
            rows, epochs = run_dataset(dataset, seed, args, recorded)
            all_rows += rows
            all_epochs.update({f"{k}-s{seed}": v for k, v in epochs.items()})
        print_table(dataset, all_rows)
        report = earlier_report(out)
        previous = report.get(dataset, {})
        all_rows = merged_rows(previous.get("rows", []), all_rows)
        all_epochs = {**previous.get("sauron_epochs", {}), **all_epochs}
        summary = summarise(all_rows)
        print_summary(dataset, summary)
        plots = plot(dataset, summary, all_epochs, out.parent)
        report[dataset] = {"rows": all_rows, "summary": summary, "sauron_epochs": all_epochs, "plots": plots,
                           "seeds": sorted({*previous.get("seeds", []), *args.seeds}),
                           "finetune_epochs": args.finetune_epochs,
                           "sauron_patience": args.sauron_patience,
                           "sauron_plateau": args.sauron_plateau}
        report["environment"] = environment()
        write_json(out, report)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
