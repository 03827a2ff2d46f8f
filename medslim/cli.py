"""The ``medslim`` command. Only argparse is imported up front so ``--help`` is instant;
each command imports what it needs when it runs."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

EXAMPLES = {
    "train": "medslim train kvasir-unet --data ../shared/data -o train.epochs=5 --name my-run",
    "lowres": "medslim train kvasir-unet --input-size 32 --output-size 256 --name small-input",
    "evaluate": "medslim evaluate runs/my-run --split test",
    "cost": "medslim cost runs/my-run --threads 1 2",
    "export": "medslim export runs/my-run --output my-run.onnx",
    "prune": "medslim prune runs/my-run --method taylor_gn --flops-ratio 0.25 --finetune-epochs 5",
    "transfer": "medslim train pneumoniamnist-vgg --pretrained source/ --freeze-backbone --name head; "
                "medslim prune runs/head --method channel_scaling --params-ratio 0.05",
    "sshn": "medslim sshn train kvasir-sshn --name hyper; medslim sshn sweep runs/hyper; "
            "medslim sshn export runs/hyper --phi 0.3",
    "compare": "medslim compare kvasir-methods --data ../shared/data   (or your own compare YAML)",
    "report": "medslim report runs/kvasir-methods   |   medslim report runs/a runs/b --output my-report",
    "data": "medslim data list   |   medslim data fetch hippocampus",
    "demo": "medslim demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medslim",
        description="Make medical-imaging CNNs small and fast, and measure the trade-off.",
        epilog="examples:\n" + "\n".join(f"  {v}" for v in EXAMPLES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_train, _add_evaluate, _add_cost, _add_export, _add_prune, _add_sshn, _add_compare,
                _add_report, _add_data, _add_demo):
        add(sub)  # one function per command, in the order --help lists them
    return parser


def _add_train(sub) -> None:
    p = _sub(sub, "train", "train a model from a YAML config (a path or a built-in name)")
    _training_arguments(p, "kvasir-unet, kvasir-demo, hippocampus-unet, pneumoniamnist-vgg")
    p.add_argument("--prune", metavar="METHOD",
                   help="prune while training: sauron (options with -o prune.lam=0.5 ...)")
    p.add_argument("--input-size", type=int, nargs="+", metavar="N",
                   help="train on images this small (e.g. 32) against masks of --output-size")
    p.add_argument("--output-size", type=int, nargs="+", metavar="N",
                   help="the mask size the model predicts (e.g. 256), a multiple of --input-size")
    p.add_argument("--pretrained", metavar="WEIGHTS",
                   help="start from these weights (a medslim model folder, .safetensors, or a PyTorch "
                        "state dict such as torchvision's vgg16_bn); the classifier head starts fresh")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="train only the classifier head (with --pretrained: transfer learning)")
    p.add_argument("--target-norm-stats", action="store_true",
                   help="with --freeze-backbone: re-estimate the frozen batch-norm statistics on the "
                        "training images once before training (AdaBN); no weight changes")
    p.add_argument("--head", choices=["jnet", "bilinear"],
                   help="how --input-size logits reach --output-size (default jnet: a learned "
                        "head, 87 parameters per class at 8x)")


def _add_evaluate(sub) -> None:
    p = _sub(sub, "evaluate", "evaluate a finished run on its saved split")
    p.add_argument("run", type=Path)
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--data", help="dataset folder, if it moved since training")


def _add_cost(sub) -> None:
    p = _sub(sub, "cost", "parameters, FLOPs, latency (PyTorch, ONNX Runtime) and memory of a model")
    p.add_argument("model", type=Path, help="run folder or model folder")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX export and ONNX Runtime timing")
    p.add_argument("--input-shape", type=int, nargs="+", help="e.g. 1 3 128 128 (default: recorded)")


def _add_export(sub) -> None:
    p = _sub(sub, "export", "export a model to ONNX, checked against PyTorch")
    p.add_argument("model", type=Path, help="run folder or model folder")
    p.add_argument("--output", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--input-shape", type=int, nargs="+")


def _add_prune(sub) -> None:
    p = _sub(sub, "prune", "prune a trained run's model to a FLOPs, parameter or latency target; writes a new run")
    p.add_argument("run", type=Path)
    p.add_argument("--method", required=True,
                   help="l1, l2, taylor, taylor_gate, taylor_gn, taylor_rand, fpgm, hrank, slimming, "
                        "bn_stats, random, uniform (same fraction everywhere, trained from scratch), "
                        "or channel_scaling (a classifier's frozen backbone: trained scales select "
                        "its channels, in rounds; the target is optional)")
    p.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the method, e.g. --option batches=16 (taylor, hrank) or "
                        "--option lam=1e-3 --option threshold=0.05 --option rounds=10 "
                        "--option epochs=3 (channel_scaling)")
    p.add_argument("--flops-ratio", type=float, help="fraction of FLOPs to keep, e.g. 0.25")
    p.add_argument("--params-ratio", type=float, help="fraction of parameters to keep")
    p.add_argument("--latency-ms", type=float, help="or: a PyTorch latency target at batch 1, 1 thread")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tuning epochs after each step")
    p.add_argument("--finetune-lr", type=float, help="default: the run's learning rate / 10")
    p.add_argument("--schedule", choices=["oneshot", "iterative"], default="oneshot")
    p.add_argument("--steps", type=int, default=4, help="steps of the iterative schedule")
    p.add_argument("--dice-tolerance", type=float,
                   help="iterative: stop before the step whose validation Dice (AUC) falls more than "
                        "this below the unpruned model's, e.g. 0.01")
    p.add_argument("--scope", choices=["global", "local"], default="global")
    p.add_argument("--max-fraction", type=float, default=0.9, help="the most one layer may lose")
    p.add_argument("--round-to", type=int, default=1, help="keep widths multiples of this")
    p.add_argument("--keep", action="append", default=[], metavar="MODULE",
                   help="a layer whose output channels are never pruned, by module path "
                        "(e.g. decoder.3.3, the layer feeding a U-Net's head); repeatable")
    p.add_argument("--name", help="name of the new run (default: RUN-METHOD-fRATIO)")
    p.add_argument("--output", help="folder for the new run (default: beside RUN)")
    p.add_argument("--data", help="dataset folder, if it moved since training")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-cost", action="store_true",
                   help="skip the cost measurement (parameters, FLOPs, latency, memory: cost.json)")
    p.add_argument("--quiet", action="store_true")


def _add_sshn(sub) -> None:
    p = _sub(sub, "sshn", "scale-space hypernetworks: train one, sweep phi, export a U-Net")
    ssub = p.add_subparsers(dest="sshn_command", metavar="ACTION", required=True)
    q = ssub.add_parser("train", help="train a hypernetwork over a range of phi (config model: sshn)")
    _training_arguments(q, "kvasir-sshn, hippocampus-sshn")
    q = ssub.add_parser("sweep", help="Dice, HD95, FLOPs and ONNX Runtime latency of the U-Net at each phi")
    q.add_argument("run", type=Path)
    q.add_argument("--phis", help="START:STOP:COUNT or a comma list (default: 20 factors across the "
                                  "training range, from 0.05 where it starts at 0)")
    q.add_argument("--split", default="val", choices=["val", "test"],
                   help="choose phi on val (default), report on test")
    q.add_argument("--threads", type=int, default=1, help="threads for the latency (default 1)")
    q.add_argument("--repeats", type=int, default=10)
    q.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime latency")
    q.add_argument("--no-hd95", action="store_true", help="Dice only (faster)")
    q.add_argument("--data", help="dataset folder, if it moved since training")
    q = ssub.add_parser("export", help="write a run folder with the plain U-Net at one phi")
    q.add_argument("run", type=Path)
    q.add_argument("--phi", type=float, required=True)
    q.add_argument("--name", help="name of the new run (default: RUN-phiPHI)")
    q.add_argument("--output", help="folder for the new run (default: beside RUN)")
    q.add_argument("--overwrite", action="store_true")
    q.add_argument("--data", help="dataset folder, if it moved since training")


def _add_compare(sub) -> None:
    p = _sub(sub, "compare", "make and measure many models of one dataset (a compare YAML); "
                             "table, Pareto fronts and report")
    p.add_argument("config", help="compare YAML file, or a built-in: kvasir-methods, kvasir-demo, hippocampus-methods")
    p.add_argument("-o", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the compare config, e.g. -o output=/tmp/runs "
                        "-o measure.threads=2")
    p.add_argument("--data", help="dataset folder, or a folder that contains it")
    p.add_argument("--no-report", action="store_true", help="the table only, no plots or HTML")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def _add_report(sub) -> None:
    p = _sub(sub, "report", "plots and a self-contained HTML report from comparison or run folders")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                   help="comparison folders (medslim compare) or finished run folders, of one dataset")
    p.add_argument("--output", type=Path,
                   help="folder for the report (default for one comparison: its report/ folder)")


def _add_data(sub) -> None:
    p = _sub(sub, "data", "list known datasets or download one")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = dsub.add_parser("list", help="where each dataset is found")
    q.add_argument("--data", help="an extra folder to look in")
    q = dsub.add_parser("fetch", help="download an official archive, check it, unpack it to the cache")
    q.add_argument("name")
    q.add_argument("--cache", type=Path, help="cache folder (default: $MEDSLIM_CACHE or ~/.cache/medslim/data)")
    q.add_argument("--url", help="a mirror of the official archive")
    q.add_argument("--checksum", help="expected checksum, e.g. md5:... or sha256:...")
    q.add_argument("--force", action="store_true", help="download again even if cached")


def _add_demo(sub) -> None:
    p = _sub(sub, "demo", "train, evaluate and measure a small U-Net on Kvasir-SEG (under 10 min on 2 CPU cores)")
    p.add_argument("--data", help="dataset folder, or a folder that contains kvasir-seg/")
    p.add_argument("--output", default="runs")
    p.add_argument("--epochs", type=int, help="override the demo's epoch count")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    from medslim.errors import MedslimError

    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return COMMANDS[args.command](args) or 0
    except MedslimError as err:
        print(f"medslim: error: {err}", file=sys.stderr)
        return err.exit_code
    except FloatingPointError as err:
        print(f"medslim: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medslim: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """medslim's own warnings as one line, like its errors; other libraries' as Python prints them."""
    from medslim.errors import MedslimWarning

    if issubclass(category, MedslimWarning):
        print(f"medslim: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _training_arguments(p: argparse.ArgumentParser, builtins: str) -> None:
    p.add_argument("config", help=f"YAML file, or a built-in: {builtins}")
    p.add_argument("-o", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. -o train.epochs=5 -o data.size=[64,64]")
    p.add_argument("--name", help="run name (folder under the output folder)")
    p.add_argument("--output", help="folder for runs (default: runs)")
    p.add_argument("--data", help="dataset folder, or a folder that contains it")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of this --name")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run of this name once the new one succeeds")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def cmd_train(args, train=None) -> int:
    from medslim.config import load_config
    from medslim.jobs import train_run

    prune = getattr(args, "prune", None)
    overrides = [*args.overrides, *([f"prune.method={prune}"] if prune else [])]
    cfg = load_config(args.config, overrides)
    if getattr(args, "pretrained", None):
        cfg["train"]["pretrained"] = str(Path(args.pretrained).absolute())
    if getattr(args, "freeze_backbone", False):
        cfg["train"]["freeze_backbone"] = True
    if getattr(args, "target_norm_stats", False):
        cfg["train"]["frozen_norm_stats"] = "target"
    cfg = _low_resolution(cfg, args)
    if args.name:
        cfg["name"] = args.name
    if args.output:
        cfg["output"] = args.output
    if args.resume and not cfg.get("name"):
        from medslim.errors import ConfigError

        raise ConfigError("--resume needs the --name of the run to continue")
    run = (train or train_run)(cfg, data_path=args.data, resume=args.resume, overwrite=args.overwrite,
                               progress=not args.quiet)
    _print_results(json.loads((run / "results.json").read_text())["test"], f"test metrics ({run})")
    print(f"run folder: {run}")
    return 0


def _low_resolution(cfg: dict, args) -> dict:
    sizes = getattr(args, "input_size", None), getattr(args, "output_size", None)
    head = getattr(args, "head", None)
    if sizes == (None, None) and head is None:
        return cfg
    from medslim.config import with_low_resolution
    from medslim.errors import ConfigError

    if None in sizes:
        raise ConfigError("--input-size and --output-size go together (and --head needs both)")
    return with_low_resolution(cfg, *sizes, head=head)


def cmd_evaluate(args) -> int:
    from medslim.jobs import evaluate_run

    metrics = evaluate_run(args.run, args.split, args.data)
    _print_results(metrics, f"{args.split} metrics ({args.run})")
    _note_if_hypernetwork(args.run)
    return 0


def cmd_cost(args) -> int:
    from medslim.jobs import cost_run

    report = cost_run(args.model, args.threads, args.repeats, not args.no_onnx, args.input_shape)
    _print_results(report, f"cost of {args.model}")
    _note_if_hypernetwork(args.model)
    return 0


def cmd_export(args) -> int:
    from medslim.jobs import export_run

    info = export_run(args.model, args.output, args.input_shape)
    print(f"wrote {info['path']} (max |ONNX - PyTorch| = {info['max_abs_diff']:.2e})")
    _note_if_hypernetwork(args.model)
    return 0


def _note_if_hypernetwork(folder: str | Path) -> None:
    """A hypernetwork run answers at one phi, weight generation included: say which, and what to use."""
    from medslim.models.sshn import forward_phi

    try:
        spec = json.loads((Path(folder) / "model.json").read_text())["model"]
        if spec.get("name") != "sshn":
            return
        phi = forward_phi(**{k: spec[k] for k in ("phi_range", "phi") if spec.get(k) is not None})
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return  # the command itself read this manifest; a note is not worth an error
    which = "its set phi" if spec.get("phi") is not None else "the middle of its range"
    print(f"medslim: note: {folder} is a scale-space hypernetwork: this was its forward at phi={phi:g} "
          f"({which}), generating the weights included; `medslim sshn sweep {folder}` "
          f"measures every phi, `medslim sshn export {folder} --phi X` gives the U-Net to deploy",
          file=sys.stderr)


def cmd_prune(args) -> int:
    from medslim.jobs import prune_run

    from medslim.config import parse_override
    from medslim.errors import ConfigError

    targets = (args.flops_ratio, args.params_ratio, args.latency_ms)
    if targets == (None, None, None) and args.method != "channel_scaling":
        raise ConfigError("give a target: --flops-ratio R, --params-ratio R or --latency-ms MS")
    if args.method == "channel_scaling" and (args.flops_ratio, args.latency_ms) != (None, None):
        raise ConfigError("channel_scaling stops at a parameter target: use --params-ratio "
                          "(or none: rounds until no scale falls under the threshold)")
    options = dict(parse_override(item) for item in args.options)
    if args.latency_ms is not None:
        if not args.latency_ms > 0:
            raise ConfigError(f"--latency-ms must be a positive number of milliseconds, got {args.latency_ms}")
        options["latency_ms"] = args.latency_ms
    run = prune_run(args.run, args.method, args.flops_ratio, args.params_ratio, args.finetune_epochs,
                    args.finetune_lr, args.steps if args.schedule == "iterative" else 1, args.scope,
                    args.max_fraction, args.round_to, args.name, args.output, args.data, args.overwrite,
                    progress=not args.quiet, measure=not args.no_cost, dice_tolerance=args.dice_tolerance,
                    options=options or None, keep=args.keep)
    results = json.loads((run / "results.json").read_text())
    _print_results({"flops_ratio": results["flops_ratio"], "params_ratio": results["params_ratio"],
                    **results["test"]}, f"pruned with {args.method} ({run})")
    _warn_if_short(args, results, json.loads((run / "pruning.json").read_text()).get("notes") or [])
    print(f"run folder: {run}")
    return 0


def _warn_if_short(args, results: dict, notes: list[str]) -> None:
    """Say on stderr when the run stopped above its target (a tolerance, a round budget), and why."""
    for option, key in (("--flops-ratio", "flops_ratio"), ("--params-ratio", "params_ratio")):
        target = getattr(args, key)
        if target is not None and results[key] > target * 1.01:
            print(f"medslim: warning: {option} {target:g} not reached: the pruned model keeps "
                  f"{results[key]:.3f}", file=sys.stderr)
    for note in notes:
        print(f"medslim: note: {note}", file=sys.stderr)


def cmd_sshn(args) -> int:
    from medslim import sshn_jobs

    if args.sshn_command == "train":
        return cmd_train(args, train=sshn_jobs.train_sshn)
    if args.sshn_command == "export":
        run = sshn_jobs.export_sshn(args.run, args.phi, args.output, args.name, args.overwrite, args.data)
        results = json.loads((run / "results.json").read_text())
        if not results["in_range"]:
            print(f"medslim: warning: phi={args.phi} lies outside the training range; "
                  "check its sweep before deploying it", file=sys.stderr)
        _print_results(results["test"], f"U-Net at phi={args.phi:g} ({run})")
        print(f"run folder: {run}")
        return 0
    phis = sshn_jobs.parse_phis(args.phis) if args.phis is not None else None

    def progress(i, n, row):
        print(f"[{i}/{n}] phi={row['phi']:.3f}  dice={row.get('dice', float('nan')):.4f}  "
              f"GFLOPs={row['flops'] / 1e9:.3f}", file=sys.stderr)

    report = sshn_jobs.sweep_run(args.run, phis, args.split, args.threads, args.repeats,
                                 onnx=not args.no_onnx, hd95=False if args.no_hd95 else None,
                                 data_path=args.data, progress=progress)
    _print_sweep(report)
    print(f"wrote {args.run / f'sweep-{args.split}.json'} and the plot sweep-{args.split}.png "
          f"({report['seconds']:.0f} s)")
    return 0


def _print_sweep(report: dict) -> None:
    rows = report["rows"]
    latency = next((k for k in rows[0] if k.startswith("ort_ms")), None)
    front = set(report["pareto_phis"])
    print(f"{'phi':>6} {'dice':>7} {'hd95':>7} {'GFLOPs':>8} {'params':>8} "
          f"{latency or '':>10}  front  in-range")
    for r in rows:
        print(f"{r['phi']:6.3f} {r['dice']:7.4f} {r.get('hd95', float('nan')):7.2f} "
              f"{r['flops'] / 1e9:8.3f} {r['params']:8d} "
              f"{r[latency] if latency else float('nan'):10.2f}  {'*' if r['phi'] in front else ' ':^5}  "
              f"{'yes' if r['in_range'] else 'NO'}")


def cmd_compare(args) -> int:
    from medslim.compare import read_table, run_compare
    from medslim.report import report_comparison

    folder = run_compare(args.config, args.overrides, args.data, progress=not args.quiet)
    _print_compare(read_table(folder))
    print(f"table: {folder / 'table.csv'}")
    if not args.no_report:
        print(f"report: {report_comparison(folder)}")
    return 0


def cmd_report(args) -> int:
    from medslim.compare import read_table
    from medslim.report import report_paths

    folder = report_paths(args.runs, args.output)
    _print_compare(read_table(folder))
    print(f"report: {folder / 'report.html'}")
    return 0


def _print_compare(table: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    metric = table["metric"]
    out = Table(title=f"{table['name']} on {table['dataset']} (* on the Pareto front against FLOPs / ORT latency)")
    for col in ("model", "method", metric, "params", "GFLOPs", "torch ms", "ORT ms", "front"):
        out.add_column(col, justify="left" if col in ("model", "method") else "right", no_wrap=True)
    for r in table["rows"]:
        ort = r.get("ort_ms")
        out.add_row(r["label"], r["method"], f"{r[metric]:.4f}", f"{r['params']:,}", f"{r['flops'] / 1e9:.3f}",
                    f"{r['torch_ms']:.2f}", "n/a" if ort is None else f"{ort:.2f}",
                    ("*" if r.get("front_flops") else "-") + " / " + ("*" if r.get("front_ort_ms") else "-"))
    Console(width=max(120, Console().width)).print(out)


def cmd_data(args) -> int:
    if args.data_command == "list":
        from medslim.data.locate import list_datasets

        for d in list_datasets(args.data):
            where = d.get("path") or "not found (medslim data fetch " + d["name"] + ")"
            print(f"{d['name']:16s} {d['task']:16s} {where}")
        return 0
    from medslim.data.fetch import fetch

    path = fetch(args.name, cache=args.cache, url=args.url, checksum=args.checksum, force=args.force)
    print(f"{args.name} is ready at {path}")
    return 0


def cmd_demo(args) -> int:
    from medslim.demo import run_demo

    run_demo(data=args.data, output=args.output, epochs=args.epochs)
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "cost": cmd_cost, "export": cmd_export,
            "prune": cmd_prune, "sshn": cmd_sshn, "compare": cmd_compare, "report": cmd_report,
            "data": cmd_data, "demo": cmd_demo}


def _sub(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text,
                          epilog=f"example:\n  {EXAMPLES[name]}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _print_results(results: dict, title: str) -> None:
    from medslim.report_text import print_table

    print_table(results, title)


def _version() -> str:
    from medslim import __version__

    return f"medslim {__version__}"


if __name__ == "__main__":
    sys.exit(main())
