"""The linear reference: fitted on real command lines, C picked on validation, probabilities in class order."""

import numpy as np
from sklearn.metrics import roc_auc_score

from smallsec_ray.reference import C_GRID, fit_linear_reference


def test_linear_reference_learns_real_command_lines_and_keeps_the_class_order(cmdlines):
    texts = cmdlines[0:80] + cmdlines[100:180]  # 80 tldr (benign), 80 Atomic Red Team (malicious)
    labels = ["benign"] * 80 + ["malicious"] * 80
    val_texts = cmdlines[80:100] + cmdlines[180:200]
    val_labels = ["benign"] * 20 + ["malicious"] * 20
    classes = ["malicious", "benign"]  # the positive class first: columns must follow this order
    model, fit = fit_linear_reference(texts + ["unlabelled row"], labels + [None], [str(i) for i in range(161)],
                                      val_texts, val_labels, classes, "malicious")
    assert fit.rows == 160 and fit.c in C_GRID and set(fit.validation_auc) == {f"{c:g}" for c in C_GRID}
    probs = model.predict_proba(val_texts)
    assert probs.shape == (40, 2) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert roc_auc_score([label == "malicious" for label in val_labels], probs[:, 0]) > 0.9
    assert fit.validation_auc[f"{fit.c:g}"] == max(fit.validation_auc.values())


def test_the_training_rows_are_capped_by_a_sample_of_ids(cmdlines):
    labels = ["benign"] * 100 + ["malicious"] * 100
    _, fit = fit_linear_reference(cmdlines, labels, [f"id{i}" for i in range(200)], cmdlines[:10] + cmdlines[-10:],
                                  ["benign"] * 10 + ["malicious"] * 10, ["benign", "malicious"], "malicious",
                                  max_rows=50)
    assert fit.rows == 50
