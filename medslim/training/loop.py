"""One training loop for segmentation and classification.

Seeded and deterministic on CPU: every epoch reseeds the augmentation and the
shuffling from (seed, epoch), so a run resumed after a kill at epoch k sees the
same batches as one that was never interrupted. A checkpoint is written after
every epoch; the best validation weights are kept separately.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from medslim._io import append_jsonl
from medslim.artifacts import load_tensors, save_tensors
from medslim.training.checkpoint import load_checkpoint, resize_to_checkpoint, save_checkpoint
from medslim.training.evaluate import evaluate_split
from medslim.training.hooks import AfterBackward, TrainingHook
from medslim.training.losses import make_loss

CHECKPOINT = "checkpoint"
BEST = "best.safetensors"
METRICS = "metrics.jsonl"


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    epochs_run: int
    train_seconds: float


def seed_everything(seed: int, deterministic: bool = True) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def make_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=True,
                               weight_decay=cfg["weight_decay"])
    cls = torch.optim.AdamW if cfg["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def learning_rate(cfg: dict, epoch: int) -> float:
    """The rate for ``epoch`` (0-based): poly as in nnU-Net, cosine, or constant."""
    frac = epoch / cfg["epochs"]
    if cfg["lr_schedule"] == "poly":
        return cfg["lr"] * (1 - frac) ** cfg["poly_exponent"]
    if cfg["lr_schedule"] == "cosine":
        return cfg["lr"] * 0.5 * (1 + math.cos(math.pi * frac))
    return cfg["lr"]


def score_of(metrics: dict) -> float:
    """The number that picks the best epoch: mean foreground Dice, or AUC."""
    return metrics["dice"] if "dice" in metrics else metrics["auc"]


def fit(model: nn.Module, data, cfg: dict, workdir: str | Path, resume: bool = False,
        progress: Callable[[dict], None] | None = None,
        after_backward: Callable[[nn.Module], None] | None = None,
        hook: TrainingHook | None = None) -> FitResult:
    """Train ``model`` in place; leaves the best weights loaded into it.

    ``after_backward(model)`` runs between ``backward`` and the optimizer step:
    the place for gradient regularisers such as network slimming's L1 on
    norm scales. ``hook`` (a :class:`TrainingHook`) is the general form, used
    by methods that prune while training; with ``hook.keep_last`` (or the
    config's ``train.keep: last``) the final weights are kept rather than the
    best epoch's.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tcfg = cfg["train"]
    if tcfg["threads"]:
        torch.set_num_threads(int(tcfg["threads"]))
    seed_everything(cfg["seed"], tcfg["deterministic"])
    hook = hook or (AfterBackward(after_backward) if after_backward else TrainingHook())
    resuming = resume and (workdir / CHECKPOINT).exists()
    if resuming:  # a model pruned during training resumes at its pruned widths
        resize_to_checkpoint(workdir / CHECKPOINT, model)
    optimizer = make_optimizer(model, tcfg)
    loss_fn = make_loss(data.info.task, tcfg["loss"], getattr(model, "deep_supervision_style", "halving"))
    state = {"epoch": 0, "best_score": -math.inf, "best_epoch": -1, "train_seconds": 0.0}
    if resuming:
        state = load_checkpoint(workdir / CHECKPOINT, model, optimizer)
        hook.load_state_dict(state.pop("hook", {}))
        _drop_metrics_after(workdir / METRICS, state["epoch"])
    hook.begin(model)
    keep_last = hook.keep_last or tcfg.get("keep") == "last"
    try:
        for epoch in range(state["epoch"], tcfg["epochs"]):
            _run_epoch(model, data, cfg, workdir, optimizer, loss_fn, hook, state, epoch, progress,
                       keep_last)
    finally:
        hook.close()
    if (workdir / BEST).exists() and not keep_last:
        model.load_state_dict(load_tensors(workdir / BEST))
    return FitResult(state["best_epoch"], state["best_score"], state["epoch"], state["train_seconds"])


def _run_epoch(model, data, cfg, workdir, optimizer, loss_fn, hook, state, epoch, progress,
               keep_last: bool) -> None:
    """One epoch: train, let the hook act, validate, log, checkpoint."""
    tcfg = cfg["train"]
    start = time.perf_counter()
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(tcfg, epoch)
    train_loss = _train_epoch(model, data, loss_fn, optimizer, cfg, epoch, progress, hook)
    record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss,
                              "lr": optimizer.param_groups[0]["lr"]}
    last = epoch + 1 == tcfg["epochs"]
    record.update(hook.end_epoch(model, optimizer, epoch + 1, train_loss, last))
    if (epoch + 1) % tcfg["val_every"] == 0 or last:
        val = evaluate_split(model, data, cfg["eval"], "val", hd95=False)
        record["val"] = val
        # keeping the last weights makes the last epoch the "best" one
        if score_of(val) > state["best_score"] or (keep_last and last):
            state["best_score"], state["best_epoch"] = score_of(val), epoch + 1
            if not keep_last:
                save_tensors(workdir / BEST, model.state_dict())
    state["train_seconds"] += time.perf_counter() - start
    state["epoch"] = epoch + 1
    record["epoch_seconds"] = time.perf_counter() - start
    # metrics first, then the checkpoint: a resume drops lines past the checkpoint
    append_jsonl(workdir / METRICS, record)
    save_checkpoint(workdir / CHECKPOINT, model, optimizer, {**state, "hook": hook.state_dict()})
    if progress:
        progress({"event": "epoch", **record, "epochs": tcfg["epochs"]})


def _train_epoch(model, data, loss_fn, optimizer, cfg, epoch, progress, hook: TrainingHook) -> float:
    tcfg = cfg["train"]
    epoch_seed = cfg["seed"] * 100_003 + epoch
    data.train.reseed(epoch_seed)
    torch.manual_seed(epoch_seed)
    loader = make_loader(data.train, tcfg, epoch_seed)
    model.train()
    keep_frozen_norms_fixed(model)
    total, count = 0.0, 0
    steps = tcfg["iterations_per_epoch"] or len(loader)
    batches = iter(loader)
    for step in range(steps):
        try:
            batch = next(batches)
        except StopIteration:  # iterations_per_epoch longer than one pass
            batches = iter(loader)
            batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch["image"]), batch["label"])
        extra = hook.extra_loss()
        if extra is not None:
            loss = loss + extra
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss.item()} at epoch {epoch + 1}, "
                                     f"step {step + 1}; try a lower train.lr")
        loss.backward()
        hook.after_backward(model)
        optimizer.step()
        total += loss.item()
        count += 1
        if progress:
            progress({"event": "step", "epoch": epoch + 1, "step": step + 1, "steps": steps,
                      "loss": total / count})
    return total / max(count, 1)


def keep_frozen_norms_fixed(model: nn.Module) -> None:
    """Norms whose parameters are all frozen run in eval mode: a frozen backbone keeps its statistics.

    Otherwise ``model.train()`` would let batch norm overwrite the pretrained
    running statistics with those of the new data, changing a network that is
    meant to stay as it was.
    """
    for module in frozen_norms(model):
        module.eval()


def frozen_norms(model: nn.Module) -> list[nn.Module]:
    """Batch norms with affine parameters, all of them frozen (the ones a frozen backbone keeps)."""
    from torch.nn.modules.batchnorm import _NormBase

    found = []
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, _NormBase) and params and not any(p.requires_grad for p in params):
            found.append(module)
    return found


@torch.no_grad()
def reestimate_frozen_norm_stats(model: nn.Module, dataset, tcfg: dict, seed: int) -> int:
    """Replace the running statistics of the frozen norms by those of ``dataset`` (AdaBN).

    Pretrained statistics describe the source images; a frozen backbone fed
    another modality normalises its features with the wrong means and
    variances. One pass over the training split, in ``tcfg`` batches with
    the norms in train mode and a cumulative average (``momentum=None``),
    gives each norm the statistics of the target data it now sees. No
    parameter changes. Returns the number of norms re-estimated.
    """
    norms = [norm for norm in frozen_norms(model) if norm.track_running_stats]  # not instance norm
    if not norms:
        return 0
    was_training = model.training
    model.eval()  # dropout and unfrozen layers as at inference; only the frozen norms learn
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    for batch in make_loader(dataset, tcfg, seed):
        model(batch["image"])
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.train(was_training)
    keep_frozen_norms_fixed(model)
    return len(norms)


def make_loader(dataset, tcfg: dict, seed: int):
    """The shuffled training loader of one epoch, seeded."""
    gen = torch.Generator().manual_seed(seed)
    drop_last = len(dataset) > tcfg["batch_size"]  # a batch of 1 breaks batch norm
    return torch.utils.data.DataLoader(dataset, batch_size=tcfg["batch_size"], shuffle=True,
                                       generator=gen, num_workers=0, drop_last=drop_last,
                                       collate_fn=_collate)


def _collate(items: list[dict]) -> dict:
    return {"image": torch.stack([it["image"] for it in items]),
            "label": torch.stack([it["label"] for it in items]),
            "id": [it["id"] for it in items]}


def _drop_metrics_after(path: Path, epoch: int) -> None:
    """Keep only metric lines of epochs the checkpoint covers (a kill can fall between)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln).get("epoch", 0) <= epoch]
    if len(kept) != len(lines):
        from medslim._io import write_text

        write_text(path, "".join(ln + "\n" for ln in kept))
