"""Why L1, FPGM and HRank collapse to Dice 0 on Kvasir-SEG: the layer feeding the head.

In ``benchmarks/pruning.py`` the post-hoc L1, FPGM and HRank rows at Sauron's
FLOPs score Dice 0.000 in 6 of 9 cuts (the network predicts no polyp) while
random pruning keeps 0.66-0.75. A look at where the damage comes from found the last decoder
convolution, the one whose channels the 1x1 output head reads: these criteria
remove channels the head relies on. This benchmark re-runs those rows under the
same protocol (same baseline, same FLOPs, 3 fine-tuning epochs at lr / 10) with
that one layer kept whole (``medslim prune --keep LAYER``), and prints the
validation Dice right after the cut and the test Dice after fine-tuning, beside
the rows without it.

    python benchmarks/keep_head_input.py --seeds 0 1 2 --methods l1 fpgm hrank

Runs go to ``benchmarks/runs/<method>-keephead-kvasir-s<seed>-f<ratio>``;
finished runs are reused. Writes ``benchmarks/results/keep-head-input.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def head_input_layers(model, example) -> list[str]:
    """The producers of the channels that the output head reads (found from the traced graph)."""
    from medslim.pruning import DependencyGraph

    heads = {n for n, _ in model.named_modules() if n.startswith("heads")}
    graph = DependencyGraph(model, example)
    return sorted({p.module for g in graph.groups if any(c.module in heads for c in g.consumers)
                   for p in g.producers})


def sauron_ratio(runs: Path, dataset: str, seed: int) -> float:
    from pruning import model_size

    sauron = json.loads((runs / f"sauron-{dataset}-s{seed}" / "results.json").read_text())
    return sauron["flops"] / model_size(runs / f"baseline-{dataset}-s{seed}")["flops"]


def one_row(run: Path) -> dict:
    pruning = json.loads((run / "pruning.json").read_text())
    test = json.loads((run / "results.json").read_text())["test"]
    return {"run": run.name, "kept_layers": pruning.get("kept_layers", []),
            "val_right_after_cut": (pruning.get("val_before_finetune") or [None])[0],
            "test_dice": test["dice"], "flops_ratio": pruning["flops_ratio"],
            "params_after": pruning["params_after"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", default=["l1", "fpgm", "hrank"])
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--runs", default="benchmarks/runs")
    p.add_argument("--data", help="folder holding kvasir-seg/")
    p.add_argument("--out", default="benchmarks/results/keep-head-input.json")
    args = p.parse_args(argv)

    import torch

    from medslim._io import write_json
    from medslim.artifacts import load
    from medslim.cost.measurement import environment
    from medslim.jobs import prune_run

    torch.set_num_threads(1)
    runs, rows = Path(args.runs), []
    for seed in args.seeds:
        base = runs / f"baseline-kvasir-s{seed}"
        model = load(base)
        keep = head_input_layers(model, torch.zeros(*model.medslim_manifest["extra"]["input_shape"]))
        ratio = round(sauron_ratio(runs, "kvasir", seed), 3)
        for method in args.methods:
            name = f"{method}-keephead-kvasir-s{seed}-f{ratio:.3f}"
            if not (runs / name / "results.json").exists():
                prune_run(base, method, flops_ratio=ratio, finetune_epochs=args.finetune_epochs, name=name,
                          output=runs, data_path=args.data, progress=False, measure=False, keep=keep)
            for run in (runs / f"{method}-kvasir-s{seed}-f{ratio:.3f}", runs / name):
                if (run / "results.json").exists():
                    rows.append({"seed": seed, "method": method, **one_row(run)})
    print(f"{'run':36s} {'kept layers':14s} {'val after cut':>13s} {'test Dice':>9s} {'FLOPs':>6s}")
    for r in rows:
        cut = r["val_right_after_cut"]
        print(f"{r['run']:36s} {','.join(r['kept_layers']) or '-':14s} "
              f"{('%.3f' % cut) if cut is not None else '-':>13s} {r['test_dice']:9.3f} {r['flops_ratio']:6.3f}")
    write_json(Path(args.out), {"rows": rows, "seeds": args.seeds, "finetune_epochs": args.finetune_epochs,
                                "environment": environment()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
