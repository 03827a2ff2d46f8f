"""Start-up cost: ``medslim --help`` and ``import medslim`` against ``import torch``.

Each command runs in a fresh interpreter ``--repeats`` times; the table shows
medians. Targets (issue 2): ``--help`` under 1 s; ``import medslim`` (plus the
model and artifact code a user needs to load a model) at most 0.5 s more than
``import torch``.

    python benchmarks/startup.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "medslim --help": [sys.executable, "-m", "medslim", "--help"],
    "import torch": [sys.executable, "-c", "import torch"],
    "import medslim": [sys.executable, "-c", "import medslim"],
    "import torch + medslim.load path": [sys.executable, "-c",
                                         "import torch, medslim; medslim.load; medslim.build_model"],
}


def time_command(cmd: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default="benchmarks/results/startup.json")
    args = p.parse_args(argv)
    medians = {name: statistics.median(time_command(cmd, args.repeats)) for name, cmd in COMMANDS.items()}
    overhead = medians["import torch + medslim.load path"] - medians["import torch"]
    for name, value in medians.items():
        print(f"{name:36s} {value * 1000:8.0f} ms")
    print(f"{'medslim overhead over torch':36s} {overhead * 1000:8.0f} ms  (target <= 500 ms)")
    from medslim._io import write_json

    write_json(args.out, {"date": time.strftime("%Y-%m-%d"), "repeats": args.repeats,
                          "median_seconds": medians, "overhead_seconds": overhead})
    return 0


if __name__ == "__main__":
    sys.exit(main())
