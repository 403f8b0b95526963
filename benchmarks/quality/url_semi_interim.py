"""Test figures of the finished students of an interrupted url_semi.py run, scored as the evaluate stage
scores them (the same test rows, evaluation.class_metrics), next to the teacher rounds' test probabilities.

    .venv/bin/python benchmarks/quality/url_semi_interim.py [RUN_FOLDER]   # default runs/quality/url/run-default

For a session that could not finish the whole command; its figures are marked interim in RESULTS.md.
"""

import json
import sys
from pathlib import Path

import numpy as np

from smallsec_ray.evaluation import class_metrics
from smallsec_ray.workloads.common import probs_of, read_rows, score_student, strings

CLASSES = ["benign", "phishing", "malware"]


def test_rows(run: Path, labels: dict) -> tuple:
    """A round's test rows sorted by id: (ids, texts, labels, teacher probabilities)."""
    table = read_rows([str(run / p) for p in labels["parts"]["labelled"] + labels["parts"]["test"]], "test")
    order = np.argsort(strings(table, "id"))
    pick = lambda column: list(np.array(strings(table, column))[order])  # noqa: E731
    return pick("id"), pick("text"), pick("label"), probs_of(table)[order]


def main() -> int:
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/quality/url/run-default")
    rounds = json.loads((run / "rounds" / "manifest.json").read_text())["result"]
    rows = {}
    for r in rounds["rounds"]:
        ids, texts, labels, probs = test_rows(run, r["labels"])
        m = class_metrics(probs, labels, CLASSES)
        rows[f"teacher round {r['round']}"] = (m.macro_f1, m.roc_auc_macro, m.accuracy, "")
    for done in sorted((run / "train_students").glob("student-*/done.json")):
        model = json.loads(done.read_text())
        m = class_metrics(score_student(run / model["model_dir"], texts), labels, CLASSES)
        rows[done.parent.name] = (m.macro_f1, m.roc_auc_macro, m.accuracy, model["best_epoch"])
    metric = json.loads((run / "spec.resolved.json").read_text())["semi_supervised"]["round_metric"]
    print(f"best round (validation {metric}): {rounds['best']}; {len(ids)} test rows")
    print("model | macro-F1 | AUC | accuracy | best epoch")
    for name, (f1, auc, acc, epoch) in rows.items():
        print(f"{name} | {f1:.4f} | {auc:.4f} | {acc:.4f} | {epoch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
