"""The semi-supervised experiment on real URLs: does a small student approach its teacher as the share of
pseudo-labelled rows grows, by more than one training seed differs from the next?

The recipe is jobs/experiments/url-semi.yaml (url_data.py holds every data policy: scheme removed, registered-
domain groups, caps on the crawl, the campaign and IP hosts). Test rows: registered domains found nowhere else.
The labelled set is small (--labelled, of which --validation whole domains are the validation split); the pool
(--pool) keeps its labels only as `true_label`, to score pseudo-labels. Students of a fixed size learn a share
r of pseudo-labelled rows, three training seeds per point (semi_supervised.repeats); the verdict pairs the
r = 1 and r = 0 students of each seed (results.Verdict). --presets adds other student sizes, each a run of its
own that reuses the first run's teacher rounds (reuse_from). A style-only control (logistic regression on the
URL's form, length, dots, slashes, query and TLD, no characters) shows how much the source style alone
explains.

    python benchmarks/quality/url_semi.py                              # ~40 min on 2 cores
    python benchmarks/quality/url_semi.py --smoke                      # tiny rows and models
    python benchmarks/quality/url_semi.py --presets default,small --set 'semi_supervised.added_rows=[0, 5000, -1]' \\
        --name url_semi_growing --out runs/quality/url-growing         # both sizes and the growing curve
Writes benchmarks/quality/url_semi.{json,md,png} (--name: another stem).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from results import ROOT, SHARED, Results, Spread, Verdict, jsonable, table, tiny_teacher  # noqa: E402
from sklearn.feature_extraction import DictVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import f1_score, roc_auc_score  # noqa: E402
from url_data import CLASSES, write_experiment_shards  # noqa: E402

from smallsec_ray.job import RunResults, run_job  # noqa: E402
from smallsec_ray.spec import load_spec, parse_override  # noqa: E402
from smallsec_ray.students.folder import load_model  # noqa: E402

SPEC = ROOT / "jobs" / "experiments" / "url-semi.yaml"
SMOKE = {  # tiny everything, the same stages and code (the teacher's folder is added in main)
    "teacher.max_length": 32, "teacher.finetune.epochs": 1, "semi_supervised.rounds": 1,
    "semi_supervised.ratios": [0.0, 1.0], "semi_supervised.repeats": 1, "training.epochs": 1,
    "student.max_length": 64,
}
SMOKE_SIZES = {"labelled": 300, "validation": 100, "pool": 300, "test": 200}


def style_features(url: str) -> dict:
    host = re.split(r"[/?#]", url, maxsplit=1)[0]
    tld = host.rsplit(".", 1)[-1] if "." in host else ""
    return {"ip": bool(re.match(r"^\d+(\.\d+){3}(:\d+)?$", host)), "path": "/" in url, "query": "?" in url,
            "port": ":" in host, "len": min(len(url) // 10, 20), "dots": min(host.count("."), 6),
            "slashes": min(url.count("/"), 8), "tld=" + (tld if tld.isalpha() else "num"): 1}


def style_control(data: Path) -> dict:
    """Macro-F1 and AUC of a model that sees only the URL's style (no characters)."""
    labelled, test = pd.read_parquet(data / "labelled"), pd.read_parquet(data / "test")
    train = labelled[labelled["fixed_split"] == "train"]
    vec = DictVectorizer()
    x, tx = vec.fit_transform(train["text"].map(style_features)), vec.transform(test["text"].map(style_features))
    model = LogisticRegression(max_iter=2000).fit(x, train["label"])
    probs = model.predict_proba(tx)[:, [list(model.classes_).index(c) for c in CLASSES]]
    y = test["label"].map(CLASSES.index).to_numpy()
    present = [k for k in range(len(CLASSES)) if 0 < (y == k).sum() < len(y)]
    return {"macro_f1": float(f1_score(y, probs.argmax(1), average="macro")),
            "auc": float(np.mean([roc_auc_score(y == k, probs[:, k]) for k in present]))}


def parameters(folder: Path) -> int:
    net, _, _ = load_model(folder)
    return sum(p.numel() for p in net.parameters())


def teacher_parameters(folder: Path) -> int:
    from transformers import AutoModelForSequenceClassification

    return sum(p.numel() for p in AutoModelForSequenceClassification.from_pretrained(folder).parameters())


def teacher_figures(results: RunResults) -> dict:
    """The teacher rounds (the same in every preset's run): validation, test, pseudo-label accuracy."""
    rounds, report = results["rounds"], results["evaluate"]
    chosen = rounds.chosen.teachers.members[0].model
    return {"rounds": [{"round": r.round, "validation": r.validation, "gain": r.gain,
                        "pool_rows_used": r.pool_rows_used} for r in rounds.rounds],
            "best_round": rounds.best, "stopped": rounds.stopped,
            "test": {name: m.by_class for name, m in report.models.items() if name.startswith("teacher")},
            "pseudo_label_accuracy": report.pseudo_label_accuracy,
            "parameters": teacher_parameters(Path(results.location(chosen)))}


def student_figures(results: RunResults) -> dict:
    """One preset's students: the curves (mean, range, every seed), the gap closed, and the paired verdict of
    the largest share r against r = 0."""
    report, points = results["evaluate"], results["train_students"].points
    fixed = sorted((c for c in report.curves if c["curve"] == "fixed"), key=lambda c: c["x"])
    verdicts = {}
    if len(fixed) > 1 and fixed[0]["x"] == 0:
        low, high = ({r["seed"]: r for r in c["runs"]} for c in (fixed[0], fixed[-1]))
        seeds = sorted(set(low) & set(high))
        verdicts = {metric: Verdict.of([high[s][metric] for s in seeds], [low[s][metric] for s in seeds])
                    for metric in ("macro_f1", "auc")}
    linear = report.models.get("linear reference (labelled rows)")
    return {"parameters": parameters(Path(results.location(points[0].model.model_dir))),
            "curves": report.curves, "gap_closed": report.gap_closed, "verdicts": verdicts,
            "largest_r": fixed[-1]["x"] if fixed else None,
            "linear_reference_labelled": linear.by_class if linear else None}


def markdown(results: dict) -> str:
    """The experiment's tables, from a results file's figures (benchmarks/tables.py calls this too)."""
    teacher = results["teacher"]
    rows = [[name, f"{teacher['parameters']:,}", "", "", "", f"{m['macro_f1']:.4f}", f"{m['roc_auc_macro']:.4f}"]
            for name, m in teacher["test"].items()]
    for preset, r in results["presets"].items():
        for c in r["curves"]:
            rows.append([f"student {preset}", f"{r['parameters']:,}", c["point"], f"{c['labelled_rows']:,}",
                         f"{c['pseudo_rows']:,}", _curve_value(c, "macro_f1"), _curve_value(c, "auc")])
    first = next(iter(results["presets"].values()))
    if first["linear_reference_labelled"]:
        ref = first["linear_reference_labelled"]
        rows.append(["linear, labelled rows", "", "", "", "", f"{ref['macro_f1']:.4f}", f"{ref['roc_auc_macro']:.4f}"])
    s = results["style_only_control"]
    rows.append(["style-only control", "", "", "", "", f"{s['macro_f1']:.4f}", f"{s['auc']:.4f}"])
    seeds = max((len(c["runs"]) for r in results["presets"].values() for c in r["curves"]), default=1)
    lines = [f"Students: mean [min, max] over {seeds} training seeds per point (the same rows).", "",
             table(["model", "params", "point", "labelled", "pseudo", "macro-F1", "AUC"], rows, right=(1, 3, 4, 5, 6))]
    for preset, r in results["presets"].items():
        gap = r["gap_closed"]
        verdict = "; ".join(f"{metric}: **{v['outcome']}** ({Spread(**v['differences']).mean:+.4f}; per seed "
                            + ", ".join(f"{d:+.4f}" for d in v["differences"]["values"]) + ")"
                            for metric, v in r["verdicts"].items())
        lines += [f"Student {preset}, r = {r['largest_r']:g} against r = 0, paired by seed: {verdict or 'n/a'}. "
                  f"Gap to the best teacher round closed (between means): {_pct(gap['macro_f1'])} of macro-F1, "
                  f"{_pct(gap['auc'])} of AUC.", ""]
    lines += ["Pseudo-label accuracy per round: " + "; ".join(
        f"round {a['round']}: {a.get('accuracy', float('nan')):.4f} ({a['rows_with_true_label']:,} rows)"
        for a in teacher["pseudo_label_accuracy"]) + f". Rounds: {teacher['stopped']}; best round "
        f"{teacher['best_round']}.", ""]
    return "\n".join(lines)


def _curve_value(c: dict, metric: str) -> str:
    span = c.get(f"{metric}_range")
    if len(c.get("runs", [])) < 2 or not span:
        return f"{c[metric]:.4f}"
    return f"{c[metric]:.4f} [{span[0]:.4f}, {span[1]:.4f}]"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def figure(results: dict) -> Any:
    from matplotlib.figure import Figure

    growing = any(c["curve"] == "growing" for r in results["presets"].values() for c in r["curves"])
    curves = ("fixed", "growing") if growing else ("fixed",)
    fig = Figure(figsize=(5.5 * len(curves), 7.5))
    axes = fig.subplots(2, len(curves), squeeze=False)
    teachers = results["teacher"]["test"]
    for row, (metric, key, title) in enumerate((("macro_f1", "macro_f1", "macro-F1"),
                                                 ("auc", "roc_auc_macro", "ROC AUC (one-vs-rest, macro)"))):
        for col, curve in enumerate(curves):
            ax = axes[row][col]
            for k, (preset, r) in enumerate(results["presets"].items()):
                pts = sorted((c for c in r["curves"] if c["curve"] == curve), key=lambda c: c["x"])
                ax.plot([c["x"] for c in pts], [c[metric] for c in pts], marker="o", color=f"C{k}",
                        label=f"student {preset} ({r['parameters'] / 1e6:.2f}M), mean over seeds")
                ax.scatter([c["x"] for c in pts for _ in c["runs"]], [s[metric] for c in pts for s in c["runs"]],
                           s=12, color=f"C{k}", alpha=0.45)
            for k, (name, m) in enumerate(teachers.items()):
                ax.axhline(m[key], color=f"C{k + 3}", linestyle="--",
                           label=f"{name} ({results['teacher']['parameters'] / 1e6:.1f}M)")
            ax.axhline(results["style_only_control"][metric], color="black", linestyle="-.", linewidth=0.8,
                       label="style-only control")
            ax.set_xlabel("share r of pseudo-labelled rows (fixed size)" if curve == "fixed"
                          else "pseudo-labelled rows added to the labelled rows")
            ax.set_ylabel(title)
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    fig.suptitle("URLs, 3 classes, test domains unseen in training", fontsize=11)
    fig.tight_layout()
    return fig


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labelled", type=int, default=3600)
    p.add_argument("--validation", type=int, default=600)
    p.add_argument("--pool", type=int, default=24000)
    p.add_argument("--test", type=int, default=6000)
    p.add_argument("--presets", default="default", help="student presets, comma-separated: the first runs the "
                   "teacher rounds, the others reuse them")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the recipe in every run (a lever)")
    p.add_argument("--out", type=Path, default=Path("runs/quality/url"))
    p.add_argument("--name", default="url_semi", help="results file stem")
    p.add_argument("--smoke", action="store_true", help="tiny rows and models: checks that the recipe runs "
                   "(results go to a temporary folder)")
    args = p.parse_args()
    out = Results(args.name, folder=HERE, smoke=args.smoke)
    base = (out.folder / "runs" if args.smoke else args.out).resolve()
    sizes = {"labelled": args.labelled, "validation": args.validation, "pool": args.pool, "test": args.test}
    extra = dict(parse_override(text) for text in args.set)
    presets = args.presets.split(",")
    if args.smoke:
        sizes, presets = SMOKE_SIZES, ["tiny"]
        extra = {**SMOKE, "teacher.model": str(tiny_teacher(base / "tiny-teacher", CLASSES)), **extra}
    data = base / "data"
    counts = write_experiment_shards(SHARED, data, sizes["labelled"], sizes["validation"], sizes["pool"],
                                     sizes["test"])
    style = style_control(data)
    print(f"data: {counts}; style-only control: {style}", flush=True)
    figures: dict[str, Any] = {"recipe": str(SPEC.relative_to(ROOT)), "overrides": extra, "sizes": sizes,
                               "data": counts, "style_only_control": style, "presets": {}}
    first = None
    for preset in presets:
        run = base / f"run-{preset}"
        spec = load_spec(SPEC, {"name": f"url-semi-{preset}", "data.labelled": [str(data / "labelled")],
                                "data.unlabelled": [str(data / "pool")], "data.test": [str(data / "test")],
                                "student.preset": preset, "output": str(run),
                                "reuse_from": [str(first)] if first else [], **extra})
        results = run_job(spec)
        figures["teacher"] = figures.get("teacher") or teacher_figures(results)
        figures["presets"][preset] = student_figures(results)
        first = first or run
    figures = jsonable(figures)
    print(markdown(figures))
    print(f"results: {out.write(figures, markdown=markdown(figures), figure=figure(figures))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
