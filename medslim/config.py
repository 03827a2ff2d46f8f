"""Run configuration: YAML files with ``key.sub=value`` command-line overrides.

A config has six sections (data, model, train, eval, cost, prune) plus a run name,
a seed and an output folder. Unknown keys are refused here for the sections
this module owns; ``data`` and ``model`` are checked by their builders.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from medslim.errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "name": None,
    "seed": 0,
    "output": "runs",
    "data": {"dataset": "kvasir-seg"},
    "model": {"name": "unet"},
    "train": {
        "epochs": 30,
        "batch_size": 8,
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 3e-5,
        "momentum": 0.99,
        "lr_schedule": "poly",
        "poly_exponent": 0.9,
        "loss": "auto",
        "val_every": 1,
        "iterations_per_epoch": None,
        "threads": None,
        "deterministic": True,
        "sparsity": 0.0,
        # "best": the weights of the best validation epoch; "last": the final ones
        # (for models validated at one setting but trained for many, e.g. SSHN)
        "keep": "best",
        # transfer learning: weights to start from (a medslim model folder, a
        # .safetensors file or a PyTorch state dict; the classifier head starts
        # fresh), and whether only the head trains
        "pretrained": None,
        "freeze_backbone": False,
        # the running statistics of a frozen backbone's batch norms: "source"
        # keeps the pretrained ones; "target" re-estimates them once on the
        # training split before training (AdaBN), no weight changes
        "frozen_norm_stats": "source",
    },
    "eval": {
        "overlap": 0.25,
        "hd95": True,
        "batch_size": 16,
    },
    "cost": {
        "threads": [1, 2],
        "repeats": 20,
        "onnx": True,
    },
    # pruning while training: method null (none) or "sauron", plus that method's options
    "prune": {"method": None},
}
SECTIONS_CHECKED_HERE = ("train", "eval", "cost")
CHOICES = {
    ("train", "optimizer"): ("adam", "adamw", "sgd"),
    ("train", "lr_schedule"): ("poly", "constant", "cosine"),
    ("train", "loss"): ("auto", "dice_ce", "dice", "ce"),
    ("train", "keep"): ("best", "last"),
    ("train", "frozen_norm_stats"): ("source", "target"),
}


def builtin_config(name: str) -> Path:
    """Path of a config shipped with medslim (``medslim/configs/<name>.yaml``)."""
    path = Path(str(resources.files("medslim") / "configs" / f"{name}.yaml"))
    if not path.exists():
        names = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"no built-in config {name!r}; built-in configs: {', '.join(names)}")
    return path


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict:
    """Defaults, then the YAML file (a path or a built-in name), then overrides."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        cfg = merge(cfg, read_yaml(_config_path(path)))
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(cfg, key, value)
    validate(cfg)
    return cfg


def read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    import yaml

    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value, e.g. train.epochs=5")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), _number_or_str(value)


def _number_or_str(value: Any) -> Any:
    # YAML 1.1 reads "1e-4" as a string; users mean a number
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = cfg
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "model":
            out[key] = merge(out[key], value)
        else:
            # a model section replaces the default one: its keys depend on the network
            out[key] = copy.deepcopy(value)
    return out


def validate(cfg: dict) -> None:
    allowed_top = set(DEFAULTS)
    unknown = sorted(set(cfg) - allowed_top)
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}; allowed: {', '.join(sorted(allowed_top))}")
    for section in SECTIONS_CHECKED_HERE:
        if not isinstance(cfg[section], dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        extra = sorted(set(cfg[section]) - set(DEFAULTS[section]))
        if extra:
            raise ConfigError(f"unknown option '{section}.{extra[0]}'; allowed: "
                              + ", ".join(f"{section}.{k}" for k in DEFAULTS[section]))
    for (section, key), choices in CHOICES.items():
        if cfg[section][key] not in choices:
            raise ConfigError(f"{section}.{key}={cfg[section][key]!r} is not one of: {', '.join(choices)}")
    for key in ("epochs", "batch_size", "val_every"):
        value = cfg["train"][key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {value!r}")
    _check_numbers(cfg)
    if not isinstance(cfg["data"], dict) or "dataset" not in cfg["data"]:
        raise ConfigError("config section 'data' needs a 'dataset' key")
    if not isinstance(cfg["prune"], dict) or "method" not in cfg["prune"]:
        raise ConfigError("config section 'prune' needs a 'method' key (null for no pruning)")
    if not isinstance(cfg["model"], dict) or "name" not in cfg["model"]:
        raise ConfigError("config section 'model' needs a 'name' key")


# (section, key): (smallest allowed, whether the smallest itself is allowed)
NUMBERS = {("train", "lr"): (0, False), ("train", "weight_decay"): (0, True),
           ("train", "momentum"): (0, True), ("train", "poly_exponent"): (0, True),
           ("train", "sparsity"): (0, True), ("eval", "overlap"): (0, True)}


def _check_numbers(cfg: dict) -> None:
    # caught here, a bad learning rate names its option instead of failing deep in torch
    for (section, key), (low, closed) in NUMBERS.items():
        value = cfg[section][key]
        ok = is_number(value) and (value >= low if closed else value > low)
        if not ok:
            bound = f">= {low}" if closed else f"> {low}"
            raise ConfigError(f"{section}.{key} must be a number {bound}, got {value!r}")
    if cfg["eval"]["overlap"] >= 1:
        raise ConfigError(f"eval.overlap must be below 1, got {cfg['eval']['overlap']!r}")


def is_number(value: Any) -> bool:
    """A real int or float (not a bool, not NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _config_path(path: str | Path) -> Path:
    p = Path(path)
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in str(path):
        return p
    return builtin_config(str(path))


def with_low_resolution(cfg: dict, input_size: list[int], output_size: list[int],
                        head: str | None = None) -> dict:
    """The config for training on ``input_size`` images against ``output_size`` masks.

    The config's network becomes the backbone of a ``lowres`` model (the
    J-Net head, or bilinear upsampling with ``head="bilinear"``). A single
    number means a square (``32`` -> ``[32, 32]``).
    """
    cfg = copy.deepcopy(cfg)
    size, label_size = _square(input_size, "--input-size"), _square(output_size, "--output-size")
    cfg["data"]["size"], cfg["data"]["label_size"] = size, label_size
    model = cfg["model"]
    if model.get("name") != "lowres":
        model = {"name": "lowres", "backbone": model}
    if head is not None:
        model["head"] = head
    model.pop("factor", None)  # follows from the sizes
    cfg["model"] = model
    return cfg


def _square(size: list[int] | int, option: str) -> list[int]:
    size = [size] if isinstance(size, int) else list(size)
    if not size or len(size) > 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ConfigError(f"{option} must be one or two positive integers, got {size}")
    return size * 2 if len(size) == 1 else size
