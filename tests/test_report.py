"""medslim report: plots, the HTML page (rendered in headless Chromium), merging, refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from medslim.compare import build_table, write_table
from medslim.errors import ConfigError
from medslim.report import report_paths, write_report


def _row(label, method, dice, flops, ort, small=None):
    small = dice if small is None else small
    return {"label": label, "method": method, "kind": "prune", "dice": dice, "hd95": 20 / dice, "flops": flops,
            "params": int(flops / 1000), "torch_ms": ort * 1.5, "ort_ms": ort, "peak_mb": 3.0, "threads": 1,
            "dice_per_class": {"polyp": dice, "small": small}, "hd95_per_class": {"polyp": 20.0, "small": 30.0},
            "run": f"/runs/{label}", "reproduce": f"medslim prune base --method {method} --name {label}",
            "machine": {"cpu": "test CPU", "torch_version": "x", "onnxruntime_version": "y"}}


def make_table(name="cmp", dataset="kvasir-seg", signature="s1", threads=1) -> dict:
    rows = [_row("base", "base", 0.80, 2e9, 10.0), _row("l1-f0.35", "l1", 0.76, 7e8, 6.0, small=0.50),
            _row("taylor-f0.35", "taylor_gn", 0.78, 7e8, 7.0), _row("random-f0.35", "random", 0.66, 7e8, 6.5),
            _row("sshn-phi0.2", "sshn", 0.59, 1e8, 2.0)]
    return build_table(rows, dataset, signature, {"threads": threads, "repeats": 5, "onnx": True}, name)


def comparison_folder(path: Path, **kwargs) -> Path:
    path.mkdir(parents=True)
    write_table(make_table(**kwargs), path)
    return path


def test_report_writes_plots_table_and_one_self_contained_page(tmp_path):
    page = write_report(make_table(), tmp_path / "report")
    for axis in ("flops", "ort_ms", "torch_ms", "params"):
        for fmt in ("png", "svg"):
            assert (tmp_path / "report" / f"dice-vs-{axis}.{fmt}").stat().st_size > 1000
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 4 and "<img src='http" not in text
    for label in ("base", "l1-f0.35", "taylor-f0.35", "random-f0.35", "sshn-phi0.2"):
        assert f"data-label='{label}'" in text
    assert "-0.300" in text and "class='drop'" in text  # l1 lost 0.3 Dice on the small class
    assert "medslim prune base --method taylor_gn" in text and "/runs/taylor-f0.35" in text
    assert (tmp_path / "report" / "table.csv").read_text().count("\n") == 6


def test_a_failed_report_leaves_the_earlier_one(tmp_path, monkeypatch):
    write_report(make_table(), tmp_path / "report")
    before = (tmp_path / "report" / "report.html").read_text()
    import medslim.report as report

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "render_html", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(make_table(name="other"), tmp_path / "report")
    assert (tmp_path / "report" / "report.html").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_report_merges_comparisons_of_one_dataset_and_refuses_mixtures(tmp_path):
    a = comparison_folder(tmp_path / "a", name="a")
    b = comparison_folder(tmp_path / "b", name="b")
    out = report_paths([a, b], tmp_path / "both")
    table = json.loads((out / "table.json").read_text())
    assert len(table["rows"]) == 10 and table["rows"][5]["label"] == "b/base"
    other_data = comparison_folder(tmp_path / "c", name="c", dataset="hippocampus")
    with pytest.raises(ConfigError, match="is on 'hippocampus' but .* is on 'kvasir-seg'"):
        report_paths([a, other_data], tmp_path / "mixed")
    other_split = comparison_folder(tmp_path / "d", name="d", signature="s2")
    with pytest.raises(ConfigError, match="a different split"):
        report_paths([a, other_split], tmp_path / "mixed")
    other_threads = comparison_folder(tmp_path / "e", name="e", threads=2)
    with pytest.raises(ConfigError, match="do not share a front"):
        report_paths([a, other_threads], tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()


def test_report_never_replaces_a_folder_of_other_files(tmp_path):
    a = comparison_folder(tmp_path / "a")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text("mine")
    with pytest.raises(ConfigError, match="holds other files"):
        report_paths([a], docs)
    assert (docs / "notes.md").read_text() == "mine"
    with pytest.raises(ConfigError, match="give --output"):
        report_paths([a, a])
    with pytest.raises(ConfigError, match="docs is neither a comparison folder"):
        report_paths([tmp_path / "docs"], tmp_path / "r")
    with pytest.raises(ConfigError, match="docs is neither a comparison folder"):
        report_paths([tmp_path / "docs"])  # named, rather than asked for an --output


def test_report_command_line(tmp_path, capsys):
    from medslim.cli import main

    a = comparison_folder(tmp_path / "a")
    assert main(["report", str(a)]) == 0
    assert (a / "report" / "report.html").exists()
    assert "l1-f0.35" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (Debian: apt-get install "
                                                "chromium; .ci/run installs it)")
def test_the_page_renders_in_headless_chromium_with_every_row(tmp_path):
    from PIL import Image

    page = write_report(make_table(), tmp_path / "report")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,2000"]
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), *flags, f"--screenshot={shot}", page.as_uri()], check=True,
                   capture_output=True, timeout=120)
    image = Image.open(shot).convert("L")
    assert image.size == (1280, 2000)
    histogram = image.histogram()
    not_white = sum(histogram[:240]) / (image.size[0] * image.size[1])
    assert 0.02 < not_white < 0.9  # text, tables and plots drawn; not blank, not a solid block
    assert len(set(image.resize((64, 100)).tobytes())) > 20  # many grey levels, not two
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", page.as_uri()], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    models = dom[dom.index("id=\"models\""):]
    models = models[:models.index("</table>")]
    for label in ("base", "l1-f0.35", "taylor-f0.35", "random-f0.35", "sshn-phi0.2"):
        assert f"data-label=\"{label}\"" in models
    assert dom.count("<img") == 4


@pytest.mark.parametrize("content, message", [("{not json", "is not valid JSON"),
                                              ('{"dataset": "kvasir-seg"}', "lacks its test metrics")])
def test_a_damaged_results_file_is_named_and_nothing_is_measured(tmp_path, content, message):
    a = comparison_folder(tmp_path / "a")
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(content)
    with pytest.raises(ConfigError, match=message):
        report_paths([a, run], tmp_path / "out")
    assert not (tmp_path / "out").exists()
