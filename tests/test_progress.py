"""Progress lines for long commands: the stage, the step and an honest time left."""

from __future__ import annotations

import io

from medslim.progress import StageProgress


def test_stage_progress_names_the_method_and_step_and_estimates_time_left():
    times = iter([0.0, 0.0, 0.0, 100.0, 100.0, 100.0, 100.0, 160.0, 160.0, 160.0, 200.0])
    out = io.StringIO()
    # work: base 10 epochs, a pruning with 2 fine-tuning epochs, an import (nothing), measuring 1
    stages = StageProgress("compare", [10, 2, 0, 1], stream=out, clock=lambda: next(times))  # t=0
    stages.begin(1, "base", "training the base model")  # t=0: nothing known yet
    stages.end()  # t=100: 10 units in 100 s
    stages.begin(2, "l1-f0.35", "pruning")  # t=100: 3 units to go at 10 s each
    stages.step("fine-tuning")  # t=160: 60 s of the current stage spent
    stages.end()  # t=160
    stages.close()  # t=200
    lines = out.getvalue().splitlines()
    assert lines[0] == "[compare 1/4] base: training the base model (0s so far)"
    assert lines[1] == "[compare 2/4] l1-f0.35: pruning (1m40s so far, ~30s left)"
    assert lines[2] == "[compare 2/4] l1-f0.35: fine-tuning (2m40s so far, ~0s left)"
    assert lines[3] == "[compare] done in 3m20s"


def test_stage_progress_can_be_silenced():
    out = io.StringIO()
    stages = StageProgress("compare", [1, 1], enabled=False, stream=out)
    stages.begin(1, "base", "training")
    stages.close()
    assert out.getvalue() == ""
