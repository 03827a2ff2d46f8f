"""``medslim report``: plots and a self-contained HTML page from comparison tables.

The page holds the table (the Pareto front of quality against each cost
marked), quality against FLOPs, latency and parameters (PNG inlined, SVG and
PNG files beside it), per-class quality with its change against the reference
model (the unpruned base: small structures often suffer first), and for each
model the command that makes it and where its artifact is.
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path

from medslim import __version__
from medslim._io import atomic_dir, atomic_path, write_text
from medslim.compare import (COST_AXES, MEASURE_DEFAULTS, build_table, measure_cost,
                             quality_of, read_table, split_signature, write_table)
from medslim.errors import ConfigError

AXES = {  # cost axis -> (label, scale to display units)
    "flops": ("GFLOPs per image", 1e-9),
    "ort_ms": ("ONNX Runtime latency, batch 1 (ms)", 1.0),
    "torch_ms": ("PyTorch latency, batch 1 (ms)", 1.0),
    "params": ("parameters (millions)", 1e-6),
}
METRIC_NAMES = {"dice": "Dice", "auc": "AUC"}
# a per-class drop of more than this (2 Dice points) is flagged in the page
FLAG_DROP = 0.02


def report_paths(paths: list[Path], output: Path | None = None) -> Path:
    """``medslim report RUN...``: comparison folders and single run folders into one report.

    One comparison folder: the report goes to its ``report/`` unless
    ``output`` is given. Several, or run folders: ``output`` is required; run
    folders are measured once with the default settings (cached in
    ``output/costs``). Every input must be of one dataset and one test split.
    """
    if not paths:
        raise ConfigError("give at least one comparison folder or run folder")
    for p in paths:
        if not p.is_dir():
            raise ConfigError(f"{p}: no such folder")
    for p in paths:
        if not (p / "table.json").exists() and not (p / "results.json").exists():
            raise ConfigError(f"{p} is neither a comparison folder (table.json) nor a finished run "
                              "(results.json)")
    if output is None:
        if len(paths) > 1 or not (paths[0] / "table.json").exists():
            raise ConfigError("several inputs, or run folders: give --output FOLDER for the report")
        output = paths[0] / "report"
    _check_output(output)
    table = merge(paths, output)
    write_report(table, output)
    return output


def report_comparison(folder: Path) -> Path:
    """The report of one finished comparison, into its ``report/`` folder; returns the page."""
    return write_report(read_table(folder), folder / "report")


def _check_output(output: Path) -> None:
    """The report replaces its folder: never a folder that holds anything but an older report."""
    if output.is_file():
        raise ConfigError(f"--output {output} is a file; give a folder for the report")
    if output.is_dir():
        ours = {"report.html", "table.json", "table.csv", "costs"}
        foreign = [p.name for p in output.iterdir() if p.name not in ours and not p.name.endswith((".png", ".svg"))]
        if foreign:
            raise ConfigError(f"--output {output} holds other files (e.g. {foreign[0]}); the report replaces "
                              "its folder, so give a new or an earlier report's folder")


def merge(paths: list[Path], output: Path) -> dict:
    """One table from comparison folders and run folders; refuses a mix of datasets, splits or timings."""
    # every input is read and checked before any is measured: a refused mix leaves no cost files
    inputs = [_read_input(path) for path in paths]
    first = inputs[0][2]
    for _, _, key in inputs[1:]:
        if key[0] != first[0]:
            raise ConfigError(f"{key[2]} is on {key[0]!r} but {first[2]} is on {first[0]!r}: "
                              "one report compares models of one dataset")
        elif key[1] != first[1]:
            raise ConfigError(f"{key[2]} was tested on other {key[0]} cases than {first[2]} "
                              "(a different split): its numbers are not comparable")
        elif key[3]["threads"] != first[3]["threads"] or key[3]["onnx"] != first[3]["onnx"]:
            raise ConfigError(f"{key[2]} was timed with measure {key[3]} but {first[2]} with {first[3]}: "
                              "latencies at other thread counts do not share a front")
    rows = []
    for path, content, _ in inputs:
        if "rows" in content:  # a comparison's table
            part = [dict(r) for r in content["rows"]]
            if len(paths) > 1:
                for r in part:
                    r["label"] = f"{content['name']}/{r['label']}"
            rows += part
        else:
            rows.append(_run_row(path, content, output))
    return build_table(rows, first[0], first[1], first[3],
                       output.parent.name if output.name == "report" else output.name)


def _read_input(path: Path) -> tuple[Path, dict, tuple]:
    """(path, its table or its results, (dataset, split signature, source, measure settings))."""
    if (path / "table.json").exists():
        table = read_table(path)
        return path, table, (table["dataset"], table["split_signature"], str(path / "table.json"),
                             table["measure"])
    results = _read_results(path)
    from medslim.artifacts import load_manifest

    load_manifest(path)  # a readable medslim model
    return path, results, (results["dataset"], split_signature(path), str(path), dict(MEASURE_DEFAULTS))


def _read_results(run: Path) -> dict:
    """A finished run's results.json, checked for what a report row needs."""
    path = run / "results.json"
    if not path.exists():
        raise ConfigError(f"{run} is neither a comparison folder (table.json) nor a finished run "
                          "(results.json)")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); re-run the command that made {run}") from None
    if not isinstance(results, dict) or not isinstance(results.get("test"), dict) or "dataset" not in results:
        raise ConfigError(f"{path} lacks its test metrics or dataset ('test', 'dataset'): "
                          f"not a finished medslim run")
    return results


def _run_row(run: Path, results: dict, output: Path) -> dict:
    row = quality_of(run)
    row.update(label=run.name, method=results.get("method", "trained"), kind="import", run=str(run),
               reproduce=f"see {run / 'config.yaml'}",
               **measure_cost(run, output / "costs" / f"{run.name}.json", MEASURE_DEFAULTS))
    return row


def write_report(table: dict, folder: Path) -> Path:
    """Plots (PNG and SVG), the table (CSV, JSON) and ``report.html`` into ``folder``, all or nothing."""
    import shutil

    with atomic_dir(folder, overwrite=True) as work:
        plots = {axis: plot_axis(table, axis, work) for axis in AXES if _has_axis(table, axis)}
        write_table(table, work)
        write_text(work / "report.html", render_html(table, {a: work / f"{n}.png" for a, n in plots.items()}))
        if (folder / "costs").is_dir():  # costs measured for run folders: a cache worth keeping
            shutil.copytree(folder / "costs", work / "costs")
    return folder / "report.html"


def _has_axis(table: dict, axis: str) -> bool:
    return any(r.get(axis) is not None for r in table["rows"])


def reference_row(table: dict) -> dict:
    """The row others are compared with: the base model if there is one, else the first."""
    for r in table["rows"]:
        if r["label"] == "base" or r["label"].endswith("/base"):
            return r
    return table["rows"][0]


# ------------------------------------------------------------------ plots

def plot_axis(table: dict, axis: str, folder: Path) -> str:
    """Quality against one cost, every model a point, the front joined; returns the file stem."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, rows = table["metric"], [r for r in table["rows"] if r.get(axis) is not None]
    label, scale = AXES[axis]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = plt.get_cmap("tab10")
    for i, method in enumerate(methods):
        pts = [r for r in rows if r["method"] == method]
        ax.scatter([r[axis] * scale for r in pts], [r[metric] for r in pts], s=36, color=colours(i % 10),
                   label=method, zorder=3, marker="os^Dv<>ph*"[i % 10],
                   edgecolors=["black" if r.get(f"front_{axis}") else "none" for r in pts])
    front = sorted((r for r in rows if r.get(f"front_{axis}")), key=lambda r: r[axis])
    if front:
        xs = [r[axis] * scale for r in front]
        ys = [r[metric] for r in front]
        ax.step(xs, ys, where="post", color="crimson", lw=1.5, alpha=0.7, zorder=2, label="Pareto front")
    for r in rows:
        ax.annotate(r["label"], (r[axis] * scale, r[metric]), fontsize=6, textcoords="offset points",
                    xytext=(4, 3))
    values = [r[axis] * scale for r in rows if r[axis] > 0]
    if values and max(values) / min(values) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)} (test)")
    ax.set_title(f"{table['dataset']}: {METRIC_NAMES.get(metric, metric)} against {label.split(' (')[0]}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    stem = f"{metric}-vs-{axis}"
    for fmt in ("png", "svg"):
        with atomic_path(folder / f"{stem}.{fmt}") as tmp:
            fig.savefig(tmp, dpi=130, format=fmt)
    plt.close(fig)
    return stem


# ------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;
color:#222;padding:0 16px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}tr.front td{background:#fff6d9}.star{color:#c8102e;font-weight:bold}
.drop{color:#c8102e;font-weight:bold}.gain{color:#1a7f37}.muted{color:#777;font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots figure{margin:0;width:560px}
.plots img{width:100%;border:1px solid #eee}code{font-size:12px;background:#f6f6f6;padding:1px 3px;
word-break:break-all}
"""


def render_html(table: dict, pngs: dict[str, Path]) -> str:
    """The whole page as one string; images are inlined so the file stands alone."""
    metric = table["metric"]
    name = METRIC_NAMES.get(metric, metric)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>medslim report: {_e(table['name'])}</title><style>{CSS}</style></head><body>",
             f"<h1>medslim report: {_e(table['name'])}</h1>", _summary(table),
             "<h2>Trade-off</h2><div class='plots'>"]
    for axis, png in pngs.items():
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<figure><img alt='{_e(name)} against {_e(AXES[axis][0])}' "
                     f"src='data:image/png;base64,{data}'><figcaption class='muted'>{_e(png.stem)}.png / "
                     f".svg beside this page</figcaption></figure>")
    parts += ["</div>", _models_table(table), _per_class_table(table), _reproduce(table),
              f"<p class='muted'>Written by medslim {__version__} on {time.strftime('%Y-%m-%d %H:%M')}.</p>",
              "</body></html>"]
    return "\n".join(parts)


def _summary(table: dict) -> str:
    rows = table["rows"]
    machine = next((r.get("machine") for r in rows if r.get("machine")), {}) or {}
    threads = next((r.get("threads") for r in rows if r.get("threads")), None)
    best = {axis: [r["label"] for r in rows if r.get(f"front_{axis}")] for axis in COST_AXES}
    return (f"<p>{len(rows)} models on <b>{_e(table['dataset'])}</b>, quality on the test split "
            f"({_e(METRIC_NAMES.get(table['metric'], table['metric']))}), cost at batch 1 with "
            f"{_e(threads)} thread(s) on {_e(machine.get('cpu', 'this machine'))} "
            f"(PyTorch {_e(machine.get('torch_version', '?'))}, ONNX Runtime "
            f"{_e(machine.get('onnxruntime_version', '?'))}). Latencies are medians of "
            f"{_e(table['measure'].get('repeats'))} runs measured one after another in one process.</p>"
            f"<p>Pareto front against FLOPs (nothing else is both cheaper and better): "
            f"<b>{_e(', '.join(best['flops']))}</b>. Against ONNX Runtime latency: "
            f"<b>{_e(', '.join(best['ort_ms']) or 'not measured')}</b>.</p>")


def _models_table(table: dict) -> str:
    metric, rows = table["metric"], table["rows"]
    seg = metric == "dice"
    head = ["model", "method", "Dice" if seg else "AUC", "HD95" if seg else "accuracy", "parameters",
            "GFLOPs", "PyTorch ms", "ORT ms", "peak MB", "front (FLOPs / ORT / PyTorch / params)"]
    out = ["<h2>Models</h2><p class='muted'>Rows on any Pareto front are shaded; "
           "<span class='star'>&#9733;</span> marks the fronts a model is on.</p>",
           "<table id='models'><tr>" + "".join(f"<th class='{'l' if i < 2 else ''}'>{_e(h)}</th>"
                                              for i, h in enumerate(head)) + "</tr>"]
    for r in rows:
        fronts = [r.get(f"front_{a}") for a in ("flops", "ort_ms", "torch_ms", "params")]
        marks = " ".join("<span class='star'>&#9733;</span>" if f else ("-" if f is None else "&middot;")
                         for f in fronts)
        second = r.get("hd95") if seg else r.get("accuracy")
        cells = [r["label"], r["method"], _f(r.get(metric), 3), _f(second, 1 if seg else 3),
                 f"{r['params']:,}", _f(r["flops"] / 1e9, 3), _f(r.get("torch_ms"), 2), _f(r.get("ort_ms"), 2),
                 _f(r.get("peak_mb"), 1)]
        cls = " class='front'" if any(fronts) else ""
        out.append(f"<tr{cls} data-label='{_e(r['label'])}'>" + "".join(
            f"<td class='{'l' if i < 2 else ''}'>{_e(c)}</td>" for i, c in enumerate(cells))
                   + f"<td>{marks}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _per_class_table(table: dict) -> str:
    rows = table["rows"]
    classes = list(dict.fromkeys(c for r in rows for c in (r.get("dice_per_class") or {})))
    if not classes:
        return ""
    ref = reference_row(table)
    out = [f"<h2>Per class, against {_e(ref['label'])}</h2><p class='muted'>Test Dice and HD95 (pixels or "
           f"voxels) per class and their change against {_e(ref['label'])}; a Dice drop of more than "
           f"{FLAG_DROP:g} is in red.</p><table id='per-class'><tr><th class='l'>model</th>"]
    out += [f"<th>Dice {_e(c)}</th><th>&Delta;</th><th>HD95 {_e(c)}</th><th>&Delta;</th>" for c in classes]
    out.append("</tr>")
    for r in rows:
        cells = [f"<td class='l'>{_e(r['label'])}</td>"]
        for c in classes:
            d, d0 = (r.get("dice_per_class") or {}).get(c), (ref.get("dice_per_class") or {}).get(c)
            h, h0 = (r.get("hd95_per_class") or {}).get(c), (ref.get("hd95_per_class") or {}).get(c)
            dd = None if d is None or d0 is None else d - d0
            dh = None if h is None or h0 is None else h - h0
            cls = "drop" if dd is not None and dd < -FLAG_DROP else ("gain" if dd and dd > 0 else "")
            cells += [f"<td>{_f(d, 3)}</td>", f"<td class='{cls}'>{_signed(dd, 3)}</td>",
                      f"<td>{_f(h, 1)}</td>", f"<td>{_signed(dh, 1)}</td>"]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _reproduce(table: dict) -> str:
    out = ["<h2>Reproduce</h2><table id='reproduce'><tr><th class='l'>model</th>"
           "<th class='l'>command</th><th class='l'>artifact (safetensors + model.json)</th></tr>"]
    for r in table["rows"]:
        out.append(f"<tr><td class='l'>{_e(r['label'])}</td><td class='l'><code>{_e(r.get('reproduce', ''))}"
                   f"</code></td><td class='l'><code>{_e(r.get('run', ''))}</code></td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _f(value, digits: int) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:.{digits}f}"


def _signed(value, digits: int) -> str:
    if value is None or value != value:
        return ""
    return f"{value:+.{digits}f}"
