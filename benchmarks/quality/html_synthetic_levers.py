"""Levers of the HTML synthetic experiment's further training, chosen on validation rows only.

For each recipe (the further training's learning rate and epochs; what the replayed real pages teach; the
weight of a synthetic page), V1 is trained again from the experiment's production model and pages
(html_synthetic.py must have run: its prepare, production, generate and filter stage folders are copied),
then production and the new model are scored on the real validation pages (accuracy, ROC AUC, macro-F1:
the gate's metrics, on rows the gate never sees) and on the held-out families' generated pages. Test rows
are not read.
Run:
    .venv/bin/python benchmarks/quality/html_synthetic_levers.py [--only NAME ...]
Writes benchmarks/quality/html_synthetic_levers_results.json (a recipe run again replaces its entry).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from html_synthetic import SHARED_STAGES, job_spec, parser  # noqa: E402

from smallsec_ray.evaluation import class_metrics  # noqa: E402
from smallsec_ray.job import run_job  # noqa: E402
from smallsec_ray.spec import parse_spec  # noqa: E402
from smallsec_ray.workloads.common import score_student  # noqa: E402

# name -> html_synthetic.py options that differ from its defaults
# the first runs' recipe: labels replayed, a synthetic page weighs 1, no counterparts
LABELS = {"replay_targets": "labels", "row_weight": 1.0, "counterpart_class": None}
RECIPES = {
    "lr3e-4-e4": LABELS,
    "lr1e-4-e4": {**LABELS, "continue_lr": 1e-4},
    "lr1e-4-e2": {**LABELS, "continue_lr": 1e-4, "continue_epochs": 2},
    "lr3e-5-e4": {**LABELS, "continue_lr": 3e-5},
    "replay-production": {"replay_targets": "production", "row_weight": 1.0, "counterpart_class": None},
    "replay-production-a0.2": {"replay_targets": "production", "row_weight": 1.0, "alpha": 0.2,
                               "counterpart_class": None},
    "weight0.3": {"replay_targets": "labels", "row_weight": 0.3, "counterpart_class": None},
    "replay-production-weight0.3": {"replay_targets": "production", "row_weight": 0.3, "counterpart_class": None},
    "counterparts": {"replay_targets": "production", "row_weight": 0.3},  # each page also benign, without forms
    "counterparts-weight1": {},  # chosen on these validation rows: now the experiment's default
    "counterparts-labels-weight1": {"replay_targets": "labels"},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/quality/html"))
    p.add_argument("--only", nargs="+", choices=list(RECIPES), help="run these recipes only")
    args = p.parse_args()
    source = args.out / "run-V1"
    val = pd.read_parquet(args.out / "data" / "labelled")
    val = val[val["fixed_split"] == "validation"]
    texts, labels = val["text"].tolist(), val["label"].tolist()
    production_dir = source / json.loads((source / "production" / "manifest.json").read_text())["result"]["model_dir"]
    before = class_metrics(score_student(production_dir, texts), labels, ["benign", "phishing"])
    path = HERE / "html_synthetic_levers_results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results.update({"validation_rows": len(val),
                    "production": {m: float(getattr(before, m)) for m in ("accuracy", "roc_auc_macro", "macro_f1")}})
    recipes = {r["name"]: r for r in results.get("recipes", []) if "name" in r}
    for name in args.only or RECIPES:
        out = args.out / f"lever-{name}"
        for stage in SHARED_STAGES:
            if not (out / stage).exists():
                shutil.copytree(source / stage, out / stage)
        options = parser().parse_args([])
        for key, value in RECIPES[name].items():
            setattr(options, key, value)
        run_job(parse_spec(job_spec(options, args.out / "data", out, "V1"), "lever"))
        result = json.loads((out / "train_student" / "manifest.json").read_text())["result"]
        after = class_metrics(score_student(out / result["model_dir"], texts), labels, ["benign", "phishing"])
        families = json.loads((out / "evaluate" / "manifest.json").read_text())["result"]["families"]
        held = [f["new"] for f in families if f["holdout"] == "held out, training layouts"]
        recipes[name] = {
            "name": name, "date": date.today().isoformat(),
            "options": {k: getattr(options, k) for k in ("replay_targets", "row_weight", "counterpart_class")}
            | RECIPES[name],
            "learning_rate": options.continue_lr, "epochs": options.continue_epochs, "best_epoch": result["best_epoch"],
            "validation": {m: float(getattr(after, m)) for m in results["production"]},
            "held_out_family_mean": float(np.mean(held))}
        print(recipes[name], flush=True)
        results["recipes"] = list(recipes.values())
        path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
