"""What the CLI commands do, as functions: train, evaluate, cost, export.

Each reads its inputs, does its work in a temporary place and writes its
results atomically, so a failure leaves earlier results untouched.
"""

from __future__ import annotations

import copy
import inspect
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

from medslim._io import write_json, write_text
from medslim.errors import ConfigError, DataError, MedslimWarning


def fill_model_spec(model_cfg: dict, info) -> dict:
    """Complete a model spec from the data: dimensions, channels, classes, upsampling factor."""
    from medslim.models import model_class, complete_spec

    spec = complete_spec(model_cfg, info.spatial_dims, info.in_channels, info.num_classes)
    factor = info.output_factor
    takes_factor = "factor" in inspect.signature(model_class(spec["name"])).parameters
    if factor is not None and not takes_factor:
        raise ConfigError(f"data.label_size asks for masks {factor}x the input size, but model "
                          f"{spec['name']!r} predicts at its input size; use model.name: lowres "
                          "(with the network as model.backbone)")
    if takes_factor:
        if factor is None:
            raise ConfigError(f"model {spec['name']!r} upsamples its output: set data.label_size "
                              "(the mask size) as a multiple of data.size")
        if spec.setdefault("factor", factor) != factor:
            raise ConfigError(f"model.factor={spec['factor']} but data.label_size / data.size = {factor}")
    return spec


def load_data(cfg: dict, data_path: str | None = None, split: dict | None = None):
    from medslim.data import build_data
    from medslim.data.locate import DATASETS, find_dataset

    data_cfg = dict(cfg["data"])
    saved_path = data_cfg.pop("path", None)  # build_data knows no "path" key
    name = data_cfg["dataset"]
    # a dataset of the user's own, in a known format (data.format), lives where --data says
    custom = name not in DATASETS and data_cfg.get("format") is not None
    root = find_dataset(None if custom else name, data_path or saved_path)
    return build_data(data_cfg, root, split=split), root


def train_run(cfg: dict, data_path: str | None = None, resume: bool = False,
              overwrite: bool = False, progress: bool = True) -> Path:
    """Train a model as ``cfg`` says; return the finished run folder."""
    from medslim.artifacts import save
    from medslim.data.splits import load_split, save_split
    from medslim.models import build_model, model_class
    from medslim.progress import training_progress
    from medslim.runs import RunDir, default_name
    from medslim.training.loop import fit, seed_everything

    model_class(cfg["model"].get("name"))  # a misspelt model fails before the data is looked for
    cfg["name"] = cfg.get("name") or default_name(cfg)
    run = RunDir(cfg["output"], cfg["name"])
    work = run.begin(resume=resume, overwrite=overwrite)
    callback, close = training_progress(cfg["name"], progress)
    try:
        if resume:
            cfg = _resume_config(work, cfg)
        split = load_split(work / "split.json") if resume else None
        data, root = load_data(cfg, data_path, split)
        save_split(data.split, work / "split.json")
        write_config(work / "config.yaml", cfg)
        seed_everything(cfg["seed"], cfg["train"]["deterministic"])  # initial weights too
        model = build_model(fill_model_spec(cfg["model"], data.info))
        transfer = start_from_pretrained(model, cfg, data.train, fresh=not resume)
        result = fit(model, data, cfg, work, resume=resume, progress=callback,
                     hook=training_hook(cfg, data.info))
        close()
        test = evaluate_model(model, data, cfg, "test")
        results = {"dataset": cfg["data"]["dataset"], "data_root": str(root),
                   "best_epoch": result.best_epoch, "best_val_score": result.best_score,
                   "epochs": result.epochs_run, "train_seconds": result.train_seconds,
                   "test": test, **_size_of(model, data.info), **transfer}
        save(model, work, extra=manifest_extra(cfg, data.info))
        write_json(work / "results.json", results)
    except BaseException:
        close()
        kept = run.abandon()
        if kept:
            import sys

            print(f"medslim: the unfinished run is kept in {run.work}; continue it with "
                  f"--resume --name {cfg['name']}", file=sys.stderr)
        raise
    return run.commit()


def start_from_pretrained(model, cfg: dict, train_data, fresh: bool = True) -> dict:
    """Load ``train.pretrained`` (all but the head), freeze the backbone if asked.

    With ``train.frozen_norm_stats: target`` the frozen norms' running
    statistics are then re-estimated on ``train_data``; a resumed run
    (``fresh=False``) already has them in its checkpoint.
    """
    from medslim.pretrained import freeze_backbone, load_pretrained
    from medslim.training.loop import reestimate_frozen_norm_stats

    tcfg = cfg["train"]
    out = {}
    target_stats = tcfg.get("frozen_norm_stats", "source") == "target"  # configs of older runs lack the key
    if target_stats and not tcfg.get("freeze_backbone"):
        raise ConfigError("train.frozen_norm_stats=target (--target-norm-stats) needs a frozen "
                          "backbone (--freeze-backbone); a trained backbone learns its own statistics")
    if tcfg.get("pretrained"):
        out["pretrained"] = load_pretrained(model, tcfg["pretrained"])
    if tcfg.get("freeze_backbone"):
        if not tcfg.get("pretrained") and fresh:
            warnings.warn("train.freeze_backbone without train.pretrained freezes a randomly initialised "
                          "backbone: only the head learns (give --pretrained to transfer features)",
                          MedslimWarning, stacklevel=2)
        trainable = freeze_backbone(model)
        out["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        out["trainable"] = trainable
    if target_stats and fresh:
        out["norms_reestimated"] = reestimate_frozen_norm_stats(model, train_data, tcfg, cfg["seed"])
    return out


def training_hook(cfg: dict, info):
    """What acts during training: in-training pruning (``prune.method``), the sparsity L1, or None."""
    method = cfg["prune"]["method"]
    if method:
        from medslim.pruning import training_pruner

        options = {k: v for k, v in cfg["prune"].items() if k != "method"}
        options.setdefault("seed", cfg["seed"])
        return training_pruner(method, _example_input(info), **options)
    regulariser = sparsity_regulariser(cfg["train"]["sparsity"])
    if regulariser is None:
        return None
    from medslim.training.hooks import AfterBackward

    return AfterBackward(regulariser)


def _example_input(info):
    """A zero batch of one, of the shape the model is trained and costed at."""
    import torch

    return torch.zeros(1, info.in_channels, *info.input_size)


def _size_of(model, info) -> dict:
    from medslim.cost import count_flops, count_params

    return {"params": count_params(model), "flops": count_flops(model, _example_input(info))}


def sparsity_regulariser(lam: float):
    """Network slimming's L1 on norm scales (``train.sparsity``, e.g. 1e-4), or None."""
    if not lam:
        return None
    from medslim.pruning.criteria import slimming_subgradient

    return lambda model: slimming_subgradient(model, lam)


def evaluate_run(run: Path, split: str = "test", data_path: str | None = None) -> dict:
    """Re-evaluate a finished run on its saved split; writes ``evaluation-<split>.json``."""
    from medslim.artifacts import load
    from medslim.data.splits import load_split

    cfg = read_run_config(run)
    model = load(run)
    data, _ = load_data(cfg, data_path, load_split(run / "split.json"))
    check_data_fits(model, data.info, run)
    metrics = evaluate_model(model, data, cfg, split)
    write_json(run / f"evaluation-{split}.json", metrics)
    return metrics


def cost_run(target: Path, threads=(1, 2), repeats: int = 20, onnx: bool = True,
             input_shape: list[int] | None = None) -> dict:
    """Parameters, FLOPs, latency and memory of a run's model; writes ``cost.json``."""
    import torch

    from medslim.artifacts import load
    from medslim.cost import measure

    _check_positive({"--threads": threads, "--repeats": [repeats]})
    model = load(target)
    example = torch.randn(*input_shape_of(model, target, input_shape))
    report = measure(model, example, threads=tuple(threads), onnx=onnx, repeats=repeats,
                     workdir=target if target.is_dir() else None)
    if target.is_dir():
        write_json(target / "cost.json", report)
    return report


def export_run(target: Path, output: Path, input_shape: list[int] | None = None) -> dict:
    """Export a run's model to ONNX, checked against PyTorch."""
    import torch

    from medslim.artifacts import load
    from medslim.cost import export_onnx

    model = load(target)
    return export_onnx(model, torch.randn(*input_shape_of(model, target, input_shape)), output)


def input_shape_of(model, target: Path, given: Sequence[int] | None = None) -> list[int]:
    """The batch shape to measure or export at: ``given`` (--input-shape) or the recorded one.

    Checked against what the manifest records (dimensions, image channels), so a
    wrong shape is refused by name instead of failing inside the first convolution.
    """
    extra = model.medslim_manifest.get("extra", {})
    recorded = extra.get("input_shape")
    shape = list(given) if given else recorded
    if not shape:
        raise ConfigError(f"{target} does not record its input shape; pass --input-shape, "
                          "e.g. --input-shape 1 3 128 128")
    if not all(isinstance(s, int) and s > 0 for s in shape) or len(shape) < 3:
        raise ConfigError(f"--input-shape must be positive integers: batch, channels and 1-3 spatial "
                          f"sizes, e.g. 1 3 128 128; got {' '.join(map(str, shape))}")
    if recorded and given:
        if len(shape) != len(recorded):
            raise ConfigError(f"--input-shape {' '.join(map(str, shape))} has {len(shape) - 2} spatial "
                              f"dimensions; the model in {target} takes {len(recorded) - 2} "
                              f"(recorded: {' '.join(map(str, recorded))})")
        if shape[1] != recorded[1]:
            raise ConfigError(f"--input-shape gives {shape[1]} image channels; the model in {target} "
                              f"takes {recorded[1]}")
    return shape


def check_data_fits(model, info, run: Path) -> None:
    """Refuse data whose image channels differ from those the run's model was trained on."""
    task = model.medslim_manifest.get("extra", {}).get("task") or {}
    trained = task.get("in_channels")
    if trained is not None and info.in_channels != trained:
        raise DataError(f"the data has {info.in_channels} image channel(s) but the model in {run} "
                        f"was trained on {trained}; point --data at the dataset it was trained on")


def _check_positive(values: dict[str, Sequence]) -> None:
    for option, items in values.items():
        if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
            raise ConfigError(f"{option} must be positive integers, got {' '.join(map(str, items))}")


def _write_pruned_run(work: Path, run: Path, cfg: dict, model, pruned, method: str, test: dict,
                      record: dict) -> None:
    """The pruned run's files: its config and split (the source's), model, pruning record, results."""
    from medslim.artifacts import save

    write_config(work / "config.yaml", cfg)
    save_split_copy(run, work)
    save(pruned, work, extra={**model.medslim_manifest.get("extra", {}), "pruned_from": str(run)})
    write_json(work / "pruning.json", record)
    write_json(work / "results.json", {"dataset": cfg["data"]["dataset"], "source_run": str(run),
                                       "method": method, "test": test, "prune_seconds": record["seconds"],
                                       "flops_ratio": record["flops_ratio"],
                                       "params_ratio": record["params_ratio"]})


def prune_run(run: Path, method: str, flops_ratio: float | None = None, params_ratio: float | None = None,
              finetune_epochs: int = 0, finetune_lr: float | None = None, steps: int = 1,
              scope: str = "global", max_fraction: float = 0.9, round_to: int = 1,
              name: str | None = None, output: str | Path | None = None, data_path: str | None = None,
              overwrite: bool = False, progress: bool = True, measure: bool = True,
              dice_tolerance: float | None = None, options: dict | None = None,
              external=None, keep: Sequence[str] = ()) -> Path:
    """Prune a trained run's model, optionally fine-tune it, and write a new run folder.

    The new folder holds the pruned model, its test metrics, the pruning
    report (widths, achieved ratios) and, with ``measure``, its cost. The
    fine-tuning uses the run's own training settings with the learning rate
    divided by 10 unless ``finetune_lr`` is given. With ``dice_tolerance``
    (iterative schedules), pruning stops before the first step whose
    fine-tuned validation score falls more than that below the unpruned one.
    ``external(model, example_input) -> model`` prunes with another tool in
    place of medslim's engine (the benchmarks compare Torch-Pruning this way);
    ``method`` then only labels the run. ``keep`` names layers (module paths)
    whose output channels are never pruned.
    """
    import torch

    from medslim.artifacts import load
    from medslim.data.splits import load_split
    from medslim.pruning import prune
    from medslim.runs import RunDir
    from medslim.training.loop import make_loader, seed_everything

    cfg = read_run_config(run)
    if cfg["model"]["name"] == "sshn":
        from medslim.models.sshn import forward_phi

        phi = forward_phi(**{k: cfg["model"][k] for k in ("phi_range", "phi") if cfg["model"].get(k) is not None})
        raise ConfigError(f"{run} holds a scale-space hypernetwork, whose weights are generated per phi; "
                          f"export a U-Net at one phi and prune that run: medslim sshn export {run} --phi {phi:g}")
    model = load(run)
    _check_keep(model, keep, method, external, run)
    _check_finetune(finetune_epochs, finetune_lr)
    if method == "channel_scaling" and finetune_epochs:
        raise ConfigError("channel_scaling trains the head and scales in every round "
                          "(--option epochs=N per round); --finetune-epochs does not apply")
    shape = input_shape_of(model, run)
    name = name or _pruned_name(run, method, flops_ratio, params_ratio, options)
    out = RunDir(output or run.parent, name)
    work = out.begin(overwrite=overwrite)
    try:
        data, _ = load_data(cfg, data_path, load_split(run / "split.json"))
        check_data_fits(model, data.info, run)
        tune = copy.deepcopy(cfg)
        tune["train"]["epochs"] = max(1, finetune_epochs)
        tune["train"]["lr"] = finetune_lr if finetune_lr is not None else cfg["train"]["lr"] / 10
        seed_everything(cfg["seed"], cfg["train"]["deterministic"])
        loader = make_loader(data.train, cfg["train"], cfg["seed"]) if method != "uniform" else None

        val_before_finetune: list[float] = []  # how hard each cut hit, before any recovery
        finetune = _finetuner(work, data, cfg, tune, name, progress, finetune_epochs, val_before_finetune)
        start = time.perf_counter()
        stop_when = _tolerance_check(model, data, cfg, dice_tolerance)
        if method == "channel_scaling":
            pruned = select_by_scaling(model, torch.zeros(*shape), data, cfg, work, params_ratio,
                                       round_to, finetune_lr, options, progress)
            report = pruned.medslim_pruning.to_dict()
        elif external is None:
            pruned = prune(model, torch.zeros(*shape), method=method, flops_ratio=flops_ratio,
                           params_ratio=params_ratio, data=loader, scope=scope, max_fraction=max_fraction,
                           round_to=round_to, steps=steps, finetune=finetune, stop_when=stop_when,
                           ignored=list(keep), **(options or {}))
            report = pruned.medslim_pruning.to_dict()
        else:
            pruned, report = _prune_externally(external, model, torch.zeros(*shape), method, finetune)
        seconds = time.perf_counter() - start
        test = evaluate_model(pruned, data, cfg, "test")
        record = {**report, "source_run": str(run), "finetune_epochs": finetune_epochs,
                  "finetune_lr": tune["train"]["lr"], "seconds": seconds, "kept_layers": list(keep),
                  "val_before_finetune": val_before_finetune}
        _write_pruned_run(work, run, cfg, model, pruned, method, test, record)
        if measure:
            cost_run(work, threads=cfg.get("cost", {}).get("threads", [1, 2]),
                     repeats=cfg.get("cost", {}).get("repeats", 20))
    except BaseException:
        out.abandon()  # pruning has no resume (no checkpoint): nothing half-done is left
        raise
    return out.commit()


def _finetuner(work: Path, data, cfg: dict, tune: dict, name: str, progress: bool, epochs: int,
               val_before: list[float]):
    """``finetune(net, step)`` for the pruner: trains ``epochs`` epochs in ``work/finetune-step<step>``.

    It first records the cut network's validation score in ``val_before``:
    how hard each cut hit, before any recovery.
    """
    from medslim.progress import training_progress
    from medslim.training.loop import fit

    def finetune(net, step):
        if epochs <= 0:
            return
        val_before.append(_val_score(net, data, cfg))
        step_dir = work / f"finetune-step{step}"
        step_dir.mkdir()
        callback, close = training_progress(f"{name} step {step}", progress)
        try:
            fit(net, data, tune, step_dir, progress=callback)
        finally:
            close()

    return finetune


def _check_finetune(epochs, lr) -> None:
    from medslim.config import is_number

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"--finetune-epochs must be a non-negative integer, got {epochs!r}")
    if lr is not None and not (is_number(lr) and lr > 0):
        raise ConfigError(f"--finetune-lr must be a positive number, got {lr!r}")


def _check_keep(model, keep: Sequence[str], method: str, external, run: Path) -> None:
    """Refuse --keep names that are not layers of the model, before any work starts."""
    from medslim.pruning.graph import PruningError, resolve_ignored

    if keep and (method == "channel_scaling" or external is not None):
        raise ConfigError(f"--keep applies to medslim's engine criteria, not to {method!r}")
    for path in keep:
        try:
            resolve_ignored(model, [path])
        except PruningError as err:
            raise ConfigError(f"--keep {path!r} ({run}): {err}") from None


CS_DEFAULTS = {"epochs": 3, "lr": 1e-2}
CS_OPTIONS = (*CS_DEFAULTS, "lam", "threshold", "rounds", "settle")


def select_by_scaling(model, example, data, cfg: dict, work: Path, params_ratio: float | None,
                      round_to: int, lr: float | None, options: dict | None, progress: bool):
    """Channel scaling on a run's model, each round trained by the run's own loop.

    Per round the head and the scales train for ``epochs`` (default 3) at a
    constant ``lr`` (default 1e-2: scales must travel from 1 to under the
    threshold within a round; docs/channel_scaling.md); the other options
    (``lam``, ``threshold``, ``rounds``, ``settle``) go to the method.
    """
    from medslim.progress import training_progress
    from medslim.pruning import channel_scaling
    from medslim.training.loop import fit

    opts = {**CS_DEFAULTS, **(options or {})}
    unknown = sorted(set(opts) - set(CS_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} for channel_scaling; allowed: {', '.join(CS_OPTIONS)}")
    epochs, rate = opts.pop("epochs"), opts.pop("lr")
    rate = rate if lr is None else lr  # --finetune-lr wins
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"channel_scaling option epochs={epochs!r} must be a positive integer")
    tune = copy.deepcopy(cfg)
    tune["train"].update(epochs=epochs, lr=float(rate), lr_schedule="constant", keep="last",
                         pretrained=None, freeze_backbone=False, frozen_norm_stats="source")

    def train(net, hook, r):
        folder = work / f"round{r}"
        folder.mkdir()
        callback, close = training_progress(f"channel scaling round {r}", progress)
        try:
            fit(net, data, tune, folder, progress=callback, hook=hook)
        finally:
            close()

    return channel_scaling(model, example, train, params_ratio=params_ratio, round_to=round_to, **opts)


def _prune_externally(external, model, example, method: str, finetune) -> tuple[Any, dict]:
    """Prune a copy with another tool, fine-tune it once, and describe it like our own report."""
    from medslim.cost import count_flops, count_params
    from medslim.models.reshape import PRUNED_ATTR
    from medslim.pruning.pruner import PruneReport

    pruned = external(copy.deepcopy(model), example)
    # load() must resize the rebuilt network to the smaller weights; their shapes say how
    setattr(pruned, PRUNED_ATTR, {"widths": {}})
    finetune(pruned, 1)
    report = PruneReport(method, {}, count_flops(model, example), count_flops(pruned, example),
                         count_params(model), count_params(pruned), steps=1, scope="external",
                         notes=["pruned by an external tool; widths are read from the weights"])
    return pruned, report.to_dict()


def _tolerance_check(model, data, cfg: dict, tolerance: float | None):
    """``stop_when`` for the pruner: the validation score fell more than ``tolerance``."""
    if tolerance is None:
        return None
    if not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise ConfigError(f"--dice-tolerance must be a non-negative number, got {tolerance!r}")
    reference = _val_score(model, data, cfg)
    return lambda net: reference - _val_score(net, data, cfg) > tolerance


def _val_score(model, data, cfg: dict) -> float:
    from medslim.training.evaluate import evaluate_split
    from medslim.training.loop import score_of

    return score_of(evaluate_split(model, data, cfg["eval"], "val", hd95=False))


def _pruned_name(run: Path, method: str, flops_ratio, params_ratio, options) -> str:
    targets = [f"{tag}{value:g}" for tag, value in (("f", flops_ratio), ("p", params_ratio)) if value is not None]
    if targets:
        return "-".join([run.name, method, *targets])
    if method == "channel_scaling":
        return f"{run.name}-{method}"
    return f"{run.name}-{method}-{(options or {}).get('latency_ms', 0):g}ms"


def save_split_copy(run: Path, work: Path) -> None:
    import shutil

    shutil.copy2(run / "split.json", work / "split.json")


def read_run_config(run: Path) -> dict:
    from medslim.config import read_yaml

    if not (run / "config.yaml").exists():
        raise ConfigError(f"{run} is not a medslim run folder (no config.yaml)")
    return read_yaml(run / "config.yaml")


def write_config(path: Path, cfg: dict) -> None:
    import yaml

    write_text(path, yaml.safe_dump(cfg, sort_keys=False))


def _resume_config(work: Path, cfg: dict) -> dict:
    # the saved config wins: a resumed run must train exactly as it started
    saved = read_run_config(work)
    saved["name"] = cfg["name"]
    return saved


def evaluate_model(model, data, cfg: dict, split: str) -> dict:
    """Metrics of ``model`` on one split with the run's evaluation settings."""
    from medslim.training.evaluate import evaluate_split

    return evaluate_split(model, data, cfg["eval"], split)


def manifest_extra(cfg: dict, info) -> dict[str, Any]:
    """What a saved model's manifest records about its data, so it can be measured and rebuilt."""
    return {"task": info.to_dict(), "dataset": cfg["data"]["dataset"],
            "input_shape": [1, info.in_channels, *info.input_size]}
