"""The linear reference every report shows beside the students: character n-gram TF-IDF and logistic
regression (scikit-learn), trained on the same rows and labels as the baseline student.

It is the model any reviewer asks for first. It takes seconds, and on short artifacts (command lines,
URLs) it is hard to beat: a student that falls short of it underfits. It reads the head of each text
(`max_chars`) and fits on the driver, so it is capped at `max_rows` training rows (a seeded sample by
row id) and is a yardstick, not a deployable model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass
class ReferenceFit:
    rows: int  # training rows used
    c: float  # inverse regularisation strength picked on validation
    validation_auc: dict[str, float]  # C -> validation ROC AUC of the positive class
    max_chars: int


def fit_linear_reference(texts: list[str], labels: list[str], ids: list[str], val_texts: list[str],
                         val_labels: list[str], classes: list[str], positive_class: str, max_rows: int = 200_000,
                         max_chars: int = 1_000) -> tuple[ReferenceModel, ReferenceFit]:
    """Fits on the labelled rows (null labels are skipped), picking C by validation AUC."""
    keep = [i for i, label in enumerate(labels) if label is not None]
    if len(keep) > max_rows:
        keep = sorted(keep, key=lambda i: hashlib.blake2b(str(ids[i]).encode(), digest_size=8).digest())[:max_rows]
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 5), sublinear_tf=True, min_df=2, lowercase=False,
                                 max_features=1 << 20, dtype=np.float32)
    x = vectorizer.fit_transform([texts[i][:max_chars] for i in keep])
    y = np.array([classes.index(labels[i]) for i in keep])
    val_x = vectorizer.transform([t[:max_chars] for t in val_texts])
    val_y = np.array([label == positive_class for label in val_labels])
    fits, aucs = {}, {}
    for c in C_GRID:
        # liblinear fits two classes fast; beyond two, lbfgs fits one multinomial model.
        solver = "liblinear" if len(classes) == 2 else "lbfgs"
        model = ReferenceModel(vectorizer, LogisticRegression(C=c, solver=solver, max_iter=1000).fit(x, y),
                               classes, max_chars)
        fits[c] = model
        scores = model.predict_proba_x(val_x)[:, classes.index(positive_class)]
        aucs[c] = float(roc_auc_score(val_y, scores)) if 0 < val_y.sum() < len(val_y) else float("nan")
    best = max(C_GRID, key=lambda c: (np.nan_to_num(aucs[c], nan=-1.0), -c))
    return fits[best], ReferenceFit(rows=len(keep), c=best, validation_auc={f"{c:g}": a for c, a in aucs.items()},
                                    max_chars=max_chars)


class ReferenceModel:
    def __init__(self, vectorizer: TfidfVectorizer, model: LogisticRegression, classes: list[str],
                 max_chars: int) -> None:
        self.vectorizer, self.model, self.classes, self.max_chars = vectorizer, model, classes, max_chars

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities, float32 [len(texts), len(classes)], in the job's class order."""
        return self.predict_proba_x(self.vectorizer.transform([t[:self.max_chars] for t in texts]))

    def predict_proba_x(self, x) -> np.ndarray:
        probs = np.zeros((x.shape[0], len(self.classes)), np.float32)
        probs[:, self.model.classes_] = self.model.predict_proba(x)  # a class absent from training keeps 0
        return probs
