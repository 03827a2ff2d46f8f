"""The Pareto front of (cost, quality) points: the models nothing else beats on both."""

from __future__ import annotations

from typing import Sequence


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of the points no other point dominates, cheapest first.

    A point is dominated when another costs no more and scores no less, and
    is strictly better in one of the two. Ties (same cost and score) keep the
    first. NaN scores never enter the front.
    """
    if len(costs) != len(scores):
        raise ValueError(f"{len(costs)} costs but {len(scores)} scores")
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -scores[i]))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        if scores[i] != scores[i]:  # NaN
            continue
        if scores[i] > best:
            front.append(i)
            best = scores[i]
    return front
