"""ONNX export: parity with torch on real rows, the folder's config, and the scorer round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from smallsec_ray.errors import DataError, StageError
from smallsec_ray.export import OnnxScorer, export_onnx
from smallsec_ray.students import build_student, student_config
from smallsec_ray.students.folder import Lineage, ModelConfig, load_model

CLASSES = ["benign", "malicious"]


def config_of(student, encoder, classes=CLASSES, thresholds=None) -> ModelConfig:
    return ModelConfig(student_config(student), encoder.config(), list(classes), Lineage(job="export-test"),
                       thresholds=thresholds if thresholds is not None else {"malicious": 0.5})


def torch_probs(student: torch.nn.Module, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(student.eval()(torch.from_numpy(ids)), dim=-1).numpy()


@pytest.mark.parametrize(("model", "preset"), [("char_cnn", "small"), ("html_hier", "small")])
def test_export_matches_torch_on_real_rows(model, preset, cmdlines, pages, tmp_path):
    texts = cmdlines if model == "char_cnn" else pages
    student, encoder = build_student(model, preset, len(CLASSES))
    result = export_onnx(student, config_of(student, encoder, thresholds={"malicious": 0.7}), tmp_path, texts)
    assert result.parity_rows == len(texts) and result.max_abs_diff <= 1e-4
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["classes"] == CLASSES and config["thresholds"] == {"malicious": 0.7}
    assert config["encoder"] == encoder.config() and config["architecture"]["model"] == model
    assert config["onnx"]["file"] == "model.onnx" and config["lineage"]["job"] == "export-test"
    assert student.training, "export must not switch the caller's model to eval mode"
    # The shipped folder is also a trainable one: torch loads the same weights back.
    reloaded, _, _ = load_model(tmp_path)
    np.testing.assert_allclose(torch_probs(reloaded, encoder.encode(texts[:8])),
                               torch_probs(student, encoder.encode(texts[:8])), atol=1e-6)

    scorer = OnnxScorer(tmp_path, intra_op_num_threads=1, batch_size=64)
    probs = scorer.predict_proba(texts)  # several batches of different sizes: the batch axis is dynamic
    np.testing.assert_allclose(probs, torch_probs(student, encoder.encode(texts)), atol=1e-4)


def test_scores_carry_class_names_and_threshold_decisions(cmdlines, tmp_path):
    student, encoder = build_student("char_cnn", "tiny", len(CLASSES))
    export_onnx(student, config_of(student, encoder), tmp_path, cmdlines[:20])
    scorer = OnnxScorer(tmp_path, intra_op_num_threads=1)
    scores = scorer.score(cmdlines[:1] + ["", "x" * 100_000])
    probs = scorer.predict_proba(cmdlines[:1] + ["", "x" * 100_000])
    for score, row in zip(scores, probs, strict=True):
        assert set(score.probabilities) == set(CLASSES)
        assert score.probabilities["malicious"] == pytest.approx(float(row[1]))
        assert score.label == CLASSES[int(row.argmax())]
        assert score.is_detection == (row[1] >= 0.5)
    assert scorer.predict_proba([]).shape == (0, 2)


def test_export_rejects_thresholds_for_unknown_classes(cmdlines, tmp_path):
    student, encoder = build_student("char_cnn", "tiny", len(CLASSES))
    with pytest.raises(StageError, match="thresholds"):
        export_onnx(student, config_of(student, encoder, thresholds={"evil": 0.5}), tmp_path, cmdlines[:5])
    with pytest.raises(StageError, match="3 class names"):
        export_onnx(student, config_of(student, encoder, [*CLASSES, "other"]), tmp_path, cmdlines[:5])


def test_scorer_names_a_folder_that_is_not_an_export(tmp_path):
    with pytest.raises(DataError, match="config.json"):
        OnnxScorer(tmp_path)
    from smallsec_ray.students.folder import save_model

    student, encoder = build_student("char_cnn", "tiny", len(CLASSES))
    save_model(tmp_path, student.state_dict(), config_of(student, encoder))
    with pytest.raises(DataError, match="without its ONNX export"):
        OnnxScorer(tmp_path)
