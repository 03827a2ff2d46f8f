"""How far Sauron's FLOPs fall with a longer budget or a higher threshold ceiling.

Sauron's paper reports over 90 % fewer FLOPs after 500-1000 epochs; the
side-by-side benchmark (``pruning.py``) gives it the reference U-Net's 30.
This script trains, per seed:

- ``baseline-e<N>``: the reference U-Net for ``--epochs`` N, the fair
  reference for the longer Sauron run (a 30-epoch baseline would flatter it);
- ``sauron-e<N>``: Sauron for N epochs, every other setting as in
  ``pruning.py`` (lambda 0.5, thresholds 0.001 -> 0.3 one step per epoch);
- ``sauron-tau<T>``: Sauron for the baseline's epochs (30) with the threshold
  ceiling raised from the paper's 0.3 to ``--tau-max`` T (a departure from
  the paper: a channel is dropped when its map is within T of the reference);
- ``sauron-e<N>-tau<T>``: both at once, N epochs with the ceiling T, against
  ``baseline-e<N>`` (taken from the earlier report when its folder is gone;
  ``--variants baseline`` trains that baseline alone, beside the Sauron run);
- ``uniform-e<N>-tau<T>``: the uniform-width network (every layer of
  ``baseline-e<N>`` cut by the same fraction) at the FLOPs the ``both`` run
  reached, trained from scratch for N epochs: the equal-FLOPs rival.

``--settle K`` stops Sauron's pruning K epochs before the end (``prune.stop_after``):
the last K epochs train the final network without the regulariser; the
Sauron and uniform runs' names end in ``-settle<K>``. ``--min-width`` sets
Sauron's width floor (``prune.min_width``: ``4`` for every layer, ``0.25``
for a quarter of every layer, or ``'{decoder.2.3: 8}'``); the names then end
in ``-min4``, ``-min0.25`` or ``-min-decoder.2.3x8``.

It reports each next to the 30-epoch rows recorded by ``pruning.py`` (the
baseline and Sauron of the same seed, from ``pruning.json``): test Dice and
its drop against the baseline of the same epochs, FLOPs and parameters kept,
training time, the epoch the thresholds reached their ceiling. Prints a
table, writes ``sauron-budget.json`` (per-epoch FLOPs and validation Dice
included) and a plot of the FLOPs kept per epoch. Finished runs are reused.

    python benchmarks/sauron_budget.py --dataset kvasir --seeds 0 --epochs 60 --tau-max 0.5
    python benchmarks/sauron_budget.py --dataset kvasir --seeds 1 2 --variants ceiling --tau-max 0.5
    python benchmarks/sauron_budget.py --dataset kvasir --seeds 0 --variants both --epochs 60 --tau-max 0.5
    python benchmarks/sauron_budget.py --dataset kvasir --seeds 0 --variants baseline --epochs 60
    python benchmarks/sauron_budget.py --dataset kvasir --seeds 0 --variants uniform --epochs 60 --tau-max 0.5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import exit_code  # noqa: E402
from _merge import earlier_report, merged_rows  # noqa: E402
from _plots import finish  # noqa: E402
from pruning import CONFIGS, sauron_step_times, trained_variant  # noqa: E402
from pruning import model_size  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=list(CONFIGS), default="kvasir")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=60, help="the longer budget, for the baseline and Sauron")
    p.add_argument("--tau-max", type=float, default=0.5, help="the raised threshold ceiling (paper: 0.3)")
    p.add_argument("--variants", nargs="+", choices=["longer", "ceiling", "both", "baseline", "uniform"],
                   default=["longer", "ceiling"],
                   help="longer: baseline-e<N> and sauron-e<N>; ceiling: sauron-tau<T>; both: sauron-e<N>-tau<T>; "
                        "baseline: baseline-e<N> alone (the reference for 'both', trainable in parallel); "
                        "uniform: baseline-e<N> cut evenly to the FLOPs of 'both' and trained from scratch "
                        "for N epochs (needs both runs finished)")
    p.add_argument("--settle", type=int, default=0,
                   help="Sauron's last K epochs train without pruning or regulariser (prune.stop_after)")
    p.add_argument("--min-width", type=_floor_spec, default=None,
                   help="Sauron's width floor (prune.min_width), as YAML: 4, 0.25, or '{decoder.2.3: 8}'")
    p.add_argument("--sauron-patience", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", help="folder holding kvasir-seg/ and hippocampus/")
    p.add_argument("--runs", default="benchmarks/runs")
    p.add_argument("--recorded", default="benchmarks/results/pruning.json",
                   help="pruning.py's JSON, for the 30-epoch baseline and Sauron rows")
    p.add_argument("--out", default="benchmarks/results/sauron-budget.json")
    p.add_argument("--report-only", action="store_true", help="train nothing: report the finished runs")
    p.add_argument("--step-times", action="store_true",
                   help="time training steps of each Sauron run's first and last network back to back "
                        "(as pruning.py does; on an idle machine)")
    p.add_argument("--full-size", action="store_true", help="Kvasir-SEG at 256x256 (for GPUs)")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    if not 0 <= args.settle < args.epochs:
        p.error(f"--settle must lie in [0, --epochs), got {args.settle}")
    if not 0.001 <= args.tau_max <= 1:
        p.error(f"--tau-max must lie in [0.001, 1], got {args.tau_max}")
    return args


def _floor_spec(text: str):
    import yaml

    value = yaml.safe_load(text)
    if not isinstance(value, (int, float, dict)) or isinstance(value, bool):
        raise argparse.ArgumentTypeError(f"give a number or a {{layer: number}} mapping, got {text!r}")
    return value


def tau_tag(tau_max: float) -> str:
    return f"tau{tau_max:g}".replace(".", "")


def config_epochs(dataset: str) -> int:
    """The epochs of the dataset's reference config (the budget pruning.py's rows were trained with)."""
    from medslim.config import load_config

    return load_config(CONFIGS[dataset])["train"]["epochs"]


def variants(dataset: str, seed: int, args) -> dict[str, list[str]]:
    """Run name -> config overrides, for the trainings of one seed."""
    sauron = ["prune.method=sauron", "prune.lam=0.5", f"prune.patience={args.sauron_patience}",
              "prune.plateau=false"]
    short = config_epochs(dataset)

    def settled(name: str, epochs: int) -> tuple[str, list[str]]:
        return name + sauron_suffix(args), sauron_extras(args, epochs)

    out = {}
    if {"longer", "baseline"} & set(args.variants):
        out[f"baseline-e{args.epochs}-{dataset}-s{seed}"] = [f"train.epochs={args.epochs}"]
    if "longer" in args.variants:
        name, extra = settled(f"sauron-e{args.epochs}", args.epochs)
        out[f"{name}-{dataset}-s{seed}"] = [*sauron, f"train.epochs={args.epochs}", *extra]
    if "ceiling" in args.variants:
        name, extra = settled(f"sauron-{tau_tag(args.tau_max)}", short)
        out[f"{name}-{dataset}-s{seed}"] = [*sauron, f"prune.tau_max={args.tau_max}", *extra]
    if "both" in args.variants:
        out[both_name(dataset, seed, args)] = [*sauron, f"train.epochs={args.epochs}",
                                               f"prune.tau_max={args.tau_max}", *sauron_extras(args, args.epochs)]
    return out


def sauron_extras(args, epochs: int) -> list[str]:
    """Overrides of the Sauron options this script adds to the paper's: settling, width floors."""
    out = [f"prune.stop_after={epochs - args.settle}"] if args.settle else []
    if args.min_width is not None:
        out.append(f"prune.min_width={json.dumps(args.min_width)}")  # JSON is YAML: the override parses back
    return out


def sauron_suffix(args) -> str:
    suffix = f"-settle{args.settle}" if args.settle else ""
    floor = args.min_width
    if isinstance(floor, dict):
        suffix += "".join(f"-min-{k or 'all'}x{v}" for k, v in floor.items())
    elif floor is not None:
        suffix += f"-min{floor}"
    return suffix


def both_name(dataset: str, seed: int, args) -> str:
    return f"sauron-e{args.epochs}-{tau_tag(args.tau_max)}{sauron_suffix(args)}-{dataset}-s{seed}"


def uniform_run(dataset: str, seed: int, args) -> Path:
    """``uniform-<both>``: the uniform-width network at the FLOPs the 'both' Sauron run reached.

    ``baseline-e<N>``'s architecture with every layer cut by the same
    fraction, re-initialised and trained from scratch for the same epochs and
    learning rate (``pruning.py``'s uniform row, at the longer budget): the
    known rival of any pruning method at equal FLOPs.
    """
    from medslim.errors import ConfigError
    from medslim.jobs import prune_run, read_run_config

    sauron = Path(args.runs) / both_name(dataset, seed, args)
    run = Path(args.runs) / sauron.name.replace("sauron-", "uniform-", 1)
    if (run / "results.json").exists() or args.report_only:
        return run
    base = Path(args.runs) / f"baseline-e{args.epochs}-{dataset}-s{seed}"
    missing = [str(r) for r in (base, sauron) if not (r / "results.json").exists()]
    if missing:
        raise ConfigError(f"--variants uniform needs the finished runs {', '.join(missing)}; "
                          "train them first (--variants baseline both, the same --epochs/--tau-max/--settle)")
    flops = [json.loads((r / "results.json").read_text())["flops"] for r in (sauron, base)]
    return prune_run(base, "uniform", flops_ratio=flops[0] / flops[1], name=run.name, output=args.runs,
                     finetune_epochs=args.epochs, finetune_lr=read_run_config(base)["train"]["lr"],
                     data_path=args.data, progress=False, measure=False)


def row(run: Path, args) -> dict:
    from medslim.jobs import read_run_config

    results = json.loads((run / "results.json").read_text())
    cfg = read_run_config(run)
    trained = "train_seconds" in results  # else a prune_run folder (the uniform row): sizes from its model
    size = {k: results[k] for k in ("params", "flops")} if trained else model_size(run)
    out = {"run": run.name, "seed": cfg["seed"], "epochs": cfg["train"]["epochs"],
           "tau_max": cfg["prune"].get("tau_max", 0.3) if cfg["prune"].get("method") else None,
           "dice": results["test"]["dice"], "dice_per_class": results["test"]["dice_per_class"],
           "hd95": results["test"].get("hd95"), **size,
           "train_seconds": round(results["train_seconds"] if trained else results["prune_seconds"], 1)}
    if cfg["prune"].get("method") == "sauron":
        out["per_epoch"] = per_epoch(run)
        if args.step_times:
            out["step_times"] = sauron_step_times(run, args.threads)
    return out


def per_epoch(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.append({"epoch": rec["epoch"], "flops": rec["sauron"]["flops"], "params": rec["sauron"]["params"],
                    "val_dice": rec.get("val", {}).get("dice"), "seconds": rec["epoch_seconds"],
                    "tau_median": statistics.median(rec["sauron"]["tau"].values())})
    return out


def recorded_rows(dataset: str, seed: int, path: Path) -> list[dict]:
    """The 30-epoch baseline and Sauron of this seed from pruning.py's JSON (its run folders may be gone)."""
    epochs = config_epochs(dataset)
    report = earlier_report(path).get(dataset, {})
    wanted = {f"baseline-{dataset}-s{seed}": None, f"sauron-{dataset}-s{seed}": 0.3}
    out = []
    for r in report.get("rows", []):
        if r["run"] in wanted:
            out.append({"run": r["run"], "seed": seed, "epochs": epochs, "tau_max": wanted[r["run"]],
                        "dice": r["dice"], "dice_per_class": r["dice_per_class"], "hd95": r["hd95"],
                        "params": r["params"], "flops": r["flops"], "train_seconds": r["train_seconds"]})
            if r["method"] == "sauron" and f"sauron-s{seed}" in report.get("sauron_epochs", {}):
                out[-1]["per_epoch"] = report["sauron_epochs"][f"sauron-s{seed}"]
    return sorted(out, key=lambda r: not r["run"].startswith("baseline-"))


def earlier_rows(dataset: str, seed: int, path: Path, found: list[dict]) -> list[dict]:
    """This seed's rows of an earlier report that were not found now (run folders are not kept).

    A run found again keeps its earlier step timing when this report does not
    time it and the network is the same one (same FLOPs, parameters and Dice).
    """
    before = {r["run"]: r for r in earlier_report(path).get(dataset, {}).get("rows", []) if r["seed"] == seed}
    for r in found:
        old = before.pop(r["run"], None)
        same = old and all(old.get(k) == r[k] for k in ("flops", "params", "dice"))
        if same and "step_times" in old and "step_times" not in r:
            r["step_times"] = old["step_times"]
    return list(before.values())


def with_drops(rows: list[dict]) -> list[dict]:
    """FLOPs kept against the full U-Net, Dice drop against the baseline trained for the same epochs."""
    full = next((r["flops"] for r in rows if r["run"].startswith("baseline-")), None)
    for r in rows:
        base = next((b for b in rows if b["run"].startswith("baseline-") and b["epochs"] == r["epochs"]), None)
        r["flops_kept"] = r["flops"] / full if full else None
        r["drop_points"] = 100 * (base["dice"] - r["dice"]) if base else None
        curve = r.get("per_epoch")
        if curve and r["tau_max"] is not None:
            r["ceiling_epoch"] = next((e["epoch"] for e in curve if e["tau_median"] >= r["tau_max"] - 1e-9), None)
    return rows


def print_table(dataset: str, rows: list[dict]) -> None:
    print(f"\n{dataset}: Sauron against its budget (drop: against the baseline of the same epochs)")
    head = (f"{'run':36s} {'epochs':>6s} {'tau_max':>7s} {'Dice':>6s} {'drop':>6s} {'FLOPs%':>7s} "
            f"{'params':>9s} {'train s':>8s} {'ceiling':>7s}")
    print(head + f" {'step x':>6s}")
    print("-" * (len(head) + 7))
    for r in rows:
        fmt = lambda v, spec: format(v, spec) if v is not None else format("-", f">{spec[0]}")  # noqa: E731
        print(f"{r['run']:36s} {r['epochs']:6d} {fmt(r['tau_max'], '7.2f')} {r['dice']:6.3f} "
              f"{fmt(r['drop_points'], '6.1f')} {fmt(100 * r['flops_kept'] if r['flops_kept'] else None, '7.1f')} "
              f"{r['params']:9d} {r['train_seconds']:8.0f} {fmt(r.get('ceiling_epoch'), '7d')} "
              f"{fmt(r.get('step_times', {}).get('speedup'), '6.2f')}")


def plot(dataset: str, rows: list[dict], folder: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    curves = [r for r in rows if r.get("per_epoch")]
    colours = plt.get_cmap("tab20").colors  # more runs than the default cycle's 10 colours
    for i, r in enumerate(curves):
        curve = r["per_epoch"]
        ax.plot([e["epoch"] for e in curve], [100 * e["flops"] / curve[0]["flops"] for e in curve],
                marker=".", color=colours[i % len(colours)], linestyle="-" if i < len(colours) else "--",
                label=f"{r['run']} (Dice {r['dice']:.3f})")
    ax.axhline(10, color="grey", linestyle=":", label="the paper's 90 % reduction")
    return finish(fig, ax, folder / f"sauron-budget-{dataset}.png", title=f"{dataset}: Sauron's FLOPs against its budget",
                  xlabel="epoch", ylabel="FLOPs kept after the epoch (%)", legend_size=7)


def main(argv=None) -> int:
    from medslim._io import write_json
    from medslim.cost.measurement import environment

    args = parse_args(argv)
    out = Path(args.out)
    rows = []
    for seed in args.seeds:
        runs = [trained_variant(args.dataset, seed, name, args, overrides)
                for name, overrides in variants(args.dataset, seed, args).items()]
        if "uniform" in args.variants:
            runs.append(uniform_run(args.dataset, seed, args))
        found = recorded_rows(args.dataset, seed, Path(args.recorded)) + [
            row(r, args) for r in runs if (r / "results.json").exists()]
        rows += with_drops(found + earlier_rows(args.dataset, seed, out, found))
    if not rows:
        raise SystemExit("no finished runs to report; train them first (run without --report-only)")
    print_table(args.dataset, rows)
    report = earlier_report(out)
    merged = merged_rows(report.get(args.dataset, {}).get("rows", []), rows)
    report[args.dataset] = {"rows": merged, "plot": plot(args.dataset, merged, out.parent)}
    report["environment"] = environment()
    write_json(out, report)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
