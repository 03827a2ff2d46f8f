"""What ``medslim sshn`` does: train a scale-space hypernetwork, sweep phi, export a U-Net.

Training is an ordinary run whose model is ``sshn`` (:mod:`medslim.models.sshn`).
A sweep exports the plain U-Net at each phi and measures exactly what would be
deployed: Dice and HD95 on a split, parameters, FLOPs and ONNX Runtime latency;
it marks the Pareto front (FLOPs against Dice) and draws it. An export writes
a run folder holding that U-Net, so every other command (evaluate, cost,
export, prune) takes it like a run trained directly.
"""

from __future__ import annotations

import copy
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from medslim._io import atomic_path, write_json
from medslim.errors import ConfigError
from medslim.jobs import (check_data_fits, evaluate_model, input_shape_of, load_data, manifest_extra,
                          read_run_config, save_split_copy, write_config)

SWEEP_SPEC = re.compile(r"^\s*([0-9.]+)\s*:\s*([0-9.]+)\s*:\s*([0-9]+)\s*$")
PHI_MAX = 1.5
MIN_DEFAULT_PHI = 0.05


def parse_phis(text: str) -> list[float]:
    """``"0.05:0.5:20"`` (20 evenly spaced, both ends included) or ``"0.1,0.25,0.5"``."""
    match = SWEEP_SPEC.match(text)
    try:
        if match:
            low, high, n = float(match[1]), float(match[2]), int(match[3])
            if n < 1:
                raise ConfigError(f"--phis {text!r}: COUNT must be at least 1, got {n}")
            if high < low:
                raise ConfigError(f"--phis {text!r}: STOP ({high:g}) is below START ({low:g})")
            phis = [low] if n == 1 else [low + (high - low) * i / (n - 1) for i in range(n)]
        else:
            phis = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"--phis {text!r} is neither START:STOP:COUNT (e.g. 0.05:0.5:20) "
                          "nor a comma list (e.g. 0.1,0.25,0.5)") from None
    bad = [p for p in phis if not 0 < p <= PHI_MAX]
    if not phis or bad:
        raise ConfigError(f"--phis must lie in (0, {PHI_MAX}], got {bad or text!r}")
    return [round(p, 6) for p in phis]


def default_phis(phi_range, count: int = 20) -> list[float]:
    """``count`` factors evenly spaced across a training range, the sweep's default.

    A range that starts at 0 is swept from 0.05: near 0 every deep map sits at
    its size floor, so the smallest factors give the same network.
    """
    low, high = phi_range
    start = min(max(low, MIN_DEFAULT_PHI), high)
    return parse_phis(f"{start}:{high}:{count if start < high else 1}")


def load_sshn(run: Path):
    """The hypernetwork of a finished ``medslim sshn train`` run, and the run's config."""
    from medslim.artifacts import load
    from medslim.models.sshn import ScaleSpaceHyperNet

    cfg = read_run_config(run)
    model = load(run)
    if not isinstance(model, ScaleSpaceHyperNet):
        raise ConfigError(f"{run} holds a {cfg['model']['name']!r} model, not a scale-space "
                          "hypernetwork; train one with `medslim sshn train kvasir-sshn`")
    return model, cfg


def train_sshn(cfg: dict, **kwargs) -> Path:
    """``medslim train`` for a config whose model is ``sshn``."""
    from medslim.jobs import train_run

    if cfg["model"]["name"] != "sshn":
        raise ConfigError(f"medslim sshn train needs model.name: sshn, the config has "
                          f"{cfg['model']['name']!r} (built-ins: kvasir-sshn, hippocampus-sshn)")
    return train_run(cfg, **kwargs)


def sweep_run(run: Path, phis: list[float] | None = None, split: str = "val", threads: int = 1, repeats: int = 10,
              onnx: bool = True, hd95: bool | None = None, data_path: str | None = None,
              progress=None) -> dict[str, Any]:
    """Measure the exported U-Net at every phi; writes ``sweep-<split>.json`` and ``.png``.

    ``threads`` is what ONNX Runtime gets for the latency; the evaluation uses
    every core PyTorch is allowed.

    ``phis`` defaults to 20 factors across the run's training range
    (:func:`default_phis`). Choose phi on ``val``; report on ``test``.
    Factors outside the training range are measured too and flagged
    ``in_range: false``: the hypernetwork was never trained there, and the
    table shows how far that goes wrong.
    """
    from medslim.data.splits import load_split

    for name, value in (("--threads", threads), ("--repeats", repeats)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    sshn, cfg = load_sshn(run)
    phis = default_phis(sshn.phi_range) if phis is None else phis
    data, _ = load_data(cfg, data_path, load_split(run / "split.json"))
    check_data_fits(sshn, data.info, run)
    shape = input_shape_of(sshn, run)
    eval_cfg = dict(cfg["eval"], hd95=cfg["eval"]["hd95"] if hd95 is None else hd95)
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="medslim-sweep-") as tmp:
        for i, phi in enumerate(phis):
            row = measure_unet(sshn.export(phi), phi, data, eval_cfg, split, shape, threads, repeats,
                               Path(tmp) if onnx else None)
            rows.append({**row, "in_range": sshn.covers(phi)})
            if progress:
                progress(i + 1, len(phis), rows[-1])
    report = {"run": str(run), "split": split, "phi_range": list(sshn.phi_range),
              "input_shape": shape, "threads": threads, "rows": rows,
              "pareto_phis": _front_phis(rows), "seconds": time.perf_counter() - start}
    plot_sweep(report, run / f"sweep-{split}.png")
    write_json(run / f"sweep-{split}.json", report)
    return report


def measure_unet(unet, phi: float, data, eval_cfg: dict, split: str, shape, threads: int = 1,
                 repeats: int = 10, onnx_dir: Path | None = None) -> dict[str, Any]:
    """One sweep row: metrics on ``split``, size, FLOPs and (with ``onnx_dir``) ORT latency."""
    import torch

    from medslim.cost import count_flops, count_params
    from medslim.training.evaluate import evaluate_split

    metrics = evaluate_split(unet, data, eval_cfg, split)
    example = torch.zeros(*shape)
    row = {"phi": phi, **{k: v for k, v in metrics.items() if k != "n_cases"},
           "params": count_params(unet), "flops": count_flops(unet, example)}
    if onnx_dir is not None:
        from medslim.cost import export_onnx
        from medslim.cost.latency import latency_onnx

        file = onnx_dir / f"phi{phi:g}.onnx"
        # TorchScript export takes a fraction of a second; the dynamo exporter several
        export_onnx(unet, example, file, exporter="torchscript", check=False)
        row[f"ort_ms_{threads}t"] = latency_onnx(file, example, threads=threads,
                                                 repeats=repeats)["median_ms"]
    return row


def _front_phis(rows: list[dict]) -> list[float]:
    from medslim.pareto import pareto_front

    return [rows[i]["phi"] for i in pareto_front([r["flops"] for r in rows], [r["dice"] for r in rows])]


def plot_sweep(report: dict, path: Path, others: dict[str, list[tuple[float, float]]] | None = None) -> None:
    """Dice against GFLOPs, one point per phi, the Pareto front joined; ``others`` adds named point sets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for in_range, marker, label in ((True, "o", "SSHN, phi in training range"),
                                    (False, "x", "SSHN, phi outside it")):
        pts = [r for r in rows if r["in_range"] == in_range]
        if pts:
            ax.scatter([r["flops"] / 1e9 for r in pts], [r["dice"] for r in pts], marker=marker,
                       label=label, zorder=3)
    front = [r for r in rows if r["phi"] in set(report["pareto_phis"])]
    ax.plot([r["flops"] / 1e9 for r in front], [r["dice"] for r in front], "-", alpha=0.5,
            label="Pareto front")
    for name, pts in (others or {}).items():
        ax.scatter([f / 1e9 for f, _ in pts], [d for _, d in pts], marker="s", label=name, zorder=3)
    for r in rows:
        ax.annotate(f"{r['phi']:.2g}", (r["flops"] / 1e9, r["dice"]), fontsize=6,
                    textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel(f"Dice ({report['split']})")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def export_sshn(run: Path, phi: float, output: str | Path | None = None, name: str | None = None,
                overwrite: bool = False, data_path: str | None = None) -> Path:
    """Write a run folder holding the plain U-Net at ``phi``, with its test metrics."""
    from medslim.artifacts import save
    from medslim.data.splits import load_split
    from medslim.runs import RunDir

    sshn, cfg = load_sshn(run)
    if not 0 < phi <= PHI_MAX:
        raise ConfigError(f"--phi must lie in (0, {PHI_MAX}], got {phi}")
    out = RunDir(output or run.parent, name or f"{run.name}-phi{phi:g}")
    work = out.begin(overwrite=overwrite)
    try:
        unet = sshn.export(phi)
        data, _ = load_data(cfg, data_path, load_split(run / "split.json"))
        check_data_fits(sshn, data.info, run)
        plain = copy.deepcopy(cfg)
        plain["model"] = sshn.primary_spec(phi)
        plain["train"]["keep"] = "best"  # fine-tuning the exported U-Net is an ordinary training
        in_range = sshn.covers(phi)
        write_config(work / "config.yaml", plain)
        save_split_copy(run, work)
        save(unet, work, extra={**manifest_extra(cfg, data.info),
                                "sshn": {"source_run": str(run), "phi": phi, "in_range": in_range}})
        write_json(work / "results.json", {"dataset": cfg["data"]["dataset"], "source_run": str(run),
                                           "phi": phi, "in_range": in_range,
                                           "test": evaluate_model(unet, data, cfg, "test")})
    except BaseException:
        out.abandon()
        raise
    return out.commit()
