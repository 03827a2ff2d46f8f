"""Pruning engine speed and the speed-up it buys.

1. Time to analyse (trace the dependency graph) and prune (L1 scores, target
   search, surgery) a 3D U-Net with 5 levels and 32 base channels.
   Target (issue 3): under 2 s on this machine.
2. ONNX Runtime latency at batch 1 of a U-Net before and after pruning to 25%
   of its FLOPs, with 1 and 2 threads, 2D (1x3x128x128) and 3D (1x1x48x64x48).
   Target: speed-up at least 0.8x the FLOPs reduction (>= 3.2x at 25%).

    python benchmarks/engine.py --repeats 30
    python benchmarks/engine.py --repeats 30 --round-to 8 --out benchmarks/results/engine-round8.json
    python benchmarks/engine.py --repeats 30 --round-to 8 --profile --out /tmp/engine.json   # where the time goes
    python benchmarks/engine.py --repeats 30 --round-to 8 --conv-widths 8 16 24 32 48 64 --out /tmp/engine.json
    python benchmarks/engine.py --repeats 20 --level-widths 16,32,64,128,160 16,48,64,128,160 --out /tmp/engine.json

Full and pruned model are timed in turns (one timed call each per round, after
five untimed ones with 2 threads), so the machine's load hits both alike;
"paired" is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

CASES = {
    "2D": ({"name": "unet", "spatial_dims": 2, "in_channels": 3, "out_channels": 2,
            "channels": [32, 64, 128, 256, 320]}, (1, 3, 128, 128)),
    "3D": ({"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
            "channels": [32, 64, 128, 256, 320]}, (1, 1, 48, 64, 48)),
}


def settle_calls(threads: int) -> int:
    """Untimed calls before each timed one: with a thread pool, the other session's workers must go idle."""
    return 0 if threads == 1 else 5


def timed_in_turns(paths: dict, x, threads: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of each timed call of every ONNX file's session, all timed in turns at ``threads``."""
    from medslim.cost.latency import ort_feeds, ort_session
    from onnx_timing import sessions_in_turns

    sessions = {}
    for k, path in paths.items():
        session = ort_session(path, threads)
        sessions[k] = (session, ort_feeds(session, x))
    return sessions_in_turns(sessions, repeats, settle=settle_calls(threads))


def time_prune(spec, shape, ratio, repeats=3) -> dict:
    from medslim.models import build_model
    from medslim.pruning import DependencyGraph, prune

    model = build_model(spec).eval()
    x = torch.zeros(*shape)
    graph_s, total_s = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        DependencyGraph(model, x)
        graph_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        prune(model, x, method="l1", flops_ratio=ratio)
        total_s.append(time.perf_counter() - t)
    return {"graph_seconds": statistics.median(graph_s), "prune_seconds": statistics.median(total_s)}


def latency(spec, shape, ratio, threads, repeats, round_to=1, profile=False) -> dict:
    """ONNX Runtime ms of the U-Net and its L1-pruned copy, timed in turns (one call each per round).

    Interleaving keeps the shared machine's slow minutes from landing on one
    model only; the per-round ratio pairs the two timed calls of a round.
    With more than one thread each timed call follows five untimed ones, which
    let the other session's spinning worker threads go idle.
    """
    from medslim.cost import count_flops, export_onnx
    from medslim.models import build_model
    from medslim.pruning import prune

    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = torch.randn(*shape)
    # round_to=8 keeps widths whole multiples of ONNX Runtime's channel blocks
    small = prune(model, x, method="l1", flops_ratio=ratio, round_to=round_to).eval()
    out = {"flops_ratio": count_flops(small, x) / count_flops(model, x)}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {k: export_onnx(m, x, Path(tmp) / f"{k}.onnx")["path"] for k, m in (("full", model), ("pruned", small))}
        for t in threads:
            times = timed_in_turns(paths, x, t, repeats)
            full, pruned = (1e3 * statistics.median(times[k]) for k in ("full", "pruned"))
            paired = statistics.median(f / p for f, p in zip(times["full"], times["pruned"]))
            out[f"{t}t"] = {"full_ms": full, "pruned_ms": pruned, "speedup": full / pruned,
                            "speedup_paired": paired}
        if profile:
            for t in threads:
                out[f"profile_{t}t"] = {k: op_profile(path, x, Path(tmp) / f"{k}-{t}t", t)
                                        for k, path in paths.items()}
    return out


def op_profile(onnx_path, x, prefix, threads=1, warmup=3, calls=10) -> dict[str, float]:
    """Milliseconds per call in each ONNX operator type, from ONNX Runtime's own profiler.

    ``"(whole call)"`` is the wall time of a call as the profiler saw it; the
    operators' sum can differ from it by a few per cent either way.
    """
    import json

    from medslim.cost.latency import ort_feeds, ort_session

    if calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
    session = ort_session(onnx_path, threads, profile_prefix=str(prefix))
    feeds = ort_feeds(session, x)
    for _ in range(warmup + calls):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"),
                  key=lambda e: e["ts"])[warmup:]  # the warm-up calls' allocations stay out
    if len(runs) != calls:
        raise RuntimeError(f"ONNX Runtime's profile of {onnx_path} holds {len(runs) + warmup} calls, "
                           f"not {warmup + calls}")
    first_timed = runs[0]["ts"]
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_timed:
            op = e["args"]["op_name"]
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1e3 / calls
    per_op = dict(sorted(per_op.items(), key=lambda kv: -kv[1]))
    return {**per_op, "(whole call)": statistics.median(e["dur"] / 1e3 for e in runs)}


def conv_speed(widths, spatial, repeats, threads=1) -> list[dict]:
    """ONNX Runtime time and GFLOP/s of one 3x3(x3) convolution, w -> w channels, at each width.

    The single layer behind the 3D shortfall: if narrow convolutions ran as
    fast per FLOP as wide ones, halving every width would quarter the time.
    """
    from medslim.cost import count_flops, export_onnx
    from medslim.cost.latency import ort_feeds, ort_session
    from onnx_timing import sessions_in_turns

    conv = torch.nn.Conv3d if len(spatial) == 3 else torch.nn.Conv2d
    rows, sessions = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in widths:
            x = torch.randn(1, w, *spatial)
            layer = conv(w, w, 3, padding=1).eval()
            path = export_onnx(layer, x, Path(tmp) / f"w{w}.onnx", exporter="torchscript")["path"]
            session = ort_session(path, threads)
            sessions[w] = (session, ort_feeds(session, x))
            rows.append({"width": w, "flops": count_flops(layer, x)})
        times = sessions_in_turns(sessions, repeats, settle=settle_calls(threads))
    for row in rows:
        row["ms"] = 1e3 * statistics.median(times[row["width"]])
        row["gflops_per_s"] = row["flops"] / row["ms"] / 1e6
    return rows


def level_widths(lists, shape, ratio, threads, repeats) -> dict:
    """ONNX Runtime speed of the 3D U-Net with other widths per level, timed in turns with the full one.

    The question behind it: could a pruner that allocates the FLOPs budget
    differently across levels (a latency lookup table, as HALP) beat the
    uniform allocation at the same FLOPs? ``speed_per_flop`` is the speed-up
    times the FLOPs kept: 1.0 would mean the smaller network runs as fast per
    FLOP as the full one. ``widest_full_res`` is the widest full-resolution
    level (a multiple of 8) that fits ``ratio`` with every other level at 8
    channels: no allocation at that ratio can keep that level any wider.
    """
    from medslim.cost import count_flops, export_onnx
    from medslim.models import build_model

    spec, _ = CASES["3D"]
    full_widths = spec["channels"]
    x = torch.randn(*shape)

    def unet(widths):
        torch.manual_seed(0)
        return build_model({**spec, "channels": list(widths)}).eval()

    flops0 = count_flops(unet(full_widths), x)
    widest = max((w for w in range(8, full_widths[0] + 1, 8)
                  if count_flops(unet([w] + [8] * (len(full_widths) - 1)), x) / flops0 <= ratio), default=None)
    models = {"full": full_widths, **{",".join(map(str, w)): w for w in lists}}
    rows, paths = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, widths in models.items():
            net = unet(widths)
            rows[k] = {"widths": list(widths), "flops_ratio": count_flops(net, x) / flops0}
            paths[k] = export_onnx(net, x, Path(tmp) / f"{len(paths)}.onnx")["path"]
        for t in threads:
            times = timed_in_turns(paths, x, t, repeats)
            for k in paths:
                paired = statistics.median(f / m for f, m in zip(times["full"], times[k]))
                rows[k][f"{t}t"] = {"ms": 1e3 * statistics.median(times[k]), "speedup_paired": paired,
                                    "speed_per_flop": paired * rows[k]["flops_ratio"]}
    return {"ratio": ratio, "widest_full_res": widest, "rows": list(rows.values())}


def widths_list(text: str) -> list[int]:
    widths = [positive_int(w) for w in text.split(",")]
    if len(widths) != len(CASES["3D"][0]["channels"]):
        raise argparse.ArgumentTypeError(f"{text}: give {len(CASES['3D'][0]['channels'])} widths, one per level")
    return widths


def print_profiles(profiles: dict[str, dict]) -> None:
    """Per case and thread count, ms per call and share of each operator type, full and pruned."""
    for name, prof in profiles.items():
        full, pruned = prof["full"], prof["pruned"]
        tf = sum(v for k, v in full.items() if k != "(whole call)")
        tp = sum(v for k, v in pruned.items() if k != "(whole call)")
        print(f"\n{name}, ONNX Runtime profile: {'full ms':>9s} {'share':>6s} {'pruned ms':>10s} "
              f"{'share':>6s} {'speed-up':>8s}")
        for op in [*full, *(k for k in pruned if k not in full)]:  # an operator may be in one model only
            if op == "(whole call)":
                continue
            f, q = full.get(op, 0.0), pruned.get(op, 0.0)
            print(f"  {op:30s} {f:9.2f} {100 * f / tf:5.1f}% {q:10.2f} {100 * q / tp:5.1f}% "
                  f"{f / q if q else float('nan'):7.2f}x")
        print(f"  {'all operators':30s} {tf:9.2f} {'':6s} {tp:10.2f} {'':6s} {tf / tp:7.2f}x")
        wf, wp = full["(whole call)"], pruned["(whole call)"]
        print(f"  {'whole call':30s} {wf:9.2f} {'':6s} {wp:10.2f} {'':6s} {wf / wp:7.2f}x")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratio", type=float, default=0.25)
    p.add_argument("--threads", type=positive_int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=positive_int, default=30)
    p.add_argument("--round-to", type=int, default=1, help="pruned widths multiples of this")
    p.add_argument("--profile", action="store_true",
                   help="also ONNX Runtime's per-operator profile of both models at each thread count, "
                        "printed and in the JSON")
    p.add_argument("--conv-widths", type=positive_int, nargs="*", default=[],
                   help="also time one 3x3x3 convolution w -> w at the 3D input's full resolution, per width")
    p.add_argument("--level-widths", type=widths_list, nargs="*", default=[], metavar="W0,W1,W2,W3,W4",
                   help="also time the 3D U-Net with these widths per level against the full one "
                        "(other allocations of the FLOPs budget)")
    p.add_argument("--out", default="benchmarks/results/engine.json")
    args = p.parse_args(argv)
    timing = time_prune(*CASES["3D"], args.ratio)
    print(f"3D U-Net 5 levels, 32 base, input {CASES['3D'][1]}: graph {timing['graph_seconds']:.2f} s, "
          f"graph + score + prune to {args.ratio:g} FLOPs {timing['prune_seconds']:.2f} s (target < 2 s)")
    results = {"timing_3d": timing}
    print(f"{'case':5s} {'threads':>7s} {'full ms':>9s} {'pruned ms':>10s} {'speed-up':>9s} {'paired':>7s} "
          f"{'FLOPs kept':>10s} {'target':>8s}")
    for name, (spec, shape) in CASES.items():
        res = latency(spec, shape, args.ratio, args.threads, args.repeats, args.round_to, args.profile)
        results[name] = res
        for t in args.threads:
            r = res[f"{t}t"]
            print(f"{name:5s} {t:7d} {r['full_ms']:9.1f} {r['pruned_ms']:10.1f} {r['speedup']:8.2f}x "
                  f"{r['speedup_paired']:6.2f}x {res['flops_ratio']:10.3f} {0.8 / res['flops_ratio']:7.2f}x")
    if args.conv_widths:
        spatial = CASES["3D"][1][2:]
        results["conv3d_widths"] = conv_speed(args.conv_widths, spatial, args.repeats)
        print(f"\none 3x3x3 convolution w -> w at {spatial}, ONNX Runtime 1 thread:")
        for r in results["conv3d_widths"]:
            print(f"  w {r['width']:4d}: {r['ms']:8.2f} ms  {r['gflops_per_s']:6.1f} GFLOP/s")
    if args.level_widths:
        study = level_widths(args.level_widths, CASES["3D"][1], args.ratio, args.threads, args.repeats)
        results["level_widths_3d"] = study
        print(f"\n3D U-Net, other widths per level (widest full-resolution level within {args.ratio:g} "
              f"of the FLOPs: {study['widest_full_res']}):")
        for r in study["rows"]:
            cells = "  ".join(f"{t}t {r[f'{t}t']['ms']:7.1f} ms {r[f'{t}t']['speedup_paired']:5.2f}x "
                              f"({r[f'{t}t']['speed_per_flop']:.2f})" for t in args.threads)
            print(f"  {','.join(map(str, r['widths'])):22s} FLOPs {r['flops_ratio']:.3f}  {cells}")
    if args.profile:
        print_profiles({f"{name}, {t} thread{'s' if t > 1 else ''}": results[name][f"profile_{t}t"]
                        for name in CASES for t in args.threads})
    from medslim._io import write_json
    from medslim.cost.measurement import environment

    write_json(args.out, {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
                          "environment": environment(), **results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
