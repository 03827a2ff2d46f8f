"""Would a head that also sees the full-resolution image beat bilinear upsampling? (issue 6, a side question)

The J-Net head sees only the backbone's low-resolution logits, and on
Kvasir-SEG it is level with bilinear upsampling (``benchmarks/lowres.py``).
On a device the camera image exists at full size before it is shrunk, so a
head could read its edges. Two arms on the same seeded split, backbone
(``kvasir-unet``, widths 16-256) and settings, trained and scored at
``--output-size``; the network shrinks its input itself (area averaging) to
``--size``:

- ``bilinear``: the backbone's logits upsampled bilinearly;
- ``guided``: the same plus a residual refinement that reads the upsampled
  logits and the full-resolution image: 3x3 conv (classes + 3 -> 3), ReLU,
  3x3 conv (3 -> classes), the last one zero-initialised so training starts
  from the bilinear arm; 194 parameters for two classes.

Both are supervised at the input scale and at the output size, with equal
weights, as ``lowres.py``'s bilinear arm. This is a research probe, not a
medslim model: nothing here is saved as an artifact.

    python benchmarks/lowres_guided.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import exit_code  # noqa: E402
from _merge import earlier_report, merged_rows  # noqa: E402

ARMS = ("bilinear", "guided")


class ShrinkThenUpsample(nn.Module):
    """Area-shrink the image to ``size``, segment it, upsample the logits (optionally image-guided)."""

    deep_supervision_style = "equal"  # the loss weighs the output size and the input scale alike

    def __init__(self, backbone: nn.Module, size: int, classes: int, guided: bool, image_channels: int = 3):
        super().__init__()
        self.size, self.backbone = size, backbone
        self.guide = None
        if guided:
            self.guide = nn.Sequential(nn.Conv2d(classes + image_channels, 3, 3, padding=1), nn.ReLU(),
                                       nn.Conv2d(3, classes, 3, padding=1))
            nn.init.zeros_(self.guide[2].weight)  # start as the bilinear arm
            nn.init.zeros_(self.guide[2].bias)

    def forward(self, x: torch.Tensor):
        low = self.backbone(F.interpolate(x, size=(self.size, self.size), mode="area"))
        up = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.guide is not None:
            up = up + self.guide(torch.cat([up, x], dim=1))
        return [up, low] if self.training else up


def run(arm: str, seed: int, args) -> dict:
    from medslim.config import load_config
    from medslim.jobs import evaluate_model, load_data
    from medslim.models import build_model
    from medslim.training.loop import fit, seed_everything

    size = args.output_size
    cfg = load_config("kvasir-unet", [f"seed={seed}", f"data.size=[{size},{size}]",
                                      f"train.epochs={args.epochs}", f"train.threads={args.threads}"])
    data, _ = load_data(cfg, args.data)
    seed_everything(seed, False)
    spec = {**cfg["model"], "spatial_dims": 2, "in_channels": data.info.in_channels,
            "out_channels": data.info.num_classes}
    net = ShrinkThenUpsample(build_model(spec), args.size, data.info.num_classes, guided=arm == "guided",
                             image_channels=data.info.in_channels)
    name = f"{arm}-{args.size}-s{seed}"
    start = time.perf_counter()
    result = fit(net, data, cfg, Path(args.runs) / name)
    test = evaluate_model(net, data, cfg, "test")
    added = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("backbone."))
    return {"run": name, "arm": arm, "seed": seed, "size": args.size, "output_size": size,
            "epochs": args.epochs, "dice": test["dice"], "hd95": test["hd95"], "added_params": added,
            "best_epoch": result.best_epoch, "seconds": time.perf_counter() - start}


def setting(row: dict) -> tuple[int, int, int]:
    """What makes two rows comparable: input size, output size, epochs."""
    return row["size"], row["output_size"], row["epochs"]


def summary(rows: list[dict]) -> dict:
    """Mean Dice per arm and the paired guided - bilinear difference, over rows of one setting."""
    by = {(r["arm"], r["seed"]): r for r in rows}
    out = {}
    for arm in ARMS:
        dice = [r["dice"] for r in rows if r["arm"] == arm]
        if dice:
            out[arm] = {"dice": statistics.mean(dice), "sd": statistics.stdev(dice) if len(dice) > 1 else 0.0,
                        "n": len(dice)}
    paired = [by[("guided", s)]["dice"] - by[("bilinear", s)]["dice"]
              for s in sorted({r["seed"] for r in rows}) if ("guided", s) in by and ("bilinear", s) in by]
    if paired:
        out["guided_minus_bilinear"] = {"mean": statistics.mean(paired), "per_seed": paired}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--size", type=int, default=32, help="the size the backbone sees")
    p.add_argument("--output-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", help="folder holding kvasir-seg/")
    p.add_argument("--runs", default="benchmarks/runs/lowres-guided")
    p.add_argument("--out", default="benchmarks/results/lowres-guided.json")
    args = p.parse_args(argv)
    if min(args.size, args.output_size, args.epochs) < 1 or args.output_size % args.size:
        p.error("--size, --output-size and --epochs must be positive, --output-size a whole multiple of --size")
    out = Path(args.out)
    wanted = (args.size, args.output_size, args.epochs)
    rows = earlier_report(out).get("rows", [])
    for seed in args.seeds:
        for arm in args.arms:
            if any((r["arm"], r["seed"], setting(r)) == (arm, seed, wanted) for r in rows):
                continue  # measured before with these settings
            print(f"training {arm} at {args.size} -> {args.output_size}, seed {seed}", flush=True)
            rows = merged_rows(rows, [run(arm, seed, args)])
            write(out, rows)  # after every run, so a kill loses one run at most
    for r in rows:
        print(f"{r['arm']:9s} {r['size']:4d} seed {r['seed']}: Dice {r['dice']:.3f}  HD95 {r['hd95']:6.1f}  "
              f"+{r['added_params']} params  {r['seconds']:.0f} s")
    s = summary([r for r in rows if setting(r) == wanted])
    for arm in ARMS:
        if arm in s:
            print(f"{arm:9s} mean Dice {s[arm]['dice']:.3f} +- {s[arm]['sd']:.3f} ({s[arm]['n']} seeds)")
    if "guided_minus_bilinear" in s:
        d = s["guided_minus_bilinear"]
        print(f"guided - bilinear: {100 * d['mean']:+.1f} points ({', '.join(f'{100 * v:+.1f}' for v in d['per_seed'])})")
    return 0


def write(out: Path, rows: list[dict]) -> None:
    from medslim._io import write_json
    from medslim.cost.measurement import environment

    settings = sorted({setting(r) for r in rows})
    summaries = {"{}->{} {} epochs".format(*k): summary([r for r in rows if setting(r) == k]) for k in settings}
    write_json(out, {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "environment": environment(),
                     "summary": summaries, "rows": rows})


if __name__ == "__main__":
    sys.exit(exit_code(main))
