"""Progress for long commands: a rich bar on a terminal, one line per epoch otherwise."""

from __future__ import annotations

import sys
import time
from typing import Callable


def training_progress(label: str, enabled: bool = True) -> tuple[Callable[[dict], None], Callable[[], None]]:
    """Return (callback, close) for :func:`medslim.training.loop.fit`."""
    if not enabled:
        return (lambda event: None), (lambda: None)
    if sys.stderr.isatty():
        return _rich_progress(label)
    return _line_progress(label)


def _line_progress(label: str):
    start = time.perf_counter()

    def callback(event: dict) -> None:
        if event["event"] != "epoch":
            return
        val = event.get("val") or {}
        score = val.get("dice", val.get("auc"))
        elapsed = time.perf_counter() - start
        eta = elapsed / event["epoch"] * (event["epochs"] - event["epoch"])
        extra = f" val {score:.4f}" if score is not None else ""
        print(f"[{label}] epoch {event['epoch']}/{event['epochs']} loss {event['train_loss']:.4f}"
              f"{extra} ({event['epoch_seconds']:.1f}s, ~{eta:.0f}s left)", file=sys.stderr, flush=True)

    return callback, lambda: None


def _rich_progress(label: str):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
    bar.start()
    task = None

    def callback(event: dict) -> None:
        nonlocal task
        if event["event"] == "step":
            if task is None:
                task = bar.add_task(label, total=None, info="")
            bar.update(task, info=f"epoch {event['epoch']} step {event['step']}/{event['steps']} "
                                  f"loss {event['loss']:.4f}")
        elif event["event"] == "epoch" and task is not None:
            val = event.get("val") or {}
            score = val.get("dice", val.get("auc"))
            bar.update(task, total=event["epochs"], completed=event["epoch"],
                       info=f"epoch {event['epoch']}/{event['epochs']}"
                            + (f" val {score:.4f}" if score is not None else ""))

    return callback, bar.stop
