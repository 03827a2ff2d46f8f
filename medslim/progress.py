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


class StageProgress:
    """Progress through the stages of a long command (``medslim compare``): the method, the step, time left.

    One line per stage start and per step on stderr, with the time spent and,
    once a stage that did real work has finished, an estimate of the time left.
    Each stage comes with its expected work in any unit (``medslim compare``
    counts training epochs at the base's size); the estimate is the seconds
    per unit of the finished working stages times the units still to come.
    Trainings inside a stage add their own per-epoch lines with their own time left.
    """

    def __init__(self, name: str, work: list[float], enabled: bool = True, stream=None,
                 clock: Callable[[], float] = time.perf_counter):
        self.name, self.work, self.total, self.enabled = name, list(work), len(work), enabled
        self.stream, self.clock = stream or sys.stderr, clock
        self.start = clock()
        self.index, self.label = 0, ""
        self.stage_start = self.start
        self.done: list[tuple[float, float]] = []  # (seconds, work) of stages that did real work

    def begin(self, index: int, label: str, what: str) -> None:
        self.index, self.label, self.stage_start = index, label, self.clock()
        self._say(what)

    def step(self, what: str) -> None:
        self._say(what)

    def end(self) -> None:
        seconds = self.clock() - self.stage_start
        work = self.work[self.index - 1]
        if seconds > 1.0 and work > 0:  # a stage whose models were already made says nothing about the rest
            self.done.append((seconds, work))

    def close(self) -> None:
        self._print(f"[{self.name}] done in {_duration(self.clock() - self.start)}")

    def time_left(self) -> float | None:
        if not self.done:
            return None
        rate = sum(s for s, _ in self.done) / sum(w for _, w in self.done)
        spent = self.clock() - self.stage_start  # of the current stage, which counts whole
        return max(0.0, rate * sum(self.work[self.index - 1:]) - spent)

    def _say(self, what: str) -> None:
        left = self.time_left()
        eta = f", ~{_duration(left)} left" if left is not None else ""
        self._print(f"[{self.name} {self.index}/{self.total}] {self.label}: {what} "
                    f"({_duration(self.clock() - self.start)} so far{eta})")

    def _print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
