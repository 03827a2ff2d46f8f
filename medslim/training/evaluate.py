"""Evaluation: Dice and HD95 per class (MONAI metrics), accuracy and AUC.

3D volumes larger than the training patch go through MONAI's sliding-window
inference; predictions are cropped back to the volume's original shape before
scoring, so padding never counts.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
from torch import nn


def predict_logits(model: nn.Module, image: torch.Tensor, patch_size: Sequence[int] | None,
                   overlap: float = 0.25) -> torch.Tensor:
    """Logits for a batch; sliding windows where the image exceeds the patch."""
    spatial = image.shape[2:]
    if patch_size is not None and len(spatial) == 3 and any(s > p for s, p in zip(spatial, patch_size)):
        from monai.inferers import sliding_window_inference

        return sliding_window_inference(image, roi_size=list(patch_size), sw_batch_size=4,
                                        predictor=model, overlap=overlap, mode="gaussian")
    return model(image)


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, items: Sequence[dict], num_classes: int,
                          class_names: Sequence[str], patch_size: Sequence[int] | None = None,
                          overlap: float = 0.25, hd95: bool = True, batch_size: int = 16) -> dict:
    """Per-class Dice and HD95 (in voxels) over ``items``; background excluded.

    An empty prediction for a class present in the ground truth gets Dice 0 and
    no HD95 (counted in ``hd95_undefined``); a class absent from both counts as
    Dice 1, as nnU-Net does.
    """
    from monai.metrics import compute_dice, compute_hausdorff_distance

    was_training = model.training
    model.eval()
    dices, hds = [], []
    for batch in _batches(items, batch_size):
        image = torch.stack([it["image"] for it in batch])
        logits = predict_logits(model, image, patch_size, overlap)
        for it, lg in zip(batch, logits):
            pred, label = _crop(lg.argmax(0), it), _crop(it["label"][0], it)
            p1 = _onehot(pred, num_classes)
            g1 = _onehot(label, num_classes)
            dices.append(compute_dice(p1, g1, include_background=False, ignore_empty=False)[0].numpy())
            if hd95:
                hds.append(_hd95(compute_hausdorff_distance, p1, g1))
    model.train(was_training)
    return _summarise(np.array(dices), np.array(hds) if hd95 else None, class_names[1:])


def _hd95(fn, p1: torch.Tensor, g1: torch.Tensor) -> np.ndarray:
    out = []
    for c in range(1, p1.shape[1]):
        if p1[0, c].sum() == 0 or g1[0, c].sum() == 0:
            out.append(math.nan)  # undefined when either side is empty
        else:
            with warnings.catch_warnings():
                # MONAI 1.5+ warns about its own internal argument on every call
                warnings.simplefilter("ignore", FutureWarning)
                hd = fn(p1[:, c:c + 1], g1[:, c:c + 1], include_background=True, percentile=95)
            out.append(float(hd[0, 0]))
    return np.array(out)


def _summarise(dice: np.ndarray, hd: np.ndarray | None, names: Sequence[str]) -> dict:
    result = {"n_cases": int(len(dice)), "dice_per_class": {}, "dice": float(np.mean(dice))}
    for i, name in enumerate(names):
        result["dice_per_class"][name] = float(np.mean(dice[:, i]))
    if hd is not None:
        result["hd95_per_class"] = {}
        for i, name in enumerate(names):
            col = hd[:, i]
            result["hd95_per_class"][name] = float(np.nanmean(col)) if np.isfinite(col).any() else math.nan
        defined = [v for v in result["hd95_per_class"].values() if not math.isnan(v)]
        result["hd95"] = float(np.mean(defined)) if defined else math.nan
        result["hd95_undefined"] = int(np.isnan(hd).sum())
    return result


@torch.no_grad()
def evaluate_classification(model: nn.Module, items: Sequence[dict], num_classes: int,
                            batch_size: int = 64) -> dict:
    """Accuracy and ROC AUC (one-vs-rest macro average for more than two classes)."""
    from monai.metrics import compute_roc_auc

    was_training = model.training
    model.eval()
    probs, labels = [], []
    for batch in _batches(items, batch_size):
        logits = model(torch.stack([it["image"] for it in batch]))
        probs.append(torch.softmax(logits.float(), dim=1))
        labels.append(torch.stack([it["label"].reshape(()) for it in batch]))
    model.train(was_training)
    prob, label = torch.cat(probs), torch.cat(labels)
    accuracy = float((prob.argmax(1) == label).float().mean())
    if num_classes == 2:
        auc = compute_roc_auc(prob[:, 1], label)
    else:
        auc = compute_roc_auc(prob, _onehot(label, num_classes), average="macro")
    return {"n_cases": int(len(label)), "accuracy": accuracy, "auc": float(auc)}


def evaluate_split(model: nn.Module, data, eval_cfg: dict, split: str = "test",
                   hd95: bool | None = None) -> dict:
    """Metrics of ``model`` on one split of a :class:`TaskData` (``val`` or ``test``).

    ``hd95`` defaults to ``eval_cfg["hd95"]``; validation during training
    turns it off because it costs more than the Dice.
    """
    from medslim.errors import ConfigError

    if split not in ("val", "test"):
        raise ConfigError(f"unknown split {split!r}; choose val or test")
    items, info = getattr(data, split), data.info
    if info.task == "classification":
        return evaluate_classification(model, items, info.num_classes, eval_cfg["batch_size"])
    return evaluate_segmentation(model, items, info.num_classes, info.class_names,
                                 patch_size=info.input_size, overlap=eval_cfg["overlap"],
                                 hd95=eval_cfg["hd95"] if hd95 is None else hd95,
                                 batch_size=eval_cfg["batch_size"])


def _batches(items: Sequence[dict], size: int):
    """Consecutive items of one shape, at most ``size`` at a time."""
    batch: list[dict] = []
    for it in items:
        if batch and (len(batch) == size or it["image"].shape != batch[0]["image"].shape):
            yield batch
            batch = []
        batch.append(it)
    if batch:
        yield batch


def _crop(t: torch.Tensor, item: dict) -> torch.Tensor:
    shape = item.get("shape")
    if shape is None:
        return t
    return t[tuple(slice(0, s) for s in shape)]


def _onehot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(*S) label map -> (1, C, *S) float one-hot; (N,) labels -> (N, C)."""
    oh = torch.nn.functional.one_hot(label.long(), num_classes).float()
    if label.dim() == 1:
        return oh
    return oh.movedim(-1, 0)[None]
