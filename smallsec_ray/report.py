"""The run report: report.json (every metric, machine-readable) and report.md (for people) with PNG plots.

Plots are drawn on matplotlib Figure objects (no pyplot, no global backend), so this works in any
process, headless or not.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.metrics import roc_curve

from smallsec_ray.evaluation import Audit, Comparison, Metrics, ModelReport, threshold_name

PLOTS_DIR = "plots"
AUDIT_ROWS_IN_MARKDOWN = 20
TEXT_CHARS_IN_MARKDOWN = 80
_MARKERS = ("o", "s", "^", "D", "v", "P")


def write_report(out_dir: str | Path, job: dict, stage_summaries: list[dict], models: list[ModelReport],
                 comparisons: list[Comparison], audit: Audit | None, extra: dict,
                 sections: list[str] | None = None) -> tuple[Path, Path]:
    """Writes report.json, report.md and the plots under `out_dir`; returns the two report paths.

    A stage summary is a dict with "stage" and, where they apply, "rows_in", "rows_out" and
    "rows_quarantined"; its other keys are shown as details. `sections` are markdown blocks of the
    workload's own (its headline figures and plots, see save_plot), shown first.
    """
    out = Path(out_dir)
    (out / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    colors = {m.name: f"C{i % 10}" for i, m in enumerate(models)}
    plots: dict[str, str] = {}
    if any(m.overall.roc_auc is not None for m in models):
        plots["roc"] = _plot_roc(out, models, colors)
    if models:
        plots["scores"] = _plot_score_histograms(out, models)
    for c in comparisons:
        plots[f"tp_fp:{c.baseline}:{c.candidate}"] = _plot_tp_fp(out, c, colors)

    json_path, md_path = out / "report.json", out / "report.md"
    payload = {"job": job, "stages": stage_summaries, "models": [m.to_dict() for m in models],
               "comparisons": comparisons, "audit": audit, "extra": extra, "plots": plots}
    json_path.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
    md_path.write_text(_markdown(job, stage_summaries, models, comparisons, audit, extra, plots, sections or []))
    return json_path, md_path


def _jsonable(value: Any) -> Any:
    """Dataclasses, numpy values and paths as plain JSON; NaN and infinities as null."""
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


# ---------------------------------------------------------------- plots


def _plot_roc(out: Path, models: list[ModelReport], colors: dict[str, str]) -> str:
    fprs = sorted({f for m in models for f in m.fprs})
    n_neg = max(len(m.y_true) - int(m.y_true.sum()) for m in models)
    # FPR 0 has no place on a log axis: the curve's start is drawn at the left edge instead.
    x_min = min([0.5 / n_neg] + [f / 10 for f in fprs if f > 0])
    fig = Figure(figsize=(7.5, 5.5), dpi=120, layout="constrained")
    ax = fig.subplots()
    for f in fprs:
        ax.axvline(max(f, x_min), color="0.8", linestyle=":", linewidth=1)
    for m in models:
        if m.overall.roc_auc is None:
            continue
        fpr, tpr, _ = roc_curve(m.y_true, m.scores)
        ax.plot(np.maximum(fpr, x_min), tpr, color=colors[m.name], linewidth=1.6,
                label=f"{m.name} (AUC {m.overall.roc_auc:.4f})")
        for f, marker in zip(fprs, _MARKERS, strict=False):
            point = m.overall.at_threshold.get(threshold_name(f))
            if point is not None and point.fpr is not None and point.tpr is not None:
                ax.plot(max(point.fpr, x_min), point.tpr, marker=marker, color=colors[m.name],
                        markersize=8, markeredgecolor="black", linestyle="none")
    handles, _ = ax.get_legend_handles_labels()
    handles += [Line2D([], [], marker=marker, color="0.4", markeredgecolor="black", linestyle="none",
                       label=f"threshold picked on validation at FPR {f:g}")
                for f, marker in zip(fprs, _MARKERS, strict=False)]
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(x_min, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("False positive rate (log scale)")
    ax.set_ylabel("True positive rate")
    ref = models[0]
    ax.set_title(f"ROC on the test rows ({len(ref.y_true):,} rows, {int(ref.y_true.sum()):,} "
                 f"{ref.positive_class})")
    ax.grid(True, which="major", alpha=0.3)
    return _save(fig, out, "roc.png")


def _plot_score_histograms(out: Path, models: list[ModelReport]) -> str:
    cols = min(3, len(models))
    rows = math.ceil(len(models) / cols)
    fig = Figure(figsize=(5.0 * cols, 3.8 * rows), dpi=110, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    bins = np.linspace(0.0, 1.0, 41)
    for ax, m in zip(axes, models, strict=False):
        positive = m.y_true == 1
        ax.hist(m.scores[~positive], bins=bins, color="tab:blue", alpha=0.6,
                label=f"true {_negative_name(m)}")
        ax.hist(m.scores[positive], bins=bins, color="tab:red", alpha=0.6, label=f"true {m.positive_class}")
        for f in m.fprs:
            t = m.thresholds.get(threshold_name(f))
            if t is not None:
                ax.axvline(min(t, 1.0), color="black", linestyle="--", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_title(m.name)
        ax.set_xlabel(f"score: P({m.positive_class})")
        ax.set_ylabel("rows (log scale)")
        ax.legend(fontsize=8, title="dashed: val thresholds", title_fontsize=7)
    for ax in axes[len(models):]:
        ax.set_visible(False)
    fig.suptitle("Score distributions on the test rows, by true class")
    return _save(fig, out, "scores.png")


def _plot_tp_fp(out: Path, c: Comparison, colors: dict[str, str]) -> str:
    # One panel per count, each with its own scale: false positives are often a hundred times fewer.
    fig = Figure(figsize=(7.5, 4.8), dpi=120, layout="constrained")
    names = (c.baseline, c.candidate)
    for ax, (title, count) in zip(fig.subplots(1, 2), (("True positives (higher is better)", "tp"),
                                                       ("False positives (lower is better)", "fp")), strict=True):
        values = [getattr(c.at_val_fpr[name], count) for name in names]
        bars = ax.bar(range(len(names)), values, 0.6, color=[colors.get(n, f"C{i}") for i, n in enumerate(names)],
                      label=names)
        ax.bar_label(bars, padding=2)
        ax.set_xticks(range(len(names)), names)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("test rows")
        ax.margins(y=0.12)
    fig.suptitle(f"{c.candidate} vs {c.baseline} at each model's threshold for FPR {c.fpr:g} (picked on "
                 f"validation)\n{c.n:,} test rows, {c.n_pos:,} positive", fontsize=10)
    return _save(fig, out, f"tp_fp_{_slug(c.baseline)}_vs_{_slug(c.candidate)}.png")


def _negative_name(m: ModelReport) -> str:
    others = [c for c in m.classes if c != m.positive_class]
    return others[0] if len(others) == 1 else f"not {m.positive_class}"


def _save(fig: Figure, out: Path, name: str) -> str:
    relative = f"{PLOTS_DIR}/{name}"
    fig.savefig(out / relative)
    return relative


def save_plot(fig: Figure, out_dir: str | Path, name: str) -> str:
    """Saves a workload's own figure as out_dir/plots/NAME; returns the path report.md links to."""
    (Path(out_dir) / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    return _save(fig, Path(out_dir), name)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"


# ---------------------------------------------------------------- markdown


def _markdown(job: dict, stages: list[dict], models: list[ModelReport], comparisons: list[Comparison],
              audit: Audit | None, extra: dict, plots: dict[str, str], sections: list[str]) -> str:
    parts = [f"# Run report: {job.get('name', 'unnamed job')}", ""]
    parts += [f"**{c.verdict}**" for c in comparisons] + ([""] if comparisons else [])
    parts += [block for section in sections for block in (section, "")]
    parts += ["## What ran", "",
             _table(["key", "value"], [[k, _value(v)] for k, v in job.items()]), "",
             "## Rows per stage", "", _stage_table(stages), ""]
    if models:
        parts += _models_section(models, plots)
    if comparisons:
        parts += ["## Comparison", ""]
        for c in comparisons:
            parts += [_comparison_block(c, plots.get(f"tp_fp:{c.baseline}:{c.candidate}")), ""]
    if audit is not None:
        parts += _audit_section(audit)
    if extra:
        parts += ["## Other figures", "",
                  _table(["key", "value"], [[k, _value(v)] for k, v in extra.items()]), ""]
    parts.append("Every figure above, and more, is in `report.json`.")
    return "\n".join(parts) + "\n"


def _stage_table(stages: list[dict]) -> str:
    rows = []
    for s in stages:
        counts: list[Any] = [s.get("rows_in"), s.get("rows_out"), s.get("rows_quarantined")]
        check = "" if None in counts else ("yes" if counts[0] == counts[1] + counts[2] else "**NO**")
        details = "; ".join(f"{k}={_value(v)}" for k, v in s.items()
                            if k not in ("stage", "rows_in", "rows_out", "rows_quarantined"))
        rows.append([s.get("stage", "?"), *(_fmt(c) for c in counts), check, details])
    return _table(["stage", "rows in", "rows out", "quarantined", "in = out + quarantined", "details"], rows)


def _models_section(models: list[ModelReport], plots: dict[str, str]) -> list[str]:
    ref = models[0]
    parts = ["## Models", "",
             f"All models are scored on the same {ref.overall.n:,} test rows ({ref.overall.n_pos:,} "
             f"{ref.positive_class}); thresholds are picked on {ref.n_validation:,} validation rows at FPR "
             f"{', '.join(f'{f:g}' for f in ref.fprs)}. Accuracy and macro-F1 predict {ref.positive_class} "
             "when its probability is above 0.5.", "",
             _table(["model", "rows", "positives", "accuracy", "ROC AUC", "macro-F1"],
                    [[m.name, _fmt(m.overall.n), _fmt(m.overall.n_pos), _fmt(m.overall.accuracy),
                      _fmt(m.overall.roc_auc), _fmt(m.overall.macro_f1)] for m in models]), ""]
    if len(ref.classes) > 2:
        parts += _classes_section(models)
    if "roc" in plots:
        parts += [f"![ROC curves]({plots['roc']})", ""]
    for m in models:
        parts += [f"### {m.name}: operating points on the test rows", "",
                  _table(["threshold", "value", "rests on (validation negatives above)", "TP", "FP", "TN", "FN",
                          "TPR", "FPR"],
                         [[name, f"{p.threshold:.6g}", _fmt(m.threshold_support.get(name)), _fmt(p.tp), _fmt(p.fp),
                           _fmt(p.tn), _fmt(p.fn), _fmt(p.tpr), _fmt(p.fpr)]
                          for name, p in m.overall.at_threshold.items()]), "",
                  "Oracle TPR (threshold tuned on these test rows to keep FPR at or below the target; no deployed "
                  "model can tune it so): "
                  + ", ".join(f"{_fmt(t)} at FPR {f}" for f, t in m.overall.oracle_tpr_at_fpr.items()) + ".",
                  ""]
        if m.overall.note:
            parts += [f"Note: {m.overall.note}.", ""]
    for column in dict.fromkeys(c for m in models for c in m.groups):
        parts += [f"### Per {column}", "", _group_table(models, column), ""]
    if "scores" in plots:
        parts += [f"![Score histograms]({plots['scores']})", ""]
    return parts


def _classes_section(models: list[ModelReport]) -> list[str]:
    classes = models[0].classes
    headers = ["model", "accuracy", "macro-F1", "ROC AUC (one-vs-rest, macro)"]
    headers += [f"F1 {c}" for c in classes] + [f"AUC {c}" for c in classes]
    rows = [[m.name, _fmt(m.by_class.accuracy), _fmt(m.by_class.macro_f1), _fmt(m.by_class.roc_auc_macro)]
            + [_fmt(m.by_class.per_class[c].f1) for c in classes]
            + [_fmt(m.by_class.per_class[c].roc_auc) for c in classes] for m in models]
    return ["### All classes", "",
            f"Each model predicts its most likely of the {len(classes)} classes; AUC is each class against the "
            "rest.", "", _table(headers, rows), ""]


def _group_table(models: list[ModelReport], column: str) -> str:
    names = [threshold_name(f) for f in models[0].fprs]
    headers = [column, "model", "rows", "positives", "ROC AUC"]
    for name in names:
        headers += [f"TPR @ {name}", f"FPR @ {name}"]
    values = sorted(dict.fromkeys(v for m in models for v in m.groups.get(column, {})))
    rows = []
    for value in values:
        for m in models:
            g: Metrics | None = m.groups.get(column, {}).get(value)
            if g is None:
                continue
            row = [value, m.name, _fmt(g.n), _fmt(g.n_pos), _fmt(g.roc_auc)]
            for name in names:
                p = g.at_threshold.get(name)
                row += [_fmt(p.tpr), _fmt(p.fpr)] if p else ["n/a", "n/a"]
            rows.append(row)
    return _table(headers, rows)


def _comparison_block(c: Comparison, plot: str | None) -> str:
    rows = []
    for label, points in (("at the baseline's threshold", c.at_baseline_threshold),
                          ("at equal TPR", c.at_equal_tpr),
                          (f"at own threshold for FPR {c.fpr:g}", c.at_val_fpr)):
        for name, p in points.items():
            rows.append([label, name, f"{p.threshold:.6g}", _fmt(p.tp), _fmt(p.fp), _fmt(p.tpr), _fmt(p.fpr)])
    lines = [f"### {c.candidate} vs {c.baseline}", "", f"**{c.sentence}**", "",
             _table(["operating point", "model", "threshold", "TP", "FP", "TPR", "FPR"], rows)]
    if plot:
        lines += ["", f"![TP and FP, {c.candidate} vs {c.baseline}]({plot})"]
    return "\n".join(lines)


def _audit_section(audit: Audit) -> list[str]:
    summary = (f"{audit.n_labelled:,} labelled rows checked; the teacher's top class differs from the given "
               f"label with probability >= {audit.min_confidence:g} on {audit.n_disagreements:,}; the "
               f"{len(audit.rows):,} most confident are listed (top_k {audit.top_k}).")
    if audit.n_wrong_labels is not None:
        summary += (f" Against the known true labels ({audit.n_wrong_labels:,} given labels are wrong): "
                    f"precision {_fmt(audit.precision)}, recall {_fmt(audit.recall)}.")
    with_truth = audit.n_wrong_labels is not None
    headers = ["rank", "id", "given", "teacher", "p(teacher)", *(["true"] if with_truth else []), "text"]
    rows = [[str(r.rank), _one_line(r.id, 40), r.given_label, r.teacher_label, f"{r.teacher_prob:.4f}",
             *([r.true_label or ""] if with_truth else []), _code(r.text)]
            for r in audit.rows[:AUDIT_ROWS_IN_MARKDOWN]]
    shown = f"The first {min(len(audit.rows), AUDIT_ROWS_IN_MARKDOWN)} rows (all of them in report.json):"
    return ["## Label audit", "", summary, "", shown, "", _table(headers, rows), ""]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "(none)"
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    # Pipes are escaped even inside code spans: GitHub's tables split cells on them first.
    lines += ["| " + " | ".join(_one_line(str(v)).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _one_line(text: str, limit: int | None = None) -> str:
    """Whitespace runs (newlines included) as one space, cut to `limit` characters."""
    text = " ".join(text.split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _code(text: str) -> str:
    # Double backticks let the text itself hold single backticks (PowerShell escapes, shell subshells).
    return "`` " + _one_line(text, TEXT_CHARS_IN_MARKDOWN).replace("``", "`\u200b`") + " ``"


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | np.integer):
        return f"{value:,}"
    if isinstance(value, float | np.floating):
        return f"{value:.4f}"
    return str(value)


def _value(value: Any) -> str:
    """A free-form figure (job keys, stage details, extras): six significant digits, not four decimals."""
    if isinstance(value, dict | list | tuple):
        return json.dumps(_jsonable(value), separators=(", ", ": "))
    if isinstance(value, float | np.floating):
        return f"{value:.6g}"
    return _fmt(value)
