"""Levers of the HTML synthetic experiment's further training, chosen on validation rows only.

For each recipe of `synthetic.training` (learning rate, epochs), V1 is trained again from the experiment's
production model and pages (html_synthetic.py must have run: its prepare, production, generate and filter
stage folders are copied), then production and the new model are scored on the real validation pages
(accuracy, ROC AUC, macro-F1: the gate's metrics, on rows the gate never sees) and on the held-out
families' generated pages. Test rows are not read.
Run:
    .venv/bin/python benchmarks/quality/html_synthetic_levers.py
Writes benchmarks/quality/html_synthetic_levers_results.json.
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

from html_synthetic import SHARED_STAGES, job_spec  # noqa: E402

from smallsec_ray.evaluation import class_metrics  # noqa: E402
from smallsec_ray.job import run_job  # noqa: E402
from smallsec_ray.spec import parse_spec  # noqa: E402
from smallsec_ray.workloads.common import score_student  # noqa: E402

RECIPES = [(3e-4, 4), (1e-4, 4), (1e-4, 2), (3e-5, 4)]  # (peak learning rate, epochs); the first: the default


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/quality/html"))
    args = p.parse_args()
    source = args.out / "run-V1"
    val = pd.read_parquet(args.out / "data" / "labelled")
    val = val[val["fixed_split"] == "validation"]
    texts, labels = val["text"].tolist(), val["label"].tolist()
    production_dir = source / json.loads((source / "production" / "manifest.json").read_text())["result"]["model_dir"]
    before = class_metrics(score_student(production_dir, texts), labels, ["benign", "phishing"])
    results = {"date": date.today().isoformat(), "validation_rows": len(val),
               "production": {m: float(getattr(before, m)) for m in ("accuracy", "roc_auc_macro", "macro_f1")},
               "recipes": []}
    for lr, epochs in RECIPES:
        out = args.out / f"lever-lr{lr:g}-e{epochs}"
        for stage in SHARED_STAGES:
            if not (out / stage).exists():
                shutil.copytree(source / stage, out / stage)
        defaults = argparse.Namespace(per_family=12, epochs=12, lr=1e-3, continue_epochs=epochs, continue_lr=lr,
                                      replay_rows=2000)
        run_job(parse_spec(job_spec(defaults, args.out / "data", out, "V1"), "lever"))
        result = json.loads((out / "train_student" / "manifest.json").read_text())["result"]
        after = class_metrics(score_student(out / result["model_dir"], texts), labels, ["benign", "phishing"])
        families = json.loads((out / "evaluate" / "manifest.json").read_text())["result"]["families"]
        held = [f["new"] for f in families if f["holdout"] == "held out, training layouts"]
        results["recipes"].append({
            "learning_rate": lr, "epochs": epochs, "best_epoch": result["best_epoch"],
            "validation": {m: float(getattr(after, m)) for m in results["production"]},
            "held_out_family_mean": float(np.mean(held))})
        print(results["recipes"][-1], flush=True)
    (HERE / "html_synthetic_levers_results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
