"""The semi_supervised workload's row choices and figures, without Ray: which pool rows a student gets,
what it learns from them, how much of the gap to the teacher a curve closed, and multi-class metrics."""

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from smallsec_ray.data.schema import ID, LABEL, PROBS, SPLIT, TEXT
from smallsec_ray.evaluation import class_metrics
from smallsec_ray.workloads.semi_supervised import _eligible, _gap_closed, class_shares, pool_targets, with_one_hot

CLASSES = ["benign", "phishing", "malware"]


def pool(probs: list[list[float]]) -> pa.Table:
    n = len(probs)
    return pa.table({ID: [f"p{i}" for i in range(n)], TEXT: [f"u{i}" for i in range(n)],
                     LABEL: pa.nulls(n, pa.string()), SPLIT: ["train"] * n,
                     PROBS: pa.array(probs, pa.list_(pa.float32()))})


def test_class_metrics_match_sklearn_on_three_classes():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=300)
    y = rng.integers(0, 3, size=300)
    probs[np.arange(300), y] += 0.5  # informative, not perfect
    probs /= probs.sum(1, keepdims=True)
    m = class_metrics(probs, [CLASSES[k] for k in y], CLASSES)
    assert m.macro_f1 == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))
    assert m.roc_auc_macro == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m.per_class["malware"].support == int((y == 2).sum())
    assert m.accuracy == pytest.approx((probs.argmax(1) == y).mean())


def test_class_metrics_leave_out_a_class_absent_from_the_rows():
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    m = class_metrics(probs, ["benign", "phishing", "benign"], CLASSES)
    assert m.per_class["malware"].roc_auc is None and m.per_class["malware"].support == 0
    assert m.roc_auc_macro == pytest.approx(np.mean([m.per_class["benign"].roc_auc, m.per_class["phishing"].roc_auc]))
    assert m.macro_f1 == 1.0  # malware is neither true nor predicted anywhere: not averaged in


def test_eligible_rows_respect_confidence_nest_and_balance():
    probs = [[0.95, 0.03, 0.02]] * 6 + [[0.1, 0.85, 0.05]] * 3 + [[0.2, 0.1, 0.7]] * 2 + [[0.4, 0.35, 0.25]]
    table = pool(probs)
    plain = _eligible(table, CLASSES, 0.6, None, seed=0)
    assert len(plain) == 11 and "p11" not in plain  # the unsure row is left out
    assert _eligible(table, CLASSES, 0.6, None, seed=0) == plain  # seeded: the same order again
    even = _eligible(table, CLASSES, 0.0, class_shares("even", CLASSES, []), seed=0)
    first_six = {int(i[1:]) for i in even[:6]}
    assert len(first_six & set(range(6))) == 2 and len(first_six & {6, 7, 8}) == 2 and {9, 10} <= first_six
    assert len(even) == 12  # classes that run out leave the rest to the others
    shares = class_shares("labelled", CLASSES, ["benign"] * 4 + ["phishing"] * 2 + ["malware"] * 2)
    assert shares == [0.5, 0.25, 0.25]
    like_labelled = _eligible(table, CLASSES, 0.0, shares, seed=0)
    first_eight = [int(i[1:]) for i in like_labelled[:8]]
    assert sum(i < 6 or i == 11 for i in first_eight) == 4 and sum(6 <= i < 9 for i in first_eight) == 2
    assert sorted(like_labelled) == sorted(even)  # the same rows, in another order
    assert class_shares("none", CLASSES, ["benign"]) is None


def test_pool_rows_learn_soft_probabilities_or_hard_labels_and_labelled_rows_one_hot():
    table = pool([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    soft = pool_targets(table, {"p0", "p2"}, CLASSES, hard=False)
    assert soft[ID].to_pylist() == ["p0", "p2"] and soft[LABEL].null_count == 2
    assert np.allclose(soft[PROBS].to_pylist(), [[0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    hard = pool_targets(table, {"p0", "p1"}, CLASSES, hard=True)
    assert hard[LABEL].to_pylist() == ["phishing", "benign"]
    assert hard[PROBS].to_pylist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    labelled = pa.table({ID: ["a", "b"], TEXT: ["x", "y"], LABEL: ["malware", "benign"], SPLIT: ["train"] * 2})
    rows = with_one_hot(labelled, CLASSES, keep={"a"})
    assert rows.column_names == hard.column_names == [ID, TEXT, LABEL, SPLIT, PROBS]
    assert rows[PROBS].to_pylist() == [[0.0, 0.0, 1.0]]


def test_gap_closed_is_the_share_of_the_teacher_gap_the_largest_r_closed():
    class Teacher:
        macro_f1, roc_auc_macro = 0.90, 0.98

    curves = [{"curve": "fixed", "x": 0.0, "macro_f1": 0.80, "auc": 0.94},
              {"curve": "fixed", "x": 0.5, "macro_f1": 0.86, "auc": 0.95},
              {"curve": "fixed", "x": 1.0, "macro_f1": 0.87, "auc": 0.93},
              {"curve": "growing", "x": 5000.0, "macro_f1": 0.99, "auc": 0.99}]
    gap = _gap_closed(curves, Teacher())
    assert gap["macro_f1"] == pytest.approx(0.7) and gap["auc"] == pytest.approx(-0.25)
    Teacher.macro_f1 = 0.75  # a teacher below the r = 0 student: no gap to close
    assert _gap_closed(curves, Teacher())["macro_f1"] is None
