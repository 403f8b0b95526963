"""Detection metrics against hand-counted cases: thresholds at a target FPR, per-group splits, model
comparisons and the label audit."""

from __future__ import annotations

import numpy as np
import pytest

from smallsec_ray.errors import DataError
from smallsec_ray.evaluation import (
    compare_at_threshold,
    evaluate_model,
    evaluate_scores,
    label_audit,
    merge_audits,
    operating_point,
    pick_threshold,
)

CLASSES = ["benign", "malicious"]

# Ten rows to count by hand: five positives, five negatives.
SCORES = np.array([0.95, 0.8, 0.7, 0.6, 0.4, 0.9, 0.55, 0.3, 0.2, 0.1])
Y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])


def _probs(p_malicious) -> np.ndarray:
    p = np.asarray(p_malicious, dtype=float)
    return np.stack([1 - p, p], axis=1)


def _labels(y) -> list[str]:
    return [CLASSES[v] for v in y]


def test_pick_threshold_allows_at_most_the_fpr_share_of_negatives():
    negatives = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    positives = [0.85, 0.92, 0.97, 0.99]
    scores = np.array(negatives + positives)
    y = np.array([0] * 10 + [1] * 4)
    # FPR 0.1 of 10 negatives allows one false positive: flag from the lowest score above 0.9.
    assert pick_threshold(scores, y, 0.1) == 0.92
    assert pick_threshold(scores, y, 0.0) == 0.97
    assert pick_threshold(scores, y, 0.2) == 0.85
    point = operating_point(scores, y, pick_threshold(scores, y, 0.1))
    assert (point.tp, point.fp) == (3, 1)


def test_pick_threshold_is_the_lowest_that_honours_the_fpr():
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.2).astype(int)
    scores = np.round(np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1), 3)  # rounded: many ties
    distinct = np.unique(scores)
    for fpr in (0.0, 0.001, 0.01, 0.05, 0.3):
        t = pick_threshold(scores, y, fpr)
        assert operating_point(scores, y, t).fpr <= fpr
        lower = distinct[distinct < t]
        if len(lower):
            assert operating_point(scores, y, lower.max()).fpr > fpr


def test_tied_negatives_are_never_split_by_the_threshold():
    scores = np.array([0.9, 0.9, 0.9, 0.5, 0.4, 0.8])
    y = np.array([0, 0, 0, 0, 0, 1])
    t = pick_threshold(scores, y, 0.2)  # allows one of five negatives, but three tie at the top
    assert t > 0.9
    assert operating_point(scores, y, t).fp == 0


def test_pick_threshold_without_validation_negatives_says_what_to_do():
    with pytest.raises(DataError, match="no negatives"):
        pick_threshold(np.array([0.2, 0.9]), np.array([1, 1]), 0.01)


def test_evaluate_scores_matches_hand_counts():
    m = evaluate_scores(SCORES, Y, {"given": 0.5}, fprs=[0.0, 0.2])
    assert (m.n, m.n_pos) == (10, 5)
    p = m.at_threshold["given"]
    assert (p.tp, p.fp, p.tn, p.fn) == (4, 2, 3, 1)
    assert (p.tpr, p.fpr) == (0.8, 0.4)
    assert m.accuracy == 0.7
    f1_pos, f1_neg = 2 * (4 / 6) * 0.8 / (4 / 6 + 0.8), 2 * 0.75 * 0.6 / (0.75 + 0.6)
    assert m.macro_f1 == pytest.approx((f1_pos + f1_neg) / 2)
    assert m.roc_auc == pytest.approx(20 / 25)  # 20 of 25 positive-negative pairs ranked right
    # Oracle: one FP of five allowed -> flag from 0.6 (above the second negative, 0.55): 4 of 5 positives.
    assert m.oracle_tpr_at_fpr == {"0": 0.2, "0.2": 0.8}


def test_one_class_rows_report_auc_as_undefined():
    m = evaluate_scores(np.array([0.1, 0.7, 0.2]), np.array([0, 0, 0]), {"given": 0.5}, fprs=[0.01])
    assert m.roc_auc is None and "one class" in m.note
    assert m.oracle_tpr_at_fpr == {"0.01": None}
    assert m.at_threshold["given"].tpr is None
    assert m.at_threshold["given"].fpr == pytest.approx(1 / 3)


def test_evaluate_model_picks_thresholds_on_validation_and_splits_by_group():
    rng = np.random.default_rng(1)
    y_val = (rng.random(500) < 0.3).astype(int)
    p_val = np.clip(rng.normal(0.3 + 0.4 * y_val, 0.15), 0, 1)
    sources = ["a", "b", None, "a", "b", "a", "b", "a", "b", "a"]
    report = evaluate_model("student", _probs(SCORES), _labels(Y), CLASSES, "malicious", _probs(p_val),
                            _labels(y_val), fprs=[0.01, 0.1], groups={"source": sources},
                            extra_thresholds={"given": 0.5})
    assert report.thresholds["val_fpr_0.01"] == pick_threshold(p_val, y_val, 0.01)
    assert report.thresholds["val_fpr_0.1"] == pick_threshold(p_val, y_val, 0.1)
    assert report.thresholds["given"] == 0.5
    groups = report.groups["source"]
    assert sorted(groups) == ["(missing)", "a", "b"]
    mask_a = np.array([s == "a" for s in sources])
    assert groups["a"] == evaluate_scores(SCORES[mask_a], Y[mask_a], report.thresholds, [0.01, 0.1])
    for name in report.thresholds:
        assert sum(g.at_threshold[name].tp for g in groups.values()) == report.overall.at_threshold[name].tp
        assert sum(g.at_threshold[name].fp for g in groups.values()) == report.overall.at_threshold[name].fp
    assert "scores" not in report.to_dict() and report.to_dict()["classes"] == CLASSES


def test_evaluate_model_uses_the_named_positive_class_in_any_position():
    classes = ["malicious", "benign"]
    probs = _probs(SCORES)[:, ::-1]  # malicious first
    labels = [classes[1 - v] for v in Y]
    report = evaluate_model("m", probs, labels, classes, "malicious", probs, labels, fprs=[0.2])
    assert report.overall.roc_auc == pytest.approx(0.8)


def test_evaluate_model_names_the_row_with_an_unknown_label():
    labels = _labels(Y)
    labels[3] = "maliciuos"
    with pytest.raises(DataError, match="row 3 has label 'maliciuos'"):
        evaluate_model("m", _probs(SCORES), labels, CLASSES, "malicious", _probs(SCORES), _labels(Y), [0.1])


def _pair(base_scores, cand_scores, y, fpr):
    """Two models on the same rows, thresholds picked on those rows (validation = test) to count by hand."""
    return [evaluate_model(name, _probs(s), _labels(y), CLASSES, "malicious", _probs(s), _labels(y), [fpr])
            for name, s in (("baseline", base_scores), ("distilled", cand_scores))]


def test_compare_reports_fp_at_equal_tpr_and_tpr_at_the_fpr():
    y = np.array([1] * 5 + [0] * 10)
    base = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.85, 0.75, 0.65, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    cand = np.array([0.95, 0.9, 0.85, 0.8, 0.2, 0.7, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    c = compare_at_threshold(*_pair(base, cand, y, 0.1), fpr=0.1)
    # Baseline: one FP of ten allowed -> threshold 0.8 (above 0.75): TP 2, FP 1.
    assert (c.at_val_fpr["baseline"].tp, c.at_val_fpr["baseline"].fp) == (2, 1)
    # Distilled at its own threshold (0.7, above its second negative 0.3): TP 4, FP 1.
    assert (c.at_val_fpr["distilled"].tp, c.at_val_fpr["distilled"].fp) == (4, 1)
    assert c.tpr_change_points == pytest.approx(40.0)
    # Equal TPR (two positives): distilled flags from 0.9 and hits no negative.
    assert (c.at_equal_tpr["distilled"].tp, c.at_equal_tpr["distilled"].fp) == (2, 0)
    assert c.fp_change_at_equal_tpr == -1.0
    assert (c.at_baseline_threshold["distilled"].tp, c.at_baseline_threshold["distilled"].fp) == (4, 0)
    assert c.meets_target
    assert "-100%" in c.sentence and "+40.0 points" in c.sentence and c.sentence.endswith(": met.")


def test_compare_identical_models_does_not_meet_the_target():
    c = compare_at_threshold(*_pair(SCORES, SCORES, Y, 0.2), fpr=0.2)
    assert c.fp_change_at_equal_tpr == 0.0 and c.tpr_change_points == 0.0
    assert not c.meets_target and "not met" in c.sentence


def test_compare_refuses_models_scored_on_different_rows():
    a, _ = _pair(SCORES, SCORES, Y, 0.2)
    b, _ = _pair(SCORES[:-1], SCORES[:-1], Y[:-1], 0.2)
    with pytest.raises(DataError, match="different rows"):
        compare_at_threshold(a, b, fpr=0.2)


AUDIT_ROWS = [  # id, given, teacher P(malicious), true
    ("r0", "benign", 0.99, "malicious"),  # wrong label, teacher sure: rank 1
    ("r1", "malicious", 0.05, "benign"),  # wrong label: rank 2
    ("r2", "benign", 0.90, "benign"),  # teacher wrong: rank 3 (a false alarm)
    ("r3", "benign", 0.60, "malicious"),  # wrong label, teacher unsure: rank 4
    ("r4", "malicious", 0.40, "malicious"),  # teacher wrong, ties r3 at 0.6: rank 5
    ("r5", "benign", 0.20, "malicious"),  # wrong label the teacher agrees with: never listed
    ("r6", None, 0.99, "malicious"),  # unlabelled: not audited
    ("r7", "malicious", 0.97, "malicious"),  # agreement
]


def _audit(top_k, with_truth=True, min_confidence=0.5):
    ids, given, p, true = zip(*AUDIT_ROWS, strict=True)
    return label_audit(list(ids), [f"text of {i}" for i in ids], list(given), _probs(p), CLASSES, top_k,
                       true_labels=list(true) if with_truth else None, min_confidence=min_confidence)


def test_label_audit_ranks_confident_disagreements_and_scores_them():
    audit = _audit(top_k=3)
    assert [r.id for r in audit.rows] == ["r0", "r1", "r2"]
    assert [(r.given_label, r.teacher_label) for r in audit.rows] == [
        ("benign", "malicious"), ("malicious", "benign"), ("benign", "malicious")]
    assert audit.rows[1].teacher_prob == pytest.approx(0.95)
    assert (audit.n_rows, audit.n_labelled, audit.n_disagreements) == (8, 7, 5)
    assert audit.n_wrong_labels == 4  # r0, r1, r3, r5
    assert audit.precision == pytest.approx(2 / 3)
    assert audit.recall == pytest.approx(2 / 4)
    assert [r.id for r in _audit(top_k=10).rows] == ["r0", "r1", "r2", "r3", "r4"]  # ties keep input order


def test_label_audit_without_truth_and_with_a_higher_confidence_bar():
    audit = _audit(top_k=10, with_truth=False, min_confidence=0.95)
    assert [r.id for r in audit.rows] == ["r0", "r1"]
    assert audit.precision is None and audit.recall is None and audit.rows[0].true_label is None


@pytest.mark.parametrize("top_k", [1, 3, 5, 10])
def test_merged_shard_audits_equal_the_audit_of_all_rows(top_k):
    ids, given, p, true = zip(*AUDIT_ROWS, strict=True)
    whole = label_audit(list(ids), [f"text of {i}" for i in ids], list(given), _probs(p), CLASSES, top_k,
                        true_labels=list(true))
    for cuts in ([0, 8], [0, 3, 8], [0, 1, 4, 4, 8]):  # shards in order; one of them empty
        shards = [label_audit(list(ids[a:b]), [f"text of {i}" for i in ids[a:b]], list(given[a:b]),
                              _probs(p[a:b]).reshape(-1, len(CLASSES)), CLASSES, top_k, true_labels=list(true[a:b]))
                  for a, b in zip(cuts, cuts[1:], strict=False)]
        merged = merge_audits(shards, top_k)
        assert [(r.rank, r.id) for r in merged.rows] == [(r.rank, r.id) for r in whole.rows], cuts
        assert (merged.n_rows, merged.n_labelled, merged.n_disagreements, merged.n_wrong_labels) == (
            whole.n_rows, whole.n_labelled, whole.n_disagreements, whole.n_wrong_labels)
        assert (merged.precision, merged.recall) == (whole.precision, whole.recall)


def test_audit_of_scored_shards_in_tasks_equals_the_audit_of_all_rows(ray_local, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from smallsec_ray.audit import audit_shards

    ids, given, p, true = zip(*AUDIT_ROWS, strict=True)
    paths = []
    for n, (a, b) in enumerate([(0, 3), (3, 3), (3, 8)]):  # one shard without rows
        path = tmp_path / f"scored-{n}.parquet"
        pq.write_table(pa.table({"id": list(ids[a:b]), "text": [f"text of {i}" for i in ids[a:b]],
                                 "label": pa.array(given[a:b], pa.string()), "true_label": list(true[a:b]),
                                 "probs": pa.array(_probs(p[a:b]).reshape(-1, 2).tolist(),
                                                   pa.list_(pa.float32()))}), path)
        paths.append(str(path))
    audit = audit_shards(paths, CLASSES, top_k=4)
    assert [r.id for r in audit.rows] == ["r0", "r1", "r2", "r3"]
    assert (audit.n_rows, audit.n_labelled, audit.n_disagreements, audit.n_wrong_labels) == (8, 7, 5, 4)
    assert audit.precision == pytest.approx(3 / 4) and audit.recall == pytest.approx(3 / 4)
