"""The demo's closing summary: the base model's numbers, every model of the comparison, where things are."""

from __future__ import annotations

from pathlib import Path

from medslim.demo import summary


def test_summary_lists_the_base_numbers_every_model_and_the_report():
    results = {"test": {"dice": 0.61, "hd95": 33.4, "n_cases": 120}}
    cost = {"params": 1944066, "flops": 1.517e9, "input_shape": [1, 3, 128, 128], "threads": 1,
            "torch_ms": 30.0, "ort_ms": 16.5}
    table = {"rows": [{"label": "base", "dice": 0.61, "flops": 1.517e9, "ort_ms": 16.5, "front_flops": True},
                      {"label": "l1-f0.5", "dice": 0.55, "flops": 0.75e9, "ort_ms": None, "front_flops": False}]}
    text = summary(results, cost, table, Path("runs/demo-x"), 344.2)
    assert "done in 344 s" in text and "1,944,066" in text and "FLOPs (1x3x128x128)" in text
    assert "PyTorch 30.0 ms, ONNX Runtime 16.5 ms" in text
    assert "l1-f0.5          0.5500   0.750     n/a" in text
    assert str(Path("runs/demo-x/report/report.html")) in text


def test_bad_epochs_or_output_are_refused_before_anything_is_made(tmp_path):
    import pytest

    from medslim.demo import run_demo
    from medslim.errors import ConfigError

    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="--epochs must be a positive integer"):
        run_demo(output=str(tmp_path), epochs=0)
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        run_demo(output=str(tmp_path / "afile"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
