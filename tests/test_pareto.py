import math

import pytest

from medslim.pareto import pareto_front


def test_front_keeps_only_points_nothing_beats_on_both():
    costs = [1.0, 2.0, 2.0, 3.0, 4.0, 0.5]
    scores = [0.5, 0.7, 0.6, 0.65, 0.9, 0.2]
    assert pareto_front(costs, scores) == [5, 0, 1, 4]


def test_equal_points_keep_the_first_and_nan_never_enters():
    assert pareto_front([1.0, 1.0, 2.0], [0.5, 0.5, math.nan]) == [0]


def test_lengths_must_match():
    with pytest.raises(ValueError, match="2 costs but 1 scores"):
        pareto_front([1, 2], [0.1])
