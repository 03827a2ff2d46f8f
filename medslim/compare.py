"""``medslim compare``: one dataset, one base model, many methods, one table.

A compare config names a base model (a training config, or a run already
trained) and a list of methods. Every method makes one or more models from
the base or from the same data; each model's test quality and its cost
(parameters, FLOPs, PyTorch and ONNX Runtime latency at batch 1, peak memory)
become one row of a table, with the Pareto front of quality against each cost
marked. The compare folder holds everything::

    <output>/<name>/
        compare.json        the resolved plan (what resuming checks against)
        runs/<label>/       one run folder per model (base included)
        costs/<label>.json  the cost measured here, at the chosen threads
        table.json, table.csv
        report/             plots and report.html (medslim.report)

Running the same config again resumes: finished models are kept, an
interrupted training continues from its checkpoint, and a label whose settings
changed is refused rather than mixed into the table. Every option is checked
before any training starts.
"""

from __future__ import annotations

import copy
import csv
import inspect
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from medslim import __version__
from medslim._io import check_output_folder, write_json, write_text
from medslim.config import is_number
from medslim.errors import ConfigError, unknown_name
from medslim.pareto import pareto_front
from medslim.runs import NAME

TABLE_FORMAT = "medslim-compare-table"
TABLE_VERSION = 1

PRUNE_KEYS = ("flops_ratio", "params_ratio", "latency_ms", "finetune_epochs", "finetune_lr", "schedule",
              "steps", "scope", "max_fraction", "round_to", "dice_tolerance", "options")
# which keys each kind of method takes, besides ``method``, ``label`` and ``run``
KIND_KEYS = {
    "prune": PRUNE_KEYS,
    "sauron": ("options", "overrides"),
    "sshn": ("phis", "config", "overrides"),
    "lowres": ("input_size", "output_size", "head", "overrides"),
    "import": (),
}
COMMON_KEYS = ("method", "label", "run")
TOP_KEYS = ("name", "output", "base", "measure", "methods")
BASE_KEYS = ("config", "overrides", "run")
MEASURE_DEFAULTS = {"threads": 1, "repeats": 20, "onnx": True}
SSHN_CONFIGS = {"kvasir-seg": "kvasir-sshn", "hippocampus": "hippocampus-sshn"}
COST_AXES = ("flops", "params", "torch_ms", "ort_ms")


def prune_methods() -> list[str]:
    from medslim.pruning.criteria import CRITERIA

    return [*CRITERIA, "uniform", "channel_scaling"]


def method_names() -> list[str]:
    return [*prune_methods(), "sauron", "sshn", "lowres", "run"]


def kind_of(method: str) -> str:
    if method in ("sauron", "sshn", "lowres"):
        return method
    if method == "run":
        return "import"
    if method in prune_methods():
        return "prune"
    raise unknown_name("method", method, method_names())


@dataclass
class Entry:
    """One method of a compare config, checked; ``settings`` is what resuming compares."""

    label: str
    method: str
    kind: str
    settings: dict
    run: Path | None = None  # an already finished run to import instead of making one
    train_cfg: dict | None = None  # the training config (sauron, sshn, lowres)
    phis: list[float] = field(default_factory=list)
    data_overrides: list[str] = field(default_factory=list)  # sshn: where the base's data differs


@dataclass
class Plan:
    name: str
    folder: Path
    base: Entry
    entries: list[Entry]
    measure: dict
    dataset: str
    classification: bool

    @property
    def runs(self) -> Path:
        return self.folder / "runs"

    def to_dict(self) -> dict:
        return {"name": self.name, "dataset": self.dataset, "measure": self.measure,
                "base": self.base.settings, "methods": {e.label: e.settings for e in self.entries}}


# ----------------------------------------------------------------- the plan

def builtin_compare_config(name: str) -> Path:
    from importlib import resources

    folder = Path(str(resources.files("medslim") / "configs" / "compare"))
    path = folder / f"{name}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigError(f"compare config {name!r} is neither a file nor a built-in; "
                          f"built-in compare configs: {', '.join(names)}")
    return path


def read_compare_config(source: str | Path) -> tuple[dict, Path]:
    from medslim.config import read_yaml

    path = Path(source)
    if not path.exists() and not str(source).endswith((".yaml", ".yml")):
        path = builtin_compare_config(str(source))
    return read_yaml(path), path


def make_plan(source: str | Path, overrides: list[str] = (), data_path: str | None = None) -> Plan:
    """Read and check a compare config; raises ConfigError naming the bad key before any work."""
    from medslim.config import parse_override, set_dotted

    raw, path = read_compare_config(source)
    for item in overrides:
        set_dotted(raw, *parse_override(item))
    _only(raw, TOP_KEYS, "compare config key")
    name = raw.get("name") or path.stem
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"name {name!r} may hold only letters, digits, '.', '_' and '-'")
    folder = Path(raw.get("output") or "runs") / name
    measure = _measure_settings(raw.get("measure") or {})
    base = _base_entry(raw.get("base"), folder / "runs", path)
    dataset = base.train_cfg["data"]["dataset"]
    classification = _is_classification(base.train_cfg)
    methods = raw.get("methods")
    if not isinstance(methods, list) or not methods:
        raise ConfigError(f"{path}: 'methods' must be a non-empty list, e.g. "
                          "[{method: l1, flops_ratio: 0.25, finetune_epochs: 3}]")
    entries = [_entry(item, i, base, classification, path) for i, item in enumerate(methods)]
    labels = [e.label for e in [base, *entries]]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise ConfigError(f"{path}: label {twice[0]!r} is used twice; give each method a unique 'label'")
    _check_dataset(base.train_cfg, data_path if base.run is None else None)  # after the config's own errors
    return Plan(name, folder, base, entries, measure, dataset, classification)


def _only(mapping: Any, allowed: tuple[str, ...], what: str, where: str = "") -> None:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where or 'the compare config'} must be a mapping, got {type(mapping).__name__}")
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown {what} {unknown[0]!r}{' in ' + where if where else ''}; "
                          f"allowed: {', '.join(allowed)}")


def _measure_settings(raw: dict) -> dict:
    _only(raw, tuple(MEASURE_DEFAULTS), "option", "measure")
    out = {**MEASURE_DEFAULTS, **raw}
    for key in ("threads", "repeats"):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1:
            raise ConfigError(f"measure.{key} must be a positive integer, got {out[key]!r}")
    if not isinstance(out["onnx"], bool):
        raise ConfigError(f"measure.onnx must be true or false, got {out['onnx']!r}")
    return out


def _override_list(value: Any, where: str) -> list[str]:
    """Overrides as ``key=value`` strings, from a list of them or a mapping."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}={_compact(v)}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{where}.overrides must be a mapping (train.epochs: 5) or a list of "
                      f"'key=value' strings, got {value!r}")


def _compact(value: Any) -> str:
    """A value as an override reads it back, without spaces (so it survives a shell)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _base_entry(raw: Any, runs: Path, path: Path) -> Entry:
    from medslim.config import load_config

    if raw is None:
        raise ConfigError(f"{path}: 'base' is missing: give base.config (a training config) or base.run")
    _only(raw, BASE_KEYS, "option", "base")
    if ("config" in raw) == ("run" in raw):
        raise ConfigError("base needs exactly one of base.config (train it) and base.run (a finished run)")
    if "run" in raw:
        run = _finished_run(raw["run"], "base.run")
        from medslim.jobs import read_run_config

        from medslim.config import DEFAULTS, merge

        # runs written by an older medslim lack newer keys: their defaults are what those runs did
        cfg = merge(DEFAULTS, read_run_config(run))
        return Entry("base", "base", "import", {"run": str(run)}, run=run, train_cfg=cfg)
    config = _relative_config(raw["config"], path)
    overrides = _override_list(raw.get("overrides"), "base")
    cfg = load_config(config, overrides)
    cfg.update(name="base", output=str(runs))
    return Entry("base", "base", "train", {"config": str(config), "overrides": overrides}, train_cfg=cfg)


def _relative_config(config: Any, path: Path) -> str:
    """A config path is read relative to the compare config's folder; a built-in name stays."""
    if not isinstance(config, str):
        raise ConfigError(f"a config must be a built-in name or a YAML path, got {config!r}")
    candidate = path.parent / config
    return str(candidate) if config.endswith((".yaml", ".yml")) and candidate.exists() else config


def _finished_run(value: Any, where: str) -> Path:
    run = Path(str(value))
    if not (run / "results.json").is_file() or not (run / "config.yaml").is_file():
        raise ConfigError(f"{where}: {run} is not a finished medslim run folder "
                          "(no results.json and config.yaml)")
    return run


def _check_made_on(run: Path, dataset: str, where: str) -> None:
    """A run of another dataset is refused with the plan, before the base is trained or measured."""
    try:
        made_on = json.loads((run / "results.json").read_text()).get("dataset")
    except (OSError, ValueError, AttributeError) as err:
        raise ConfigError(f"{where}: cannot read {run / 'results.json'}: {err}") from None
    _require_dataset(run, made_on, dataset, where=f"{where}: ", whose=" (the base's)")


def _require_dataset(run: Path, made_on: Any, dataset: str, where: str = "", whose: str = "") -> None:
    if made_on != dataset:
        raise ConfigError(f"{where}{run} was made on {made_on!r}, not {dataset!r}{whose}: "
                          "it cannot share a table with this comparison")


def _check_dataset(cfg: dict, data_path: str | None) -> None:
    """An unknown dataset, or a known one that cannot be found, fails now, not after training."""
    from medslim.data.locate import DATASETS, find_dataset

    name = cfg["data"].get("dataset")
    if name not in DATASETS and cfg["data"].get("format") is None:
        raise ConfigError(f"unknown data.dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}, "
                          "or give data.format (folders, decathlon, medmnist) for your own data")
    find_dataset(None if name not in DATASETS else name, data_path or cfg["data"].get("path"))


def _is_classification(cfg: dict) -> bool:
    from medslim.data.locate import DATASETS

    name = cfg["data"]["dataset"]
    if name in DATASETS:
        return "classification" in DATASETS[name].task
    return cfg["data"].get("format") == "medmnist"


def _entry(raw: Any, index: int, base: Entry, classification: bool, path: Path) -> Entry:
    where = f"methods[{index}]"
    if not isinstance(raw, dict) or "method" not in raw:
        raise ConfigError(f"{path}: {where} must be a mapping with a 'method' "
                          f"(one of: {', '.join(method_names())})")
    method = raw["method"]
    if not isinstance(method, str):
        raise ConfigError(f"{where}.method must be a name, got {method!r}")
    kind = kind_of(method)
    _only(raw, (*COMMON_KEYS, *KIND_KEYS[kind]), "option", f"{where} (method {method!r})")
    settings = {k: v for k, v in raw.items() if k != "label"}
    label = raw.get("label") or _default_label(raw)
    if not isinstance(label, str) or not NAME.match(label):
        raise ConfigError(f"{where}.label {label!r} may hold only letters, digits, '.', '_' and '-'")
    entry = Entry(label, method, kind, settings)
    if "run" in raw:
        entry.run = _finished_run(raw["run"], f"{where}.run")
        _check_made_on(entry.run, base.train_cfg["data"]["dataset"], f"{where}.run")
    elif kind == "import":
        raise ConfigError(f"{where}: method 'run' imports a finished run: give its folder as 'run'")
    CHECKS[kind](entry, raw, base, classification, where)
    return entry


def _default_label(raw: dict) -> str:
    method = raw["method"]
    for key, tag in (("flops_ratio", "f"), ("params_ratio", "p"), ("latency_ms", "ms")):
        if key in raw:
            return f"{method}-{tag}{raw[key]:g}" if tag != "ms" else f"{method}-{raw[key]:g}ms"
    if method == "lowres" and "input_size" in raw:
        return f"lowres-{raw['input_size'] if isinstance(raw['input_size'], int) else raw['input_size'][0]}"
    if method == "run" and "run" in raw:
        return Path(str(raw["run"])).name
    return method


def _check_prune(entry: Entry, raw: dict, base: Entry, classification: bool, where: str) -> None:
    if entry.run is not None:
        return
    targets = [k for k in ("flops_ratio", "params_ratio", "latency_ms") if k in raw]
    if entry.method == "channel_scaling":
        if not classification:
            raise ConfigError(f"{where}: channel_scaling selects channels of a classifier; "
                              f"{base.train_cfg['data']['dataset']} is a segmentation dataset")
        if set(targets) - {"params_ratio"}:
            raise ConfigError(f"{where}: channel_scaling stops at params_ratio (or at no target)")
    elif len(targets) != 1:
        raise ConfigError(f"{where}: give exactly one target: flops_ratio, params_ratio or latency_ms")
    if "options" in raw and not isinstance(raw["options"], dict):
        raise ConfigError(f"{where}.options must be a mapping, e.g. {{batches: 16}}")
    _check_pruner_settings(raw, where)
    for key in ("finetune_epochs", "round_to"):
        if key in raw and not (isinstance(raw[key], int) and not isinstance(raw[key], bool) and raw[key] >= 0):
            raise ConfigError(f"{where}.{key} must be a non-negative integer, got {raw[key]!r}")
    if "finetune_lr" in raw and not (is_number(raw["finetune_lr"]) and raw["finetune_lr"] > 0):
        raise ConfigError(f"{where}.finetune_lr must be a positive number, got {raw['finetune_lr']!r}")
    if "schedule" in raw and raw["schedule"] not in ("oneshot", "iterative"):
        raise ConfigError(f"{where}.schedule={raw['schedule']!r} is not one of: oneshot, iterative")
    _only(raw.get("options") or {}, _prune_options(entry.method), "option", f"{where}.options")
    if entry.method == "channel_scaling" and raw.get("finetune_epochs"):
        raise ConfigError(f"{where}: channel_scaling trains in every round (options: {{epochs: N}}); "
                          "finetune_epochs does not apply")


def _check_pruner_settings(raw: dict, where: str) -> None:
    """The pruner's own checks, run when the plan is read rather than hours later."""
    from medslim.pruning.pruner import check_options, check_target

    try:
        if "flops_ratio" in raw or "params_ratio" in raw:
            check_target(raw.get("flops_ratio"), raw.get("params_ratio"))
        check_options(raw.get("scope", "global"), raw.get("max_fraction", 0.9), raw.get("steps", 1),
                      (raw.get("options") or {}).get("normalize"))
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err


def _prune_options(method: str) -> tuple[str, ...]:
    """What ``options`` may hold for a post-hoc method (its criterion's keywords, and the pruner's)."""
    from medslim.jobs import CS_OPTIONS
    from medslim.pruning.criteria import criterion_options

    if method == "channel_scaling":
        return CS_OPTIONS
    if method == "uniform":
        return ("latency_threads",)
    return (*criterion_options(method), "normalize", "latency_threads")


def _check_sauron(entry: Entry, raw: dict, base: Entry, classification: bool, where: str) -> None:
    from medslim.pruning import TRAINING_METHODS

    if entry.run is not None:
        return
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where}.options must be a mapping, e.g. {{lam: 0.5}}")
    allowed = [p for p in inspect.signature(TRAINING_METHODS["sauron"].__init__).parameters
               if p not in ("self", "example_input")]
    _only(options, tuple(allowed), "Sauron option", f"{where}.options")
    overrides = [*_override_list(raw.get("overrides"), where), "prune.method=sauron",
                 *(f"prune.{k}={_compact(v)}" for k, v in options.items())]
    entry.train_cfg = _derived_config(base, overrides, entry.label)


def _check_lowres(entry: Entry, raw: dict, base: Entry, classification: bool, where: str) -> None:
    from medslim.config import with_low_resolution

    if classification:
        raise ConfigError(f"{where}: lowres predicts masks; {base.train_cfg['data']['dataset']} "
                          "is a classification dataset")
    if entry.run is not None:
        return
    if "input_size" not in raw:
        raise ConfigError(f"{where}: lowres needs input_size (e.g. 32); output_size defaults to the "
                          "base model's data.size")
    if raw.get("head", "jnet") not in ("jnet", "bilinear"):
        raise ConfigError(f"{where}.head={raw['head']!r} is not one of: jnet, bilinear")
    cfg = _derived_config(base, _override_list(raw.get("overrides"), where), entry.label)
    output = raw.get("output_size", cfg["data"].get("size"))
    entry.train_cfg = with_low_resolution(cfg, raw["input_size"], output, head=raw.get("head"))


def _check_sshn(entry: Entry, raw: dict, base: Entry, classification: bool, where: str) -> None:
    from medslim.config import load_config
    from medslim.sshn_jobs import parse_phis

    if classification:
        raise ConfigError(f"{where}: sshn makes U-Nets; {base.train_cfg['data']['dataset']} is a "
                          "classification dataset")
    phis = raw.get("phis", "0.1,0.2,0.3,0.4,0.5")
    entry.phis = parse_phis(",".join(str(p) for p in phis) if isinstance(phis, list) else str(phis))
    if entry.run is not None:
        return
    dataset = base.train_cfg["data"]["dataset"]
    config = raw.get("config") or SSHN_CONFIGS.get(dataset)
    if config is None:
        raise ConfigError(f"{where}: give sshn a config (model.name: sshn) for dataset {dataset!r}")
    cfg = load_config(config, _override_list(raw.get("overrides"), where))
    if cfg["model"]["name"] != "sshn":
        raise ConfigError(f"{where}.config {config!r} has model.name {cfg['model']['name']!r}, not sshn")
    # the same data, split and sizes as the base, or the rows would not be comparable
    entry.data_overrides = [f"data.{k}={_compact(v)}" for k, v in base.train_cfg["data"].items()
                            if cfg["data"].get(k) != v]
    cfg["data"] = copy.deepcopy(base.train_cfg["data"])
    cfg.update(name=entry.label, seed=base.train_cfg["seed"])
    entry.train_cfg = cfg


def _check_import(entry: Entry, raw: dict, base: Entry, classification: bool, where: str) -> None:
    """Nothing beyond the common checks: the imported run is checked against the base when collected."""


CHECKS: dict[str, Callable] = {"prune": _check_prune, "sauron": _check_sauron, "lowres": _check_lowres,
                               "sshn": _check_sshn, "import": _check_import}


def _derived_config(base: Entry, overrides: list[str], label: str) -> dict:
    """The base's training config with ``overrides``: the same data, split and seed."""
    from medslim.config import parse_override, set_dotted, validate

    cfg = copy.deepcopy(base.train_cfg)
    for item in overrides:
        set_dotted(cfg, *parse_override(item))
    validate(cfg)
    cfg["name"] = label
    return cfg


# ---------------------------------------------------------------- running it

def run_compare(source: str | Path, overrides: list[str] = (), data_path: str | None = None,
                progress: bool = True) -> Path:
    """Make every model of the plan that is not made yet, measure each, write the table.

    The plots and HTML page come after, from the table (:func:`medslim.report.report_comparison`).
    """
    from medslim.progress import StageProgress

    plan = make_plan(source, overrides, data_path)
    check_output_folder(plan.folder, "output")
    _check_resumable(plan)
    plan.runs.mkdir(parents=True, exist_ok=True)
    write_json(plan.folder / "compare.json", plan.to_dict())
    stages = StageProgress("compare", expected_work(plan), enabled=progress)
    base_run = _make_base(plan, data_path, progress, stages)
    made: list[tuple[Entry, Path]] = [(plan.base, base_run)]
    for i, entry in enumerate(plan.entries, start=2):
        stages.begin(i, entry.label, _what(entry, plan))
        made += [(entry, run) for run in _make(entry, plan, base_run, data_path, progress)]
        stages.end()
    stages.begin(len(plan.entries) + 2, "cost", f"measuring {len(made)} models, {plan.measure['threads']} "
                 f"thread(s), {plan.measure['repeats']} repeats")
    signature = split_signature(base_run)
    rows = []
    for entry, run in made:
        stages.step(f"measuring {run.name}")
        rows.append(collect_row(run, entry, plan, base_run, signature))
    stages.end()
    table = build_table(rows, plan.dataset, signature, plan.measure, plan.name)
    write_table(table, plan.folder)
    stages.close()
    return plan.folder


def expected_work(plan: Plan) -> list[float]:
    """Each stage's expected work, in training epochs at the base's size: what the time left scales."""
    models = 1 + sum(len(e.phis) if e.kind == "sshn" else 1 for e in plan.entries)
    base = 0.0 if plan.base.run else float(plan.base.train_cfg["train"]["epochs"])
    return [base, *(_entry_work(e) for e in plan.entries), COST_WORK * models]


COST_WORK = 0.05  # measuring one model, in base epochs (about 2 s against 40 s on Kvasir-SEG, 1 thread)


def _entry_work(entry: Entry) -> float:
    s = entry.settings
    if entry.kind == "sshn":
        return COST_WORK * len(entry.phis) + (0.0 if entry.run else entry.train_cfg["train"]["epochs"])
    if entry.run is not None:
        return 0.0
    if entry.kind == "prune":
        if entry.method == "channel_scaling":
            options = s.get("options") or {}
            return float(options.get("rounds", 10) * options.get("epochs", 3))  # at most
        steps = s.get("steps", 4) if s.get("schedule") == "iterative" else 1
        return 0.2 + s.get("finetune_epochs", 0) * steps
    epochs = float(entry.train_cfg["train"]["epochs"])
    if entry.kind == "lowres":
        import math

        data = entry.train_cfg["data"]
        # fewer pixels, but per-batch overheads stay (32 of 128 px: 0.29 of a base epoch measured)
        return epochs * max(0.25, math.prod(data["size"]) / math.prod(data["label_size"]))
    return epochs


def _check_resumable(plan: Plan) -> None:
    """A label made with other settings is refused: its model would not be what the config says."""
    old_file = plan.folder / "compare.json"
    if not old_file.exists():
        return
    old = json.loads(old_file.read_text())
    if old.get("dataset") != plan.dataset:
        raise ConfigError(f"{plan.folder} holds a comparison on {old.get('dataset')!r}, not {plan.dataset!r}; "
                          "choose another name")
    new = plan.to_dict()
    made = {p.name.strip(".").removesuffix(".partial") for p in plan.runs.iterdir()} if plan.runs.is_dir() else set()
    changed = []
    if old.get("base") != new["base"] and made:
        changed.append("base")  # every other model derives from it or shares its data
    for label, settings in new["methods"].items():
        if label in old.get("methods", {}) and old["methods"][label] != settings:
            if any(name == label or name.startswith(label + "-phi") for name in made):
                changed.append(label)
    if changed:
        raise ConfigError(f"{plan.folder}: {', '.join(changed)} made with other settings "
                          f"(see {old_file}); give the changed methods new labels, or remove "
                          f"{plan.runs / changed[0] if changed[0] != 'base' else plan.folder} to make it again")


def _finished(run: Path) -> bool:
    """A run folder appears only when its command finished; results.json is its last file."""
    return (run / "results.json").exists()


def _what(entry: Entry, plan: Plan) -> str:
    if entry.run is not None:
        return f"importing {entry.run}"
    if all(_finished(run) for run in _outputs(entry, plan)):
        return "made before: kept"
    epochs = entry.settings.get("finetune_epochs")
    return {"prune": "pruning" + (f" + fine-tuning {epochs} epoch{'s' if epochs > 1 else ''}" if epochs else ""),
            "sauron": "training with Sauron", "sshn": f"training a hypernetwork, exporting {len(entry.phis)} U-Nets",
            "lowres": "training at low resolution", "import": "importing"}[entry.kind]


def _outputs(entry: Entry, plan: Plan) -> list[Path]:
    """The run folders an entry that is not imported makes."""
    if entry.kind == "sshn":
        return [plan.runs / _export_name(entry, phi) for phi in entry.phis]
    return [plan.runs / entry.label]


def _export_name(entry: Entry, phi: float) -> str:
    return f"{entry.label}-phi{phi:g}"


def _make_base(plan: Plan, data_path, progress: bool, stages) -> Path:
    made = _finished(plan.runs / plan.base.label)
    stages.begin(1, "base", "importing" if plan.base.run else
                 "made before: kept" if made else "training the base model")
    run = plan.base.run or _train(copy.deepcopy(plan.base.train_cfg), plan.runs, data_path, progress)
    stages.end()
    return run


def _train(cfg: dict, runs: Path, data_path, progress: bool, train=None) -> Path:
    """Train into ``runs/<name>``, or keep it if finished, or resume it if interrupted."""
    from medslim.jobs import train_run
    from medslim.runs import resumable

    cfg["output"] = str(runs)
    final = runs / cfg["name"]
    if _finished(final):
        return final
    return (train or train_run)(cfg, data_path=data_path, resume=resumable(runs, cfg["name"]), progress=progress)


def _make(entry: Entry, plan: Plan, base_run: Path, data_path, progress: bool) -> list[Path]:
    if entry.kind == "sshn":
        return _make_sshn(entry, plan, data_path, progress)
    if entry.run is not None:
        return [entry.run]
    if entry.kind == "prune":
        return [_make_pruned(entry, plan, base_run, data_path, progress)]
    return [_train(copy.deepcopy(entry.train_cfg), plan.runs, data_path, progress)]


def _make_pruned(entry: Entry, plan: Plan, base_run: Path, data_path, progress: bool) -> Path:
    from medslim.jobs import prune_run

    final = plan.runs / entry.label
    if _finished(final):
        return final
    s = entry.settings
    return prune_run(base_run, entry.method, s.get("flops_ratio"), s.get("params_ratio"),
                     s.get("finetune_epochs", 0), s.get("finetune_lr"),
                     s.get("steps", 4) if s.get("schedule") == "iterative" else 1, s.get("scope", "global"),
                     s.get("max_fraction", 0.9), s.get("round_to", 1), name=entry.label, output=plan.runs,
                     data_path=data_path, progress=progress, measure=False,
                     dice_tolerance=s.get("dice_tolerance"),
                     options={**(s.get("options") or {}),
                              **({"latency_ms": s["latency_ms"]} if "latency_ms" in s else {})} or None)


def _make_sshn(entry: Entry, plan: Plan, data_path, progress: bool) -> list[Path]:
    """The exported U-Nets; the hypernetwork is trained (or resumed) only while one is missing."""
    from medslim.sshn_jobs import export_sshn, train_sshn

    outputs = _outputs(entry, plan)
    missing = [(phi, run) for phi, run in zip(entry.phis, outputs) if not _finished(run)]
    if missing:
        hyper = entry.run or _train(copy.deepcopy(entry.train_cfg), plan.runs, data_path, progress,
                                    train=train_sshn)
        for phi, run in missing:
            export_sshn(hyper, phi, output=plan.runs, name=run.name, data_path=data_path)
    return outputs


# --------------------------------------------------------------- the table

def split_signature(run: Path) -> str:
    """What two runs must share to sit in one table: the same test cases (hash of their ids)."""
    import hashlib

    split = json.loads((run / "split.json").read_text())
    return hashlib.sha256(json.dumps(sorted(map(str, split["test"]))).encode()).hexdigest()[:16]


def check_compatible(run: Path, dataset: str, signature: str) -> None:
    """Refuse a run of another dataset, another test split, or a newer medslim format."""
    from medslim.artifacts import load_manifest

    load_manifest(run)  # refuses non-medslim and newer-format models with a clear message
    _require_dataset(run, json.loads((run / "results.json").read_text()).get("dataset"), dataset)
    if not (run / "split.json").exists() or split_signature(run) != signature:
        raise ConfigError(f"{run} was tested on other {dataset} cases (a different split): "
                          "its numbers would not be comparable")


def collect_row(run: Path, entry: Entry, plan: Plan, base_run: Path, signature: str) -> dict:
    """One table row: the run's test quality and its cost, measured here once (cached)."""
    check_compatible(run, plan.dataset, signature)
    label = run.name if entry.kind == "sshn" else entry.label
    cost = measure_cost(run, plan.folder / "costs" / f"{label}.json", plan.measure)
    row = quality_of(run)
    row.update(label=label, method=entry.method, kind=entry.kind, run=str(run),
               reproduce=reproduce_command(entry, run, plan, base_run), **cost)
    return row


def quality_of(run: Path) -> dict:
    test = json.loads((run / "results.json").read_text())["test"]
    keys = ("dice", "hd95", "dice_per_class", "hd95_per_class", "hd95_undefined", "accuracy", "auc", "n_cases")
    return {k: test[k] for k in keys if k in test}


def measure_cost(run: Path, cache: Path, settings: dict) -> dict:
    """Parameters, FLOPs, batch-1 latency (PyTorch and ONNX Runtime) and peak memory of a run's model."""
    import tempfile

    import torch

    from medslim.artifacts import load
    from medslim.cost import measure

    wanted = {k: settings[k] for k in ("threads", "repeats", "onnx")}
    if cache.exists():
        old = json.loads(cache.read_text())
        if old.get("settings") == wanted and old.get("weights_mtime") == _mtime(run):
            return old["cost"]
    model = load(run)
    example = torch.randn(*model.medslim_manifest["extra"]["input_shape"])
    threads = settings["threads"]
    with tempfile.TemporaryDirectory(prefix="medslim-compare-") as tmp:
        report = measure(model, example, threads=(threads,), onnx=settings["onnx"],
                         repeats=settings["repeats"], workdir=Path(tmp))
    onnx = (report.get("onnx_latency") or {}).get(str(threads))
    cost = {"params": report["params"], "flops": report["flops"], "input_shape": report["input_shape"],
            "threads": threads, "torch_ms": report["torch_latency"][str(threads)]["median_ms"],
            "ort_ms": onnx["median_ms"] if onnx else None,
            "peak_mb": report["total_bytes"] / 2**20,
            "machine": {k: report.get(k) for k in ("cpu", "cpu_count", "torch_version", "onnxruntime_version")}}
    write_json(cache, {"settings": wanted, "weights_mtime": _mtime(run), "cost": cost})
    return cost


def _mtime(run: Path) -> float:
    return (run / "model.safetensors").stat().st_mtime


def reproduce_command(entry: Entry, run: Path, plan: Plan, base_run: Path) -> str:
    """The single medslim command that makes this model (besides re-running the comparison)."""
    s = entry.settings
    if entry.run is not None and entry.kind != "sshn":
        return f"imported from {entry.run} (see its config.yaml)"
    if entry.kind == "train" or entry is plan.base:
        return _train_command(s["config"], s["overrides"], plan.runs, "base")
    if entry.kind == "prune":
        parts = [f"medslim prune {base_run} --method {entry.method}"]
        for key in ("flops_ratio", "params_ratio", "latency_ms", "finetune_epochs", "finetune_lr",
                    "schedule", "steps", "scope", "max_fraction", "round_to", "dice_tolerance"):
            if key in s:
                parts.append(f"--{key.replace('_', '-')} {s[key]}")
        parts += [f"--option {k}={v}" for k, v in (s.get("options") or {}).items()]
        return " ".join(parts + [f"--name {entry.label} --output {plan.runs}"])
    if entry.kind == "sshn":
        phi = json.loads((run / "results.json").read_text())["phi"]
        export = f"medslim sshn export {entry.run or plan.runs / entry.label} --phi {phi:g} --name {run.name}"
        if entry.run is not None:
            return export
        config = s.get("config") or SSHN_CONFIGS[plan.dataset]
        overrides = [*_override_list(s.get("overrides"), entry.label), *entry.data_overrides,
                     f"seed={entry.train_cfg['seed']}"]
        return f"{_train_command(config, overrides, plan.runs, entry.label).replace('train', 'sshn train', 1)}; {export}"
    base = plan.base.settings
    config, base_overrides = ((base["config"], base["overrides"]) if "config" in base
                              else (str(plan.base.run / "config.yaml"), []))
    extra = _override_list(s.get("overrides"), entry.label)
    if entry.kind == "sauron":
        extra += [f"prune.{k}={_compact(v)}" for k, v in (s.get("options") or {}).items()]
        return _train_command(config, [*base_overrides, *extra], plan.runs, entry.label) + " --prune sauron"
    data = entry.train_cfg["data"]
    sizes = (f" --input-size {' '.join(map(str, data['size']))}"
             f" --output-size {' '.join(map(str, data['label_size']))}")
    head = f" --head {s['head']}" if "head" in s else ""
    return _train_command(config, [*base_overrides, *extra], plan.runs, entry.label) + sizes + head


def _train_command(config: str, overrides: list[str], runs: Path, name: str) -> str:
    import shlex

    sets = "".join(f" -o {shlex.quote(o)}" for o in overrides)
    return f"medslim train {config}{sets} --name {name} --output {runs}"


def build_table(rows: list[dict], dataset: str, signature: str, measure: dict, name: str) -> dict:
    """The table: rows plus, per cost axis, which rows are on the Pareto front of quality."""
    metric = "dice" if any("dice" in r for r in rows) else "auc"
    for axis in COST_AXES:
        usable = [i for i, r in enumerate(rows) if r.get(axis) is not None and r.get(metric) is not None]
        front = {usable[i] for i in pareto_front([rows[j][axis] for j in usable],
                                                 [rows[j][metric] for j in usable])}
        for i, r in enumerate(rows):
            r[f"front_{axis}"] = i in front if i in usable else None
    return {"format": TABLE_FORMAT, "format_version": TABLE_VERSION, "medslim_version": __version__,
            "name": name, "dataset": dataset, "split_signature": signature, "metric": metric,
            "measure": measure, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows}


def read_table(folder: Path) -> dict:
    """A compare folder's table, refused when another medslim format wrote it."""
    file = folder / "table.json"
    try:
        table = json.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{folder} holds no table.json: it is not a finished medslim comparison") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{file} is not valid JSON: {err}") from None
    if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT:
        raise ConfigError(f"{file} is not a medslim comparison table")
    if table.get("format_version") != TABLE_VERSION:
        raise ConfigError(f"{file} has table format {table.get('format_version')}; this medslim "
                          f"({__version__}) reads format {TABLE_VERSION}: run `medslim compare` again")
    return table


def table_csv(table: dict) -> str:
    """One line per model; per-class columns as ``dice[class]``; the front flags as true/false."""
    rows = table["rows"]
    classes = sorted({c for r in rows for c in (r.get("dice_per_class") or {})})
    columns = ["label", "method", "kind", table["metric"]]
    columns += [c for c in ("dice", "hd95", "accuracy", "auc") if c != table["metric"] and any(c in r for r in rows)]
    columns += [f"dice[{c}]" for c in classes] + [f"hd95[{c}]" for c in classes]
    columns += ["params", "flops", "torch_ms", "ort_ms", "peak_mb", "threads"]
    columns += [f"front_{a}" for a in COST_AXES] + ["run", "reproduce"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for r in rows:
        values = []
        for c in columns:
            if c.startswith(("dice[", "hd95[")):
                values.append((r.get(c[:4] + "_per_class") or {}).get(c[5:-1], ""))
            else:
                value = r.get(c, "")
                values.append("" if value is None else value)
        writer.writerow(values)
    return out.getvalue()


def write_table(table: dict, folder: Path) -> None:
    write_json(folder / "table.json", table)
    write_text(folder / "table.csv", table_csv(table))
