"""Scale-space hypernetworks against fixed and stochastic U-Nets (issue 5).

Per dataset and seed, every model shares the data split, the primary U-Net
(constant width across levels, resize-by-phi downsampling, instance norm) and
the training settings of the ``kvasir-sshn`` / ``hippocampus-sshn`` configs,
with ``--epochs`` epochs and the final weights kept (``train.keep: last``):

- ``sshn``: one hypernetwork, phi ~ U(0, 0.5) per minibatch;
- ``sshn-nonorm``: the same without normalisation layers (the measured
  alternative to predicting instance-norm affines);
- ``sshn-unscaled``: the same without dividing the hypernetwork's last
  features by their count (``scale_features: false``);
- ``sshn-narrow``: the same with phi ~ U(0.2, 0.5): with constant widths the
  factors below 0.2 save few FLOPs, so the narrower range gives up little of
  the curve for fewer resolutions to share the weights between;
- ``stochastic-narrow``: the Stochastic U-Net over the same U(0.2, 0.5);
- ``sshn-wide``: the same hypernetwork over U(0.2, 0.6), so that 0.5 (where the
  fixed U-Net is the plain halving one) lies inside the range, not at its edge;
- ``sshn-lowlr-narrow``: ``sshn-narrow`` with Adam at 3e-4 instead of the
  configs' 1e-3 (the reference's suggested 1e-4 to 3e-4 for hypernetworks);
- ``stochastic``: one U-Net whose weights serve every phi, phi ~ U(0, 0.5);
- ``fixed``: one U-Net per phi in ``--fixed-phis``.

Then SSHN and Stochastic are swept over ``--phis`` (default 20 factors in the
training range, plus out-of-range ones) on the test split: Dice, HD95, FLOPs and ONNX
Runtime latency (1 thread, batch 1) of the exported plain U-Net at each phi;
the fixed U-Nets are measured the same way at their phi. The default
``medslim sshn sweep`` (20 factors, validation split) is timed on seed 0.
Finished runs and sweeps are reused, so an interrupted benchmark continues
(a cached sweep keeps the factors it was measured at).
Prints a table, writes JSON and a Dice-vs-FLOPs plot.

    python benchmarks/sshn.py --dataset kvasir --seeds 0 1 2
    python benchmarks/sshn.py --dataset kvasir --seeds 0 --models fixed --fixed-phis 0.1 0.3  # part of it
    python benchmarks/sshn.py --dataset kvasir --seeds 0 1 2 --report-only

``--fixed-from REPORT`` compares against the fixed U-Nets of an earlier
report instead of training its own: the budget-matched comparison, where the
hypernetwork trains for more epochs (up to the 2x wall time the target
allows; the paper's SSHN costs about 1.8x one U-Net) than the fixed U-Nets
it is held against:

    python benchmarks/sshn.py --dataset kvasir --seeds 0 1 2 --models sshn-narrow --epochs 54 \
        --runs benchmarks/runs/sshn-e54 --out benchmarks/results/sshn-kvasir-e54.json \
        --fixed-from benchmarks/results/sshn-kvasir-e30.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _merge import earlier_report  # noqa: E402

SWEPT = ("sshn", "stochastic", "sshn-nonorm", "sshn-unscaled", "sshn-narrow", "stochastic-narrow",
         "sshn-lowlr-narrow", "sshn-wide")
CONFIGS = {"kvasir": "kvasir-sshn", "hippocampus": "hippocampus-sshn"}
MODELS = ("sshn", "sshn-nonorm", "sshn-unscaled", "sshn-narrow", "stochastic", "stochastic-narrow",
          "sshn-lowlr-narrow", "sshn-wide", "fixed")
NARROW_RANGE = [0.2, 0.5]
WIDE_RANGE = [0.2, 0.6]
LOW_LR = 3e-4  # sshn-lowlr-narrow's learning rate
SWEEP = "0.025:0.5:20"
OUTSIDE = (0.6, 0.7, 0.8, 1.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=list(CONFIGS), default="kvasir")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", choices=MODELS, default=["sshn", "stochastic", "fixed"])
    p.add_argument("--fixed-phis", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads for training")
    p.add_argument("--data", help="folder holding kvasir-seg/ and hippocampus/")
    p.add_argument("--runs", default="benchmarks/runs/sshn")
    p.add_argument("--out", default=None, help="default benchmarks/results/sshn-DATASET.json")
    p.add_argument("--phis", default=SWEEP,
                   help=f"factors swept in the training range, start:stop:count (default {SWEEP}); "
                        f"{', '.join(map(str, OUTSIDE))} outside it are always added")
    p.add_argument("--repeats", type=int, default=20, help="ONNX Runtime timing repeats per phi")
    p.add_argument("--report-only", action="store_true", help="train nothing; sweep and report")
    p.add_argument("--train-only", action="store_true", help="train; sweep and report later")
    p.add_argument("--full-size", action="store_true", help="Kvasir-SEG at 256x256 (for GPUs)")
    p.add_argument("--fixed-from", metavar="REPORT",
                   help="take the fixed U-Nets (Dice, HD95, FLOPs, latency; not their training seconds) from "
                        "this earlier report instead of training and measuring them here; their factors "
                        "replace --fixed-phis")
    args = p.parse_args(argv)
    if args.fixed_from:
        if "fixed" in args.models and not args.report_only:
            p.error("--fixed-from takes the fixed U-Nets from REPORT; drop 'fixed' from --models")
        args.fixed_from = fixed_baseline(Path(args.fixed_from), args.dataset, p.error)
        args.fixed_phis = args.fixed_from["fixed_phis"]
    args.out = args.out or f"benchmarks/results/sshn-{args.dataset}.json"
    from medslim.errors import ConfigError

    try:  # before any training: a bad list would otherwise fail only when the first sweep starts
        sweep_phis(args.phis)
    except ConfigError as err:
        p.error(str(err))
    return args


def fixed_baseline(path: Path, dataset: str, error) -> dict:
    """The fixed U-Nets of an earlier report: per seed, their measured rows."""
    try:
        report = json.loads(path.read_text())
        per_seed = {s["seed"]: dict(s.get("fixed") or {}) for s in report["raw"]["seeds"]}
        epochs = report["epochs"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        error(f"--fixed-from {path}: not a report of this benchmark ({type(err).__name__}: {err})")
    if report.get("dataset") != dataset:
        error(f"--fixed-from {path}: a report on {report.get('dataset')}, not {dataset}")
    if not any(per_seed.values()):
        error(f"--fixed-from {path}: it holds no fixed U-Net")
    phis = sorted({float(phi) for fixed in per_seed.values() for phi in fixed})
    return {"path": str(path), "epochs": epochs, "fixed_phis": phis, "seeds": per_seed}


def with_fixed_from(seeds: list[dict], baseline: dict) -> list[dict]:
    """Each seed's own sweeps beside the fixed U-Nets of the baseline report.

    Their training seconds are left behind: measured on another day, on this shared machine they do not
    compare with this run's (time a fixed U-Net beside the hypernetwork for the ratio).
    """
    return [{**s, "fixed": dict(baseline["seeds"].get(s["seed"], {})),
             "train_seconds": {k: v for k, v in s["train_seconds"].items() if not k.startswith("fixed-")}}
            for s in seeds]


# ---------------------------------------------------------------- training

def run_name(dataset: str, model: str, seed: int, phi: float | None = None) -> str:
    return f"{dataset}-{model}{'' if phi is None else f'-{phi:g}'}-s{seed}"


def train(dataset: str, model: str, seed: int, args, phi: float | None = None) -> Path:
    from medslim.config import load_config
    from medslim.jobs import train_run
    from medslim.runs import resumable

    name = run_name(dataset, model, seed, phi)
    run = Path(args.runs) / name
    if (run / "results.json").exists() or args.report_only:
        return run
    overrides = [f"seed={seed}", f"name={name}", f"output={args.runs}", f"train.epochs={args.epochs}",
                 f"train.threads={args.threads}", "train.keep=last"]
    if args.full_size and dataset == "kvasir":
        overrides.append("data.size=[256,256]")
    if model == "sshn-lowlr-narrow":
        overrides.append(f"train.lr={LOW_LR}")
    cfg = load_config(CONFIGS[dataset], overrides)
    cfg["model"] = model_spec(cfg["model"], model, phi)
    resume = resumable(args.runs, name)
    print(f"training {name}", flush=True)
    return train_run(cfg, data_path=args.data, resume=resume, progress=False)


def model_spec(sshn: dict, model: str, phi: float | None) -> dict:
    """The model section for each row, from the SSHN config's primary U-Net."""
    unet = {k: v for k, v in sshn.items() if k not in ("name", "phi_range", "hidden", "phi")}
    unet.update(name="unet", downsampling="resize")
    low, high = train_range(model, sshn["phi_range"])
    if model == "sshn":
        return sshn
    if model == "sshn-nonorm":
        return {**sshn, "norm": "none"}
    if model == "sshn-unscaled":
        return {**sshn, "scale_features": False}
    if model in ("sshn-narrow", "sshn-lowlr-narrow", "sshn-wide"):
        return {**sshn, "phi_range": [low, high]}
    if model.startswith("stochastic"):
        return {**unet, "phi": (low + high) / 2, "phi_range": [low, high]}
    return {**unet, "phi": phi}


def train_all(args) -> None:
    for seed in args.seeds:
        for model in args.models:
            if model == "fixed":
                for phi in args.fixed_phis:
                    train(args.dataset, "fixed", seed, args, phi)
            else:
                train(args.dataset, model, seed, args)


# ---------------------------------------------------------------- measuring

def sweep_phis(spec: str = SWEEP) -> list[float]:
    from medslim.sshn_jobs import parse_phis

    return list(dict.fromkeys([*parse_phis(spec), *OUTSIDE]))  # each once, in the order first named


def sweep_hyper(run: Path, args) -> dict:
    """The SSHN sweep on the test split (cached in the run folder)."""
    from medslim.sshn_jobs import sweep_run

    cached = run / "sweep-test.json"
    if cached.exists():
        return json.loads(cached.read_text())
    print(f"sweeping {run.name}", flush=True)
    return sweep_run(run, sweep_phis(args.phis), "test", threads=1, repeats=args.repeats, data_path=args.data)


def sweep_unet(run: Path, phis: list[float], args) -> dict:
    """A plain or stochastic U-Net measured at each phi like the SSHN exports (cached)."""
    cached = run / "sweep-test.json"
    if cached.exists():
        return json.loads(cached.read_text())
    import tempfile

    from medslim.artifacts import load
    from medslim.data.splits import load_split
    from medslim.jobs import load_data, read_run_config
    from medslim.sshn_jobs import measure_unet

    print(f"measuring {run.name}", flush=True)
    cfg = read_run_config(run)
    net = load(run)
    data, _ = load_data(cfg, args.data, load_split(run / "split.json"))
    shape = net.medslim_manifest["extra"]["input_shape"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for phi in phis:
            net.phi = phi  # the stochastic U-Net evaluates at net.phi
            net.set_phi(phi)
            rows.append(measure_unet(net, phi, data, cfg["eval"], "test", shape, 1, args.repeats, Path(tmp)))
    report = {"run": str(run), "split": "test", "rows": rows}
    from medslim._io import write_json

    write_json(cached, report)
    return report


def time_default_sweep(run: Path) -> dict:
    """Wall time of the documented command, a fresh process: ``medslim sshn sweep RUN``."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "medslim", "sshn", "sweep", str(run)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"medslim sshn sweep failed: {proc.stderr[-2000:]}")
    inner = json.loads((run / "sweep-val.json").read_text())["seconds"]
    return {"command": f"medslim sshn sweep {run}", "phis": 20, "split": "val",
            "wall_seconds": wall, "measuring_seconds": inner}


# ---------------------------------------------------------------- report

def collect(args) -> dict:
    per_seed = []
    for seed in args.seeds:
        runs = {m: Path(args.runs) / run_name(args.dataset, m, seed)
                for m in SWEPT}
        fixed = {} if args.fixed_from else {phi: Path(args.runs) / run_name(args.dataset, "fixed", seed, phi)
                                            for phi in args.fixed_phis}
        entry = {"seed": seed, "sweeps": {}, "fixed": {}, "train_seconds": {}}
        for model, run in runs.items():
            if not (run / "results.json").exists():
                continue
            entry["train_seconds"][model] = _train_seconds(run)
            entry["sweeps"][model] = (sweep_hyper(run, args) if not model.startswith("stochastic")
                                      else sweep_unet(run, sweep_phis(args.phis), args))["rows"]
        for phi, run in fixed.items():
            if (run / "results.json").exists():
                entry["train_seconds"][f"fixed-{phi:g}"] = _train_seconds(run)
                entry["fixed"][f"{phi:g}"] = sweep_unet(run, [phi], args)["rows"][0]
        per_seed.append(entry)
    return {"seeds": per_seed}


def merged_seeds(old: list[dict], new: list[dict]) -> list[dict]:
    """Per seed, the earlier sweeps, fixed U-Nets and training times, with this run's on top."""
    by_seed = {s["seed"]: s for s in old}
    for s in new:
        prev = by_seed.get(s["seed"], {})
        by_seed[s["seed"]] = {"seed": s["seed"], **{part: {**prev.get(part, {}), **s[part]}
                                                    for part in ("sweeps", "fixed", "train_seconds")}}
    return [by_seed[seed] for seed in sorted(by_seed)]


def _train_seconds(run: Path) -> float:
    return json.loads((run / "results.json").read_text())["train_seconds"]


def _at(rows: list[dict], phi: float) -> dict | None:
    return next((r for r in rows if abs(r["phi"] - phi) < 1e-9), None)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v == v]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def comparison(data: dict, fixed_phis: list[float]) -> list[dict]:
    """Per fixed phi: Dice of Fixed, SSHN, Stochastic, SSHN without norm (mean, sd over seeds)."""
    rows = []
    for phi in fixed_phis:
        row = {"phi": phi}
        for name in ("fixed", *SWEPT):
            dice, hd95, flops, ort = [], [], [], []
            for s in data["seeds"]:
                r = s["fixed"].get(f"{phi:g}") if name == "fixed" else _at(s["sweeps"].get(name, []), phi)
                if r:
                    dice.append(r["dice"])
                    hd95.append(r.get("hd95", float("nan")))
                    flops.append(r["flops"])
                    ort.append(r["ort_ms_1t"])
            row[name] = {"dice": _mean_sd(dice), "hd95": _mean_sd(hd95), "n": len(dice),
                         "flops": flops[0] if flops else None,
                         "ort_ms_1t": statistics.median(ort) if ort else None}
        row["sshn_minus_fixed"] = _paired(data, phi, "sshn")
        row["narrow_minus_fixed"] = _paired(data, phi, "sshn-narrow")
        row["narrow_minus_sshn"] = _paired(data, phi, "sshn-narrow", "sshn")
        row["narrow_minus_stochastic_narrow"] = _paired(data, phi, "sshn-narrow", "stochastic-narrow")
        row["lowlr_narrow_minus_fixed"] = _paired(data, phi, "sshn-lowlr-narrow")
        row["lowlr_narrow_minus_narrow"] = _paired(data, phi, "sshn-lowlr-narrow", "sshn-narrow")
        row["wide_minus_fixed"] = _paired(data, phi, "sshn-wide")
        row["wide_minus_narrow"] = _paired(data, phi, "sshn-wide", "sshn-narrow")
        rows.append(row)
    return rows


def _paired(data: dict, phi: float, name: str, base: str = "fixed") -> tuple[float, float]:
    """Dice of ``name`` minus Dice of ``base`` at phi, per seed (mean, sd)."""
    diffs = []
    for s in data["seeds"]:
        b = s["fixed"].get(f"{phi:g}") if base == "fixed" else _at(s["sweeps"].get(base, []), phi)
        h = _at(s["sweeps"].get(name, []), phi)
        if b and h:
            diffs.append(h["dice"] - b["dice"])
    return _mean_sd(diffs)


def train_range(name: str, default: tuple[float, float] = (0.0, 0.5)) -> list[float]:
    """The phi range a swept model was trained over (the configs' [0, 0.5] but for the narrow and wide rows)."""
    if name.endswith("-narrow"):
        return list(NARROW_RANGE)
    return list(WIDE_RANGE) if name.endswith("-wide") else list(default)


def curve(data: dict, name: str) -> list[dict]:
    """Mean Dice per phi over seeds for a swept model."""
    phis = sorted({r["phi"] for s in data["seeds"] for r in s["sweeps"].get(name, [])})
    low, high = train_range(name)
    out = []
    for phi in phis:
        rows = [r for s in data["seeds"] if (r := _at(s["sweeps"].get(name, []), phi))]
        out.append({"phi": phi, "in_range": low - 1e-9 <= phi <= high + 1e-9,
                    "dice": _mean_sd([r["dice"] for r in rows]),
                    "hd95": _mean_sd([r.get("hd95", float("nan")) for r in rows]), "n": len(rows),
                    "flops": rows[0]["flops"], "ort_ms_1t": statistics.median(r["ort_ms_1t"] for r in rows)})
    return out


def training_times(data: dict) -> list[dict]:
    out = []
    for s in data["seeds"]:
        t = s["train_seconds"]
        fixed = [v for k, v in t.items() if k.startswith("fixed-")]
        row = {"seed": s["seed"], **t}
        if "sshn" in t and fixed:
            row["sshn_over_fixed_mean"] = t["sshn"] / statistics.fmean(fixed)
            row["sshn_over_fixed_0.5"] = t["sshn"] / t["fixed-0.5"] if "fixed-0.5" in t else None
            row["sshn_over_fixed_grid"] = t["sshn"] / sum(fixed)
        if "sshn-narrow" in t and "fixed-0.5" in t:
            row["narrow_over_fixed_0.5"] = t["sshn-narrow"] / t["fixed-0.5"]
        out.append(row)
    return out


def print_report(report: dict) -> None:
    print(f"\nSSHN vs Fixed vs Stochastic, {report['dataset']}, test Dice mean (sd) over seeds "
          f"{report['seeds_used']}")
    if report.get("fixed_from"):
        print(f"(trained {report['epochs']} epochs; the fixed U-Nets, trained {report['fixed_epochs']} epochs, "
              f"are those of {report['fixed_from']}; their training seconds are not compared)")
    rows = report["comparison"]
    shown = [n for n in ("fixed", *SWEPT) if any(r[n]["n"] for r in rows)]
    diffs = [d for d in ("sshn_minus_fixed", "narrow_minus_fixed", "narrow_minus_sshn",
                         "narrow_minus_stochastic_narrow", "lowlr_narrow_minus_fixed", "lowlr_narrow_minus_narrow",
                         "wide_minus_fixed", "wide_minus_narrow")
             if any(r[d][0] == r[d][0] for r in rows)]  # NaN where no seed has both
    print(f"{'phi':>5} {'GFLOPs':>7} {'ORT ms':>7} " + " ".join(f"{n:>19}" for n in shown)
          + " " + " ".join(f"{d:>18}" for d in diffs))
    for r in rows:
        cells = [f"{r[n]['dice'][0]:.4f} ({r[n]['dice'][1]:.3f}) n={r[n]['n']}" for n in shown]
        print(f"{r['phi']:5.2f} {(r['fixed']['flops'] or 0) / 1e9:7.3f} {r['fixed']['ort_ms_1t'] or 0:7.2f} "
              + " ".join(f"{c:>19}" for c in cells) + " "
              + " ".join(f"{r[d][0]:+.4f} ({r[d][1]:.3f})".rjust(18) for d in diffs))
    for name in ("sshn", "sshn-narrow", "stochastic-narrow", "sshn-lowlr-narrow", "sshn-wide"):
        if not report["curves"].get(name):
            continue
        print(f"\n{name} sweep (test, mean over seeds), trained over phi {train_range(name)}:")
        print(f"{'phi':>6} {'in range':>8} {'Dice':>15} {'HD95':>8} {'GFLOPs':>7} {'ORT ms':>7}")
        for r in report["curves"][name]:
            print(f"{r['phi']:6.3f} {'yes' if r['in_range'] else 'NO':>8} "
                  f"{r['dice'][0]:.4f} ({r['dice'][1]:.3f}) {r['hd95'][0]:8.2f} {r['flops'] / 1e9:7.3f} "
                  f"{r['ort_ms_1t']:7.2f}")
    print("\ntraining seconds:")
    for t in report["training_times"]:
        print("  " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.items()))
    if report.get("default_sweep"):
        d = report["default_sweep"]
        print(f"\n`{d['command']}`: {d['wall_seconds']:.1f} s wall ({d['measuring_seconds']:.1f} s measuring)")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, marker in (("sshn", "o"), ("stochastic", "^"), ("sshn-nonorm", "v"), ("sshn-unscaled", "<"),
                         ("sshn-narrow", "D"), ("stochastic-narrow", "x"), ("sshn-lowlr-narrow", "P"),
                         ("sshn-wide", "*")):
        pts = report["curves"].get(name) or []
        inside = [p for p in pts if p["in_range"]]
        if inside:
            seeds = max(p["n"] for p in inside)
            ax.plot([p["flops"] / 1e9 for p in inside], [p["dice"][0] for p in inside], marker=marker,
                    ms=3, label=f"{name} (phi {inside[0]['phi']:g}-{inside[-1]['phi']:g}, "
                                f"{seeds} seed{'s' if seeds > 1 else ''})")
    fixed = [r for r in report["comparison"] if r["fixed"]["n"]]
    ax.errorbar([r["fixed"]["flops"] / 1e9 for r in fixed], [r["fixed"]["dice"][0] for r in fixed],
                yerr=[r["fixed"]["dice"][1] for r in fixed], fmt="s", color="k", label="fixed U-Nets")
    for r in fixed:
        ax.annotate(f"{r['phi']:g}", (r["fixed"]["flops"] / 1e9, r["fixed"]["dice"][0]), fontsize=7,
                    textcoords="offset points", xytext=(4, -8))
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel("test Dice")
    fixed_epochs = report.get("fixed_epochs", report["epochs"])
    budget = (f"{report['epochs']} epochs" if fixed_epochs == report["epochs"]
              else f"{report['epochs']} epochs (fixed U-Nets {fixed_epochs})")
    ax.set_title(f"{report['dataset']}, {budget}: one SSHN vs {len(fixed)} fixed U-Nets")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_same_fixed_unets(previous: dict, args, out: Path) -> None:
    """Refuse to merge into a report whose fixed U-Nets come from elsewhere: the rows and the epochs the
    report names for them would be mixed up. (A report of other epochs is replaced, not merged.)"""
    def where(path):
        return str(Path(path).resolve()) if path else None

    theirs, ours = previous.get("fixed_from"), args.fixed_from["path"] if args.fixed_from else None
    if previous and previous.get("epochs") == args.epochs and where(theirs) != where(ours):
        raise SystemExit(f"{out}: its fixed U-Nets come from {theirs or 'its own runs'}, this run's from "
                         f"{ours or 'its own runs'}; give the same --fixed-from or another --out")


def main(argv=None) -> int:
    args = parse_args(argv)
    check_same_fixed_unets(earlier_report(Path(args.out)), args, Path(args.out))  # before hours of training
    if not args.report_only:
        train_all(args)
    if args.train_only:
        return 0
    fresh = collect(args)["seeds"]
    out = Path(args.out)
    previous = earlier_report(out)
    check_same_fixed_unets(previous, args, out)
    if previous and previous.get("epochs") != args.epochs:
        print(f"{out}: its results were trained for {previous.get('epochs')} epochs, not {args.epochs}; "
              "they are replaced")
        previous = {}
    data = {"seeds": merged_seeds(previous.get("raw", {}).get("seeds", []), fresh)}
    if args.fixed_from:
        data["seeds"] = with_fixed_from(data["seeds"], args.fixed_from)
        missing = [s["seed"] for s in data["seeds"] if not s["fixed"]]
        if missing:
            print(f"note: {args.fixed_from['path']} has no fixed U-Net for seed(s) {missing}; "
                  "they are left out of the paired differences")
    fixed_phis = [*previous.get("fixed_phis", [])]
    fixed_phis += [phi for phi in args.fixed_phis if phi not in fixed_phis]
    # only factors some seed has a fixed U-Net at: a report of other models adds no empty rows
    fixed_phis = [phi for phi in fixed_phis if any(f"{phi:g}" in s["fixed"] for s in data["seeds"])]
    seed0 = Path(args.runs) / run_name(args.dataset, "sshn", args.seeds[0])
    report = {"dataset": args.dataset, "seeds_used": [s["seed"] for s in data["seeds"] if s["sweeps"]],
              "epochs": args.epochs, "fixed_phis": fixed_phis,
              "fixed_epochs": args.fixed_from["epochs"] if args.fixed_from else args.epochs,
              "fixed_from": args.fixed_from["path"] if args.fixed_from else None,
              "comparison": comparison(data, fixed_phis),
              "curves": {m: curve(data, m) for m in SWEPT},
              "training_times": training_times(data), "raw": data}
    report["sshn_curve"] = report["curves"]["sshn"]
    if args.dataset == "kvasir" and (seed0 / "results.json").exists():
        report["default_sweep"] = time_default_sweep(seed0)
    elif "default_sweep" in previous:
        report["default_sweep"] = previous["default_sweep"]
    from medslim._io import write_json
    from medslim.cost.measurement import environment

    report["environment"] = environment()
    report["date"] = time.strftime("%Y-%m-%d")
    write_json(out, report)
    plot(report, out.with_suffix(".png"))
    print_report(report)
    print(f"\nwrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
