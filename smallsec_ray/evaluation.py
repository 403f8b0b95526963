"""Detection metrics: thresholds picked on validation at a target FPR, TPR/FPR/AUC/macro-F1 on the test
rows, per group (source, platform, family), model-vs-model comparisons, and the label audit.

A detection is `score >= threshold`, where the score is the probability of the positive class. Rows with
equal scores always fall on the same side of a threshold, so ties never split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score

from smallsec_ray.errors import DataError

MISSING_GROUP = "(missing)"


def threshold_name(fpr: float) -> str:
    """The name of the threshold picked on validation at `fpr`, e.g. 'val_fpr_0.01'."""
    return f"val_fpr_{fpr:g}"


def pick_threshold(scores_val: np.ndarray, y_val: np.ndarray, fpr: float) -> float:
    """The lowest threshold whose false-positive rate on the validation rows is at most `fpr`.

    The threshold is one of the validation scores (as in sklearn's roc_curve), so it maximises the
    validation TPR under the FPR limit. Ties: rows with equal scores are flagged together, so when several
    negatives share the score that would cross the limit, the threshold moves above all of them (the
    validation FPR then lies below `fpr`). When not even the top score can be flagged, the threshold is
    just above it (nothing on validation is flagged).
    """
    scores_val, y_val = _binary_inputs(scores_val, y_val)
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must lie in [0, 1], got {fpr}")
    if not (y_val == 0).any():
        raise DataError(f"cannot pick a threshold at FPR {fpr:g}: the validation rows hold no negatives; "
                        "give the validation split rows of the other classes (data.split.validation)")
    negatives = np.sort(scores_val[y_val == 0])[::-1]
    allowed = np.arange(len(negatives) + 1)
    k = int(allowed[allowed / len(negatives) <= fpr].max())  # false positives the limit allows
    if k == len(negatives):
        return float(scores_val.min())
    # Any threshold above the (k+1)-th highest negative score keeps FP <= k; take the lowest score above it.
    above = scores_val[scores_val > negatives[k]]
    return float(above.min()) if len(above) else float(np.nextafter(negatives[k], np.inf))


@dataclass
class OperatingPoint:
    """Counts and rates of `score >= threshold` on a set of rows."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    tpr: float | None  # None when the rows hold no positives
    fpr: float | None  # None when the rows hold no negatives


def operating_point(scores: np.ndarray, y_true: np.ndarray, threshold: float) -> OperatingPoint:
    """TP, FP, TN, FN, TPR and FPR of flagging `score >= threshold`."""
    scores, y_true = _binary_inputs(scores, y_true)
    flagged = scores >= threshold
    pos = y_true == 1
    tp, fp = int((flagged & pos).sum()), int((flagged & ~pos).sum())
    fn, tn = int((~flagged & pos).sum()), int((~flagged & ~pos).sum())
    return OperatingPoint(threshold=float(threshold), tp=tp, fp=fp, tn=tn, fn=fn,
                          tpr=tp / (tp + fn) if tp + fn else None,
                          fpr=fp / (fp + tn) if fp + tn else None)


@dataclass
class Metrics:
    """Binary detection metrics of one model on one set of rows (all rows, or one group value)."""

    n: int
    n_pos: int
    accuracy: float  # predicted positive when score > 0.5 (argmax of two classes; a tie goes negative)
    macro_f1: float  # F1 averaged over the classes present in the truth or the predictions (score > 0.5)
    roc_auc: float | None  # None when the rows hold one class only (see note)
    at_threshold: dict[str, OperatingPoint]  # per named threshold (val_fpr_0.01, given, ...)
    # "Oracle" TPR at each FPR: the threshold is picked on THESE rows, so the FPR limit holds on them. A deployed
    # model's threshold comes from validation and lands at some other FPR here. Keyed by FPR, e.g. "0.01".
    oracle_tpr_at_fpr: dict[str, float | None]
    note: str = ""


def evaluate_scores(scores: np.ndarray, y_true: np.ndarray, thresholds: dict[str, float],
                    fprs: list[float]) -> Metrics:
    """Metrics of positive-class `scores` against `y_true` (1 = positive class) at the named thresholds."""
    scores, y_true = _binary_inputs(scores, y_true)
    if len(scores) == 0:
        raise ValueError("evaluate_scores needs at least one row")
    n_pos = int(y_true.sum())
    both = 0 < n_pos < len(y_true)
    predicted = (scores > 0.5).astype(int)
    return Metrics(
        n=len(scores), n_pos=n_pos,
        accuracy=float((predicted == y_true).mean()),
        macro_f1=float(f1_score(y_true, predicted, average="macro", zero_division=0)),
        roc_auc=float(roc_auc_score(y_true, scores)) if both else None,
        at_threshold={name: operating_point(scores, y_true, t) for name, t in thresholds.items()},
        oracle_tpr_at_fpr={
            f"{f:g}": operating_point(scores, y_true, pick_threshold(scores, y_true, f)).tpr if both else None
            for f in fprs},
        note="" if both else f"one class only ({n_pos} positives of {len(scores)} rows): roc_auc, oracle "
                             "TPR and one of TPR/FPR are undefined",
    )


@dataclass
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int  # test rows of this class
    roc_auc: float | None  # this class against the rest; None when the rows hold it only or not at all


@dataclass
class ClassMetrics:
    """Metrics over all classes: predictions are the most likely class, AUC is one-vs-rest per class."""

    n: int
    accuracy: float
    macro_f1: float  # F1 averaged over the classes present in the truth or the predictions
    roc_auc_macro: float | None  # mean of the per-class one-vs-rest AUCs that are defined
    per_class: dict[str, ClassScores]


def class_metrics(probs: np.ndarray, labels: list[str], classes: list[str],
                  at: tuple[int, float] | None = None) -> ClassMetrics:
    """Accuracy, macro-F1 and one-vs-rest AUC of class probabilities [N, C] against class-name labels.

    The predicted class is the most likely one; with `at` = (class index, threshold) a row whose score of
    that class reaches the threshold is predicted as it (the decision a shipped model makes), any other row
    as the most likely of the other classes. AUC does not depend on it.
    """
    probs = _probs_matrix("class metrics", probs, len(labels), classes)
    y = np.array([_label_index("class metrics", i, label, classes) for i, label in enumerate(labels)])
    predicted = probs.argmax(axis=1)
    if at is not None:
        positive, threshold = at
        others = probs.copy()
        others[:, positive] = -np.inf
        predicted = np.where(probs[:, positive] >= threshold, positive, others.argmax(axis=1))
    present = sorted(set(y.tolist()) | set(predicted.tolist()))
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, labels=range(len(classes)),
                                                                     zero_division=0)
    aucs = [float(roc_auc_score(y == c, probs[:, c])) if 0 < (y == c).sum() < len(y) else None
            for c in range(len(classes))]
    defined = [a for a in aucs if a is not None]
    return ClassMetrics(
        n=len(y), accuracy=float((predicted == y).mean()) if len(y) else 0.0,
        macro_f1=float(np.mean(f1[present])) if present else 0.0,
        roc_auc_macro=float(np.mean(defined)) if defined else None,
        per_class={name: ClassScores(float(precision[c]), float(recall[c]), float(f1[c]), int(support[c]), aucs[c])
                   for c, name in enumerate(classes)})


@dataclass
class ModelMetrics:
    """One model evaluated on the test rows: overall, per group value, with thresholds from validation (what
    a report and a stage result keep of a ModelReport)."""

    name: str
    classes: list[str]
    positive_class: str
    fprs: list[float]
    n_validation: int
    thresholds: dict[str, float]
    # Validation negatives at or above each threshold: the rows its FPR rests on (1% FPR on 150 benign
    # rows rests on 1 row: a threshold that the next sample moves a lot).
    threshold_support: dict[str, int]
    overall: Metrics
    groups: dict[str, dict[str, Metrics]]  # group column -> value -> metrics
    by_class: ClassMetrics  # every class, from the full probability vectors (multi-class figures)


@dataclass
class ModelReport(ModelMetrics):
    """A model's metrics with the per-row scores they came from (plots, comparisons)."""

    scores: np.ndarray = field(repr=False)  # positive-class score of each test row
    y_true: np.ndarray = field(repr=False)  # 1 where the test row's label is the positive class

    def metrics(self) -> ModelMetrics:
        """Everything but the per-row arrays."""
        return ModelMetrics(**{f.name: getattr(self, f.name) for f in fields(ModelMetrics)})

    def to_dict(self) -> dict[str, Any]:
        """Everything but the per-row arrays, ready for json.dumps."""
        return asdict(self.metrics())


def evaluate_model(name: str, probs: np.ndarray, labels: list[str], classes: list[str], positive_class: str,
                   val_probs: np.ndarray, val_labels: list[str], fprs: list[float],
                   groups: dict[str, list[str | None]] | None = None,
                   extra_thresholds: dict[str, float] | None = None) -> ModelReport:
    """Evaluates one model's class probabilities [N, C] on the test rows against their labels.

    Thresholds are picked on the validation rows at each FPR; `extra_thresholds` adds named ones (e.g.
    {"given": 0.5}, or a production model's threshold). `groups` maps a column name (source, platform)
    to each test row's value; every value gets its own Metrics at the same thresholds.
    """
    pos = _class_index(classes, positive_class)
    scores, y_true = _binary_view(f"{name} test", probs, labels, classes, pos)
    val_scores, val_y = _binary_view(f"{name} validation", val_probs, val_labels, classes, pos)
    thresholds = {threshold_name(f): pick_threshold(val_scores, val_y, f) for f in fprs}
    thresholds.update(extra_thresholds or {})
    support = {name: int(((val_scores >= t) & (val_y == 0)).sum()) for name, t in thresholds.items()}
    per_group: dict[str, dict[str, Metrics]] = {}
    for column, values in (groups or {}).items():
        if len(values) != len(labels):
            raise ValueError(f"group column {column!r} has {len(values)} values for {len(labels)} test rows")
        keys = np.array([MISSING_GROUP if v is None else str(v) for v in values], dtype=object)
        per_group[column] = {value: evaluate_scores(scores[keys == value], y_true[keys == value], thresholds,
                                                    fprs)
                             for value in sorted(set(keys))}
    return ModelReport(name=name, classes=list(classes), positive_class=positive_class, fprs=list(fprs),
                       n_validation=len(val_labels), thresholds=thresholds, threshold_support=support,
                       overall=evaluate_scores(scores, y_true, thresholds, fprs), groups=per_group,
                       by_class=class_metrics(probs, labels, classes), scores=scores, y_true=y_true)


@dataclass
class Comparison:
    """A candidate model (e.g. the distilled student) against a baseline on the same test rows."""

    baseline: str
    candidate: str
    fpr: float
    n: int
    n_pos: int
    # Both models at the baseline's threshold picked on validation at `fpr`.
    at_baseline_threshold: dict[str, OperatingPoint]
    # Baseline at its validation threshold; candidate at the threshold on these rows that reaches at
    # least the baseline's TP count (score ties can give it a few more).
    at_equal_tpr: dict[str, OperatingPoint]
    # Each model at its own threshold picked on validation at `fpr`.
    at_val_fpr: dict[str, OperatingPoint]
    fp_change_at_equal_tpr: float | None  # (candidate FP - baseline FP) / baseline FP; None if that is 0
    tpr_change_points: float | None  # (candidate TPR - baseline TPR) * 100 at their val thresholds
    target: str
    meets_target: bool
    sentence: str
    verdict: str  # one sentence for the top of the report: did the candidate beat the baseline


def compare_at_threshold(baseline: ModelReport, candidate: ModelReport, fpr: float = 0.01,
                         fp_cut: float = 0.30, tpr_gain_points: float = 5.0) -> Comparison:
    """TP and FP of `candidate` against `baseline`: at the baseline's threshold, at equal TPR, and at each
    model's own threshold for `fpr`. The target is met when the candidate cuts false positives by at least
    `fp_cut` at equal TPR, or raises TPR at `fpr` by at least `tpr_gain_points`."""
    if len(baseline.y_true) != len(candidate.y_true) or not np.array_equal(baseline.y_true, candidate.y_true):
        raise DataError(f"cannot compare {candidate.name!r} with {baseline.name!r}: they were evaluated on "
                        "different rows; evaluate both on the same test rows")
    name = threshold_name(fpr)
    for model in (baseline, candidate):
        if name not in model.thresholds:
            raise ValueError(f"model {model.name!r} has no threshold {name}; evaluate it with fprs "
                             f"including {fpr:g} (has {sorted(model.thresholds)})")
    y = baseline.y_true
    base_point = operating_point(baseline.scores, y, baseline.thresholds[name])
    cand_own = operating_point(candidate.scores, y, candidate.thresholds[name])
    cand_equal = operating_point(candidate.scores, y, _threshold_for_tp(candidate.scores, y, base_point.tp))
    fp_change = (cand_equal.fp - base_point.fp) / base_point.fp if base_point.fp else None
    tpr_points = ((cand_own.tpr - base_point.tpr) * 100
                  if cand_own.tpr is not None and base_point.tpr is not None else None)
    meets = (fp_change is not None and fp_change <= -fp_cut) or (
        tpr_points is not None and tpr_points >= tpr_gain_points)
    target = f"FP cut >= {fp_cut:.0%} at equal TPR, or TPR at {fpr:g} FPR up >= {tpr_gain_points:g} points"
    return Comparison(
        baseline=baseline.name, candidate=candidate.name, fpr=fpr, n=len(y), n_pos=int(y.sum()),
        at_baseline_threshold={baseline.name: base_point,
                               candidate.name: operating_point(candidate.scores, y, base_point.threshold)},
        at_equal_tpr={baseline.name: base_point, candidate.name: cand_equal},
        at_val_fpr={baseline.name: base_point, candidate.name: cand_own},
        fp_change_at_equal_tpr=fp_change, tpr_change_points=tpr_points, target=target, meets_target=meets,
        sentence=_comparison_sentence(baseline.name, candidate.name, fpr, base_point, cand_equal, cand_own,
                                      fp_change, tpr_points, target, meets),
        verdict=_verdict(baseline.name, candidate.name, fpr, base_point, cand_own, cand_equal, meets),
    )


def _threshold_for_tp(scores: np.ndarray, y_true: np.ndarray, tp: int) -> float:
    """The highest threshold that flags at least `tp` positives (just above the top score when tp = 0)."""
    if tp == 0:
        return float(np.nextafter(scores.max(), np.inf))
    return float(np.sort(scores[y_true == 1])[::-1][tp - 1])


def _comparison_sentence(base: str, cand: str, fpr: float, base_point: OperatingPoint,
                         cand_equal: OperatingPoint, cand_own: OperatingPoint, fp_change: float | None,
                         tpr_points: float | None, target: str, meets: bool) -> str:
    change = "n/a, baseline has no FP" if fp_change is None else f"{fp_change:+.0%}"
    points = "n/a" if tpr_points is None else f"{tpr_points:+.1f} points"
    return (f"At equal TPR ({_pct(base_point.tpr)}), {cand} has {cand_equal.fp} false positives against "
            f"{base_point.fp} for {base} ({change}). At the thresholds picked for {fpr:g} FPR on validation, "
            f"{cand} detects {_pct(cand_own.tpr)} against {_pct(base_point.tpr)} for {base} ({points}), "
            f"with {cand_own.fp} and {base_point.fp} false positives respectively. "
            f"Target ({target}): {'met' if meets else 'not met'}.")


def _verdict(base: str, cand: str, fpr: float, base_point: OperatingPoint, cand_own: OperatingPoint,
             cand_equal: OperatingPoint, meets: bool) -> str:
    outcome = "beat" if meets else "did not beat"
    return (f"The {cand} {outcome} the {base}: at the thresholds picked for {fpr:g} FPR on validation it detects "
            f"{_pct(cand_own.tpr)} of the test positives against {_pct(base_point.tpr)}, and at equal TPR it has "
            f"{cand_equal.fp} false positives against {base_point.fp}.")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


@dataclass
class AuditRow:
    rank: int
    id: str
    text: str
    given_label: str
    teacher_label: str  # the teacher's most likely class, which differs from the given label
    teacher_prob: float  # the teacher's probability of teacher_label
    true_label: str | None = None  # known only in experiments with injected noise


@dataclass
class Audit:
    """Rows whose given label the teacher confidently contradicts, most confident first."""

    classes: list[str]
    top_k: int
    min_confidence: float
    n_rows: int
    n_labelled: int  # rows with a given label (the only ones audited)
    n_disagreements: int  # labelled rows where the teacher's top class differs, at >= min_confidence
    rows: list[AuditRow]
    n_wrong_labels: int | None = None  # labelled rows whose given label differs from the true one
    precision: float | None = None  # share of listed rows whose given label is really wrong
    recall: float | None = None  # share of all wrong given labels that are listed


@dataclass
class AuditSummary:
    """An audit's counts and, where the true labels are known, how well its list finds wrong labels."""

    top_k: int
    listed: int
    n_labelled: int
    n_disagreements: int
    n_wrong_labels: int | None = None
    precision: float | None = None
    recall: float | None = None

    @classmethod
    def of(cls, audit: Audit) -> AuditSummary:
        return cls(top_k=audit.top_k, listed=len(audit.rows), n_labelled=audit.n_labelled,
                   n_disagreements=audit.n_disagreements, n_wrong_labels=audit.n_wrong_labels,
                   precision=audit.precision, recall=audit.recall)


def label_audit(ids: list[str], texts: list[str], given_labels: list[str | None], teacher_probs: np.ndarray,
                classes: list[str], top_k: int, true_labels: list[str] | None = None,
                min_confidence: float = 0.5) -> Audit:
    """Lists up to `top_k` labelled rows where the teacher's most likely class is not the given label and
    has probability >= `min_confidence`, ranked by that probability (ties keep input order). With
    `true_labels`, also the precision and recall of the list at finding wrong given labels."""
    probs = _probs_matrix("label audit", teacher_probs, len(given_labels), classes)
    if not len(ids) == len(texts) == len(given_labels):
        raise ValueError(f"label audit: the lengths of ids ({len(ids)}), texts ({len(texts)}) and "
                         f"given_labels ({len(given_labels)}) differ")
    labelled = np.array([g is not None for g in given_labels], dtype=bool)  # typed: a shard may be empty
    given_idx = np.array([_label_index("label audit", i, g, classes) if g is not None else -1
                          for i, g in enumerate(given_labels)], dtype=np.int64)
    teacher_idx = probs.argmax(axis=1)
    teacher_prob = probs.max(axis=1)
    disagree = labelled & (teacher_idx != given_idx) & (teacher_prob >= min_confidence)
    candidates = np.flatnonzero(disagree)
    listed = candidates[np.argsort(-teacher_prob[candidates], kind="stable")][:top_k]
    truth = _true_labels(true_labels, len(given_labels), classes)
    rows = [AuditRow(rank=r + 1, id=str(ids[i]), text=texts[i], given_label=given_labels[i],
                     teacher_label=classes[teacher_idx[i]], teacher_prob=float(teacher_prob[i]),
                     true_label=truth[i] if truth is not None else None)
            for r, i in enumerate(listed)]
    audit = Audit(classes=list(classes), top_k=top_k, min_confidence=min_confidence, n_rows=len(given_labels),
                  n_labelled=int(labelled.sum()), n_disagreements=len(candidates), rows=rows)
    if truth is not None:  # an empty part with truth still counts its (zero) wrong labels
        wrong = labelled & np.array([g != t for g, t in zip(given_labels, truth, strict=True)], dtype=bool)
        found = int(wrong[listed].sum())
        audit.n_wrong_labels = int(wrong.sum())
        audit.precision = found / len(listed) if len(listed) else None
        audit.recall = found / audit.n_wrong_labels if audit.n_wrong_labels else None
    return audit


def merge_audits(audits: list[Audit], top_k: int) -> Audit:
    """One audit from the audits of consecutive parts of the rows (shards in order, each by `label_audit`
    with the same classes and min_confidence, and at least `top_k`): the `top_k` most confident of their
    listed rows (ties in part order, then in their order within a part) and their counts summed. Exact: a
    row in the top k of all rows is in the top k of its part, so the driver merges k-sized lists only."""
    if not audits:
        raise ValueError("merge_audits needs at least one audit (audit an empty part with label_audit)")
    ranked = sorted(((part, row) for part, audit in enumerate(audits) for row in audit.rows),
                    key=lambda item: (-item[1].teacher_prob, item[0], item[1].rank))[:top_k]
    rows = [replace(row, rank=rank) for rank, (_, row) in enumerate(ranked, 1)]
    first = audits[0]
    merged = Audit(classes=first.classes, top_k=top_k, min_confidence=first.min_confidence,
                   n_rows=sum(a.n_rows for a in audits), n_labelled=sum(a.n_labelled for a in audits),
                   n_disagreements=sum(a.n_disagreements for a in audits), rows=rows)
    wrong = [a.n_wrong_labels for a in audits if a.n_wrong_labels is not None]
    if len(wrong) == len(audits):
        found = sum(row.given_label != row.true_label for row in rows)  # listed rows are all labelled
        merged.n_wrong_labels = sum(wrong)
        merged.precision = found / len(rows) if rows else None
        merged.recall = found / merged.n_wrong_labels if merged.n_wrong_labels else None
    return merged


def _true_labels(true_labels: list[str] | None, n: int, classes: list[str]) -> list[str] | None:
    if true_labels is None:
        return None
    if len(true_labels) != n:
        raise ValueError(f"label audit: {len(true_labels)} true labels for {n} rows")
    for i, label in enumerate(true_labels):
        _label_index("label audit (true labels)", i, label, classes)
    return list(true_labels)


def _binary_inputs(scores: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    y_true = np.asarray(y_true)
    if scores.ndim != 1 or scores.shape != y_true.shape:
        raise ValueError(f"scores {scores.shape} and y_true {y_true.shape} must be 1-D of the same length")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must hold 0 (other classes) and 1 (positive class) only")
    return scores, y_true.astype(np.int64)


def _binary_view(what: str, probs: np.ndarray, labels: list[str], classes: list[str],
                 pos: int) -> tuple[np.ndarray, np.ndarray]:
    probs = _probs_matrix(what, probs, len(labels), classes)
    y = np.array([_label_index(what, i, label, classes) == pos for i, label in enumerate(labels)],
                 dtype=np.int64)
    return probs[:, pos].astype(np.float64), y


def _probs_matrix(what: str, probs: np.ndarray, n: int, classes: list[str]) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (n, len(classes)):
        raise ValueError(f"{what}: probabilities have shape {probs.shape}, expected ({n}, {len(classes)}) "
                         f"for {n} rows and classes {classes}")
    return probs


def _class_index(classes: list[str], name: str) -> int:
    if name not in classes:
        raise ValueError(f"positive class {name!r} is not one of classes {classes}")
    return classes.index(name)


def _label_index(what: str, row: int, label: str | None, classes: list[str]) -> int:
    if label not in classes:
        raise DataError(f"{what}: row {row} has label {label!r}, which is not one of classes {classes}; "
                        "evaluate only labelled rows, with class names from the job spec")
    return classes.index(label)
