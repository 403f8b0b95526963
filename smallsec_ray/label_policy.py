"""How the student's targets are made from the given (noisy) labels and the teacher's probabilities.

distillation.policy:
* soft: every row keeps its given label; the loss mixes it with the teacher's distribution
  (alpha * CE(given) + (1 - alpha) * T^2 * KL(teacher || student)); alpha < 0.5 trusts the teacher more.
* relabel: where the teacher confidently disagrees with a noisy row's given label, the label becomes the
  teacher's class, then the same loss. "Confidently" is a threshold per class, picked without knowing
  which labels are wrong: at threshold t, the clean validation rows of class c show how often the
  teacher contradicts a *right* label (e_c(t)). Of the D_c(t) contradictions among the N_c noisy rows
  labelled c, W of them wrong labels, D = W + e (N - W), so W = (D - e N) / (1 - e) are estimated to fix
  a wrong label, a share W / D. The threshold is the lowest in a grid whose estimate reaches
  distillation.relabel_precision (no relabelling of class c if none does).
* weighted: a noisy row weighs p_teacher(given label) ** weight_power in the loss: labels the teacher
  doubts count less.

Only rows of the noisy part are relabelled or weighted; the clean labelled rows are trusted. The counts
come from one Ray task per shard (histograms of the teacher's doubt), so the driver stays small.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import ray

from smallsec_ray import storage
from smallsec_ray.data import schema
from smallsec_ray.data.noise import NoisePlan, apply_noise
from smallsec_ray.spec import DistillationSpec

BINS = 200  # histogram bins of the teacher's doubt, 1 - p(given label), over [0, 1]
GRID = tuple(round(0.5 + 0.01 * i, 2) for i in range(50))  # candidate thresholds 0.50 .. 0.99


@dataclass
class PolicyPlan:
    """What `apply_policy` does to each noisy row."""

    policy: str
    classes: list[str]
    thresholds: dict[str, float] = field(default_factory=dict)  # relabel: per given class, doubt above which
    weight_power: float = 1.0


@dataclass
class PolicyReport:
    """What the policy did to the noisy rows of the train split (the manifest keeps it)."""

    policy: str
    noisy_rows: int
    thresholds: dict[str, float] = field(default_factory=dict)
    estimated_precision: dict[str, float | None] = field(default_factory=dict)
    # the highest precision estimated on the grid and its threshold: why nothing was relabelled, if nothing was
    best_estimate: dict[str, dict[str, float]] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)  # given class -> rows relabelled
    changed_correctly: dict[str, int] | None = None  # known in experiments only (true_label)


def plan_policy(distillation: DistillationSpec, classes: list[str], noisy_paths: list[str], val_labels: list[str],
                val_probs: np.ndarray, noise: NoisePlan | None) -> tuple[PolicyPlan, PolicyReport]:
    """The plan for the noisy train rows, from the teacher's probabilities on them and on the clean
    validation rows (`val_labels`, `val_probs`)."""
    plan = PolicyPlan(distillation.policy, list(classes), weight_power=distillation.weight_power)
    counts = [_doubt_counts.remote(p, classes, noise) for p in noisy_paths]
    totals = _sum_counts(ray.get(counts), classes)
    rows = int(sum(totals["rows"].values()))
    if distillation.policy != "relabel":
        return plan, PolicyReport(distillation.policy, rows)
    report = PolicyReport("relabel", rows, changed_correctly={} if totals["known_truth"] else None)
    edges = np.linspace(0.0, 1.0, BINS + 1)
    for index, cls in enumerate(classes):
        clean_doubt = 1.0 - val_probs[np.array([label == cls for label in val_labels], bool), index]
        n_noisy = totals["rows"][cls]
        threshold, estimate, best = 1.0, None, {"threshold": 1.0, "precision": 0.0}
        for t in GRID:
            above = int(totals["doubt"][cls][edges[1:] > t + 1e-12].sum())
            if above == 0 or len(clean_doubt) == 0:
                continue
            e = float(np.mean(clean_doubt > t))
            precision = (above - e * n_noisy) / (1.0 - e) / above if e < 1.0 else 0.0
            if precision > best["precision"]:
                best = {"threshold": t, "precision": round(precision, 4)}
            if precision >= distillation.relabel_precision:
                threshold, estimate = t, round(max(precision, 0.0), 4)
                break
        if distillation.relabel_threshold is not None:
            threshold, estimate = distillation.relabel_threshold, None
        plan.thresholds[cls] = threshold
        report.thresholds[cls] = threshold
        report.estimated_precision[cls] = estimate
        report.best_estimate[cls] = best
        above_bins = edges[1:] > threshold + 1e-12
        report.changed[cls] = int(totals["doubt"][cls][above_bins].sum())
        if report.changed_correctly is not None:
            report.changed_correctly[cls] = int(totals["wrong"][cls][above_bins].sum())
    return plan, report


def apply_policy(batch: pa.Table, plan: PolicyPlan) -> pa.Table:
    """A batch of noisy rows (label, probs) relabelled or weighted per the plan; `weight` added."""
    labels = batch[schema.LABEL].to_pylist()
    probs = np.asarray(batch[schema.PROBS].to_pylist(), np.float32).reshape(len(labels), len(plan.classes))
    index = {c: i for i, c in enumerate(plan.classes)}
    given = np.array([index.get(label, -1) if label is not None else -1 for label in labels])
    p_given = np.where(given >= 0, probs[np.arange(len(labels)), np.maximum(given, 0)], 1.0)
    weights = np.ones(len(labels), np.float32)
    if plan.policy == "relabel":
        others = probs.copy()
        others[np.arange(len(labels)), np.maximum(given, 0)] = -1.0
        for i, label in enumerate(labels):
            if given[i] >= 0 and 1.0 - p_given[i] > plan.thresholds.get(label, 1.0) + 1e-12:
                labels[i] = plan.classes[int(others[i].argmax())]
        batch = batch.set_column(batch.schema.get_field_index(schema.LABEL), schema.LABEL,
                                 pa.array(labels, pa.string()))
    elif plan.policy == "weighted":
        weights = np.power(np.clip(p_given, 0.0, 1.0), plan.weight_power).astype(np.float32)
    return batch.append_column(schema.WEIGHT, pa.array(weights))


@ray.remote(num_cpus=0.5)
def _doubt_counts(path: str, classes: list[str], noise: NoisePlan | None) -> dict:
    """Per given class: rows, and histograms of 1 - p(given label) over the train split of one shard, of
    all rows and of rows whose given label is wrong (when the true label is known)."""
    wanted = (schema.ID, schema.LABEL, schema.SPLIT, schema.PROBS, schema.TRUE_LABEL, *(noise.columns if noise else ()))
    columns = [c for c in dict.fromkeys(wanted) if c in storage.read_schema(path).names]
    table = storage.read_table(path, columns=columns)
    table = table.filter(pa.compute.equal(table[schema.SPLIT], "train"))
    if noise is not None:
        table = apply_noise(table, noise)
    labels = table[schema.LABEL].to_pylist()
    truth = table[schema.TRUE_LABEL].to_pylist() if schema.TRUE_LABEL in table.column_names else None
    probs = np.asarray(table[schema.PROBS].to_pylist(), np.float32).reshape(len(labels), len(classes))
    out: dict = {"rows": {}, "doubt": {}, "wrong": {}, "known_truth": truth is not None}
    for index, cls in enumerate(classes):
        mine = np.array([label == cls for label in labels], bool)
        doubt = 1.0 - probs[mine, index]
        out["rows"][cls] = int(mine.sum())
        out["doubt"][cls] = np.histogram(doubt, bins=BINS, range=(0.0, 1.0))[0]
        out["wrong"][cls] = np.zeros(BINS)
        if truth is not None:
            wrong = np.array([t != cls for t, m in zip(truth, mine, strict=True) if m], bool)
            out["wrong"][cls] = np.histogram(doubt[wrong], bins=BINS, range=(0.0, 1.0))[0]
    return out


def _sum_counts(parts: list[dict], classes: list[str]) -> dict:
    totals: dict = {"rows": dict.fromkeys(classes, 0), "doubt": {c: np.zeros(BINS) for c in classes},
                    "wrong": {c: np.zeros(BINS) for c in classes}, "known_truth": bool(parts)}
    for part in parts:
        totals["known_truth"] &= part["known_truth"]
        for cls in classes:
            totals["rows"][cls] += part["rows"][cls]
            totals["doubt"][cls] += part["doubt"][cls]
            totals["wrong"][cls] += part["wrong"][cls]
    return totals
