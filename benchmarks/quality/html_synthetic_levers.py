"""Levers of the HTML synthetic experiment's further training, chosen on validation rows only.

Each recipe is a few overrides of jobs/experiments/html-synthetic.yaml (the further training's learning rate
and epochs; what the replayed real pages teach; the weight of a synthetic page; counterparts). V1 is trained
again from the experiment's production model and pages (reuse_from the experiment's first run: html_synthetic.py
must have run, or --smoke makes its own), then production and the new model are scored on the real validation
pages (accuracy, ROC AUC, macro-F1: the gate's metrics, on rows the gate never sees) and on the held-out
families' generated pages. Test rows are not read.

    python benchmarks/quality/html_synthetic_levers.py [--only NAME ...]
    python benchmarks/quality/html_synthetic_levers.py --smoke
Writes benchmarks/quality/html_synthetic_levers.{json,md} (every recipe run in this call).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import html_synthetic  # noqa: E402
from results import Results, table  # noqa: E402

from smallsec_ray.data import schema  # noqa: E402
from smallsec_ray.evaluation import class_metrics  # noqa: E402
from smallsec_ray.job import read_results, run_job  # noqa: E402
from smallsec_ray.spec import load_spec, parse_spec, with_overrides  # noqa: E402
from smallsec_ray.workloads.common import read_rows, score_student, strings  # noqa: E402

METRICS = ("accuracy", "roc_auc_macro", "macro_f1")
# name -> overrides of the recipe; the first runs' recipe: labels replayed, a synthetic page weighs 1, no counterparts
LABELS = {"synthetic.replay_targets": "labels", "synthetic.row_weight": 1.0, "synthetic.counterpart_class": None}
RECIPES: dict[str, dict] = {
    "lr3e-4-e4": LABELS,
    "lr1e-4-e4": {**LABELS, "synthetic.training.learning_rate": 1e-4},
    "lr1e-4-e2": {**LABELS, "synthetic.training.learning_rate": 1e-4, "synthetic.training.epochs": 2},
    "lr3e-5-e4": {**LABELS, "synthetic.training.learning_rate": 3e-5},
    "replay-production": {**LABELS, "synthetic.replay_targets": "production"},
    "replay-production-a0.2": {**LABELS, "synthetic.replay_targets": "production", "distillation.alpha": 0.2},
    "weight0.3": {**LABELS, "synthetic.row_weight": 0.3},
    "replay-production-weight0.3": {**LABELS, "synthetic.replay_targets": "production", "synthetic.row_weight": 0.3},
    "counterparts": {"synthetic.row_weight": 0.3},  # each page also benign, without its forms
    "counterparts-weight1": {},  # chosen on these validation rows: the experiment's recipe
    "counterparts-labels-weight1": {"synthetic.replay_targets": "labels"},
}


def validation_figures(folder: Path, texts: list[str], labels: list[str], classes: list[str]) -> dict:
    metrics = class_metrics(score_student(folder, texts), labels, classes)
    return {m: getattr(metrics, m) for m in METRICS}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=Path("runs/quality/html/V1-seed0"),
                   help="the experiment's run whose production model and pages every recipe reuses")
    p.add_argument("--out", type=Path, default=Path("runs/quality/html-levers"))
    p.add_argument("--only", nargs="+", choices=list(RECIPES), help="run these recipes only")
    p.add_argument("--smoke", action="store_true", help="two recipes on a tiny experiment of its own")
    args = p.parse_args()
    out = Results("html_synthetic_levers", smoke=args.smoke)
    names = args.only or list(RECIPES)
    source, base = args.source.resolve(), args.out.resolve()
    if args.smoke:
        names, base = ["counterparts-weight1", "weight0.3"], out.folder / "runs"
        generator = html_synthetic.tiny_generator(base / "tiny-generator", ["jewels", "tea", "bags", "shop"])
        data = base / "data"
        html_synthetic.write_experiment_shards(html_synthetic.SHARED, data)
        source = base / "source"
        run_job(load_spec(html_synthetic.SPEC, {"data.labelled": [str(data / "labelled")],
                                                "data.test": [str(data / "test")], "output": str(source),
                                                "synthetic.train_families": ["jewels", "tea"],
                                                **html_synthetic.SMOKE, "teacher.model": str(generator)}))
    finished = read_results(source)
    spec = finished.spec
    val = read_rows([finished.location(s) for s in finished["prepare"].shards("labelled")], "validation")
    texts, labels = strings(val, schema.TEXT), strings(val, schema.LABEL)
    production = validation_figures(Path(finished.location(finished["production"].model_dir)), texts, labels,
                                    spec.classes)
    recipes = []
    for name in names:  # the source run's own spec, with the lever on top: its other stages are reused
        overrides = {**RECIPES[name], "name": f"html-lever-{name}", "output": str(base / f"lever-{name}"),
                     "reuse_from": [str(source)]}
        results = run_job(parse_spec(with_overrides(spec.public_dump(), overrides), f"lever {name}"))
        trained = results["train_student"]
        held = [f["new"] for f in results["evaluate"].families if f["holdout"] == html_synthetic.HELD_OUT]
        recipes.append({"name": name, "overrides": RECIPES[name], "best_epoch": trained.best_epoch,
                        "validation": validation_figures(Path(results.location(trained.model_dir)), texts, labels,
                                                         spec.classes),
                        "held_out_family_mean": sum(held) / len(held) if held else None})
        print(recipes[-1], flush=True)
    figures = {"source": str(source), "validation_rows": len(texts), "production": production, "recipes": recipes}
    print(out.write(figures, markdown=markdown(figures)))
    return 0


def markdown(results: dict) -> str:
    rows = [["production", "-", *(f"{results['production'][m]:.4f}" for m in METRICS), "-"]]
    for r in results["recipes"]:
        held = "-" if r["held_out_family_mean"] is None else f"{r['held_out_family_mean']:.4f}"
        rows.append([r["name"], r["best_epoch"], *(f"{r['validation'][m]:.4f}" for m in METRICS), held])
    return (f"Validation pages: {results['validation_rows']} (never the test rows).\n\n"
            + table(["recipe", "best epoch", *METRICS, "held-out families' mean score"], rows, right=(1, 2, 3, 4, 5)))


if __name__ == "__main__":
    sys.exit(main())
