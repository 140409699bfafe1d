"""The run's HTML page: scores with intervals, slices, plots, the metric set-up and the first
hold-out rows (already scrubbed), rendered from templates/report.html.j2 with autoescaping."""
from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from tasks.evaluation.plots import png_base64
from tasks.evaluation.stats import PER_ROW

SAMPLE_COLUMNS = ("input", "reference", "baseline", "finetuned", "baseline_rougeL", "finetuned_rougeL")
_ENV = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")), autoescape=select_autoescape(["j2"]))


def eval_report_html(run_name: str, tags: dict[str, str], metrics: dict[str, float], metric_config: dict[str, str],
                     figures: dict[str, object], table: dict[str, list], shown: int = 25) -> str:
    """One self-contained page; the plots are embedded as PNG data."""
    names = [k for k in (*PER_ROW, "macro_f1") if f"finetuned/{k}" in metrics]
    slices = {k: v for k, v in metrics.items() if k.startswith("slice/")}
    rows = [[table[c][i] for c in SAMPLE_COLUMNS] for i in range(min(shown, len(table["id"])))]
    return _ENV.get_template("report.html.j2").render(
        run_name=run_name, names=names, metrics=metrics, slices=slices, setup={**tags, **metric_config},
        images={title: png_base64(fig) for title, fig in figures.items()}, columns=SAMPLE_COLUMNS, rows=rows,
        shown=shown)


def quarter_report_html(rep: dict, run_name: str, lengths_figure, alpha: float) -> str:
    """The quarter-over-quarter page (tasks/evaluation/quarter.py), plot embedded."""
    return _ENV.get_template("quarter.html.j2").render(r=rep, run_name=run_name, lengths_png=png_base64(lengths_figure),
                                                       alpha=alpha)
