"""Progress lines for long commands: the stage, the step and an honest time left."""

from __future__ import annotations

import io

from medslim.progress import StageProgress


def test_stage_progress_names_the_method_and_step_and_estimates_time_left():
    times = iter([0.0, 0.0, 0.0, 100.0, 100.0, 100.0, 160.0, 160.0, 200.0])
    out = io.StringIO()
    stages = StageProgress("compare", 4, stream=out, clock=lambda: next(times))  # t=0
    stages.begin(1, "base", "training the base model")  # t=0: nothing known yet
    stages.end()  # t=100: one stage of work took 100 s
    stages.begin(2, "l1-f0.35", "pruning")  # t=100: three stages to go, ~300 s
    stages.step("fine-tuning")  # t=160
    stages.end()  # t=160: stages took 100 and 60 s
    stages.close()  # t=200
    lines = out.getvalue().splitlines()
    assert lines[0] == "[compare 1/4] base: training the base model (0s so far)"
    assert lines[1] == "[compare 2/4] l1-f0.35: pruning (1m40s so far, ~5m00s left)"
    assert lines[2] == "[compare 2/4] l1-f0.35: fine-tuning (2m40s so far, ~5m00s left)"
    assert lines[3] == "[compare] done in 3m20s"


def test_stage_progress_can_be_silenced():
    out = io.StringIO()
    stages = StageProgress("compare", 2, enabled=False, stream=out)
    stages.begin(1, "base", "training")
    stages.close()
    assert out.getvalue() == ""
