"""ONNX export: parity with torch on real rows, the folder's config, and the scorer round trip."""

from __future__ import annotations

import gzip
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


@pytest.fixture
def exported(cmdlines, tmp_path):
    student, encoder = build_student("char_cnn", "tiny", len(CLASSES))
    folder = tmp_path / "model"
    export_onnx(student, config_of(student, encoder), folder, cmdlines[:20])
    return folder


def scored_lines(capsys) -> tuple[list[dict], str]:
    out = capsys.readouterr()
    return [json.loads(line) for line in out.out.splitlines()], out.err


def test_score_lines_carry_their_line_number_and_bad_lines_their_reason(exported, tmp_path, capsys):

    from smallsec_ray.cli import main
    raw = b"ls -la /tmp\n\ncaf\xe9 --bad-byte\npowershell -enc SQBFAFgA\n"
    for name, data in [("cmds.txt", raw), ("cmds.txt.gz", gzip.compress(raw))]:
        (tmp_path / name).write_bytes(data)
        assert main(["score", str(exported), str(tmp_path / name)]) == 0
        rows, err = scored_lines(capsys)
        assert [r["line"] for r in rows] == [1, 3, 4]  # line 2 is blank
        assert rows[0]["text"] == "ls -la /tmp" and rows[2]["text"] == "powershell -enc SQBFAFgA"
        assert rows[1] == {"line": 3, "error": "invalid UTF-8 at byte 3"}
        assert "scored 2 rows" in err and "1 not scored" in err


def test_score_shard_rows_carry_their_id_and_quarantined_rows_their_reason(exported, tmp_path, capsys):
    from smallsec_ray.cli import main

    shard = tmp_path / "rows.jsonl"
    shard.write_text('{"id": "a", "cmd": "ls"}\n{"id": "b", "cmd": ""}\n{"id": "c", "cmd": "whoami"}\n')
    assert main(["score", str(exported), str(shard), "--column", "cmd"]) == 0
    rows, _ = scored_lines(capsys)
    assert [r["id"] for r in rows] == ["a", "c", "b"] and "label" in rows[1] and "empty" in rows[2]["error"]
    assert main(["score", str(exported), str(shard)]) == 2  # no "text" column
    assert "pass --column NAME" in capsys.readouterr().err


def trained_tiny(cmdlines) -> tuple[torch.nn.Module, object]:
    """A tiny char CNN trained (plain torch, a few seconds) to tell the 100 tldr lines from the 100 Atomic
    Red Team ones: confident enough that int8 must keep its decisions."""
    torch.manual_seed(0)
    student, encoder = build_student("char_cnn", "tiny", len(CLASSES))
    ids = torch.from_numpy(encoder.encode(cmdlines))
    labels = torch.tensor([0] * 100 + [1] * 100)
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(student(ids), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return student.eval(), encoder


def test_int8_graph_is_kept_when_it_agrees_and_refused_when_it_does_not(cmdlines, tmp_path, capsys, monkeypatch):
    from smallsec_ray import export
    from smallsec_ray.cli import main
    from smallsec_ray.export import INT8_FILE, quantize_int8

    student, encoder = trained_tiny(cmdlines)
    folder = tmp_path / "model"
    export_onnx(student, config_of(student, encoder), folder, cmdlines[:20])
    positive = np.array([0] * 100 + [1] * 100)
    order = np.random.default_rng(0).permutation(200)  # calibration (even) and check (odd) rows of both kinds
    texts, positive = [cmdlines[i] for i in order], positive[order]
    check = quantize_int8(folder, texts, positive, 1, 0.5)
    assert check["accepted"] and check["calibration_rows"] == check["check_rows"] == 100
    assert check["recipe"] in export.INT8_RECIPES
    assert [r["recipe"] for r in check["recipes_refused"]] == list(export.INT8_RECIPES)[
        :list(export.INT8_RECIPES).index(check["recipe"])]  # the recipes before the one kept all failed
    assert check["decisions_unchanged"] >= 0.995 and check["auc_fp32"] - check["auc_int8"] <= 0.002
    assert (folder / INT8_FILE).is_file()
    int8, fp32 = OnnxScorer(folder), OnnxScorer(folder, fp32=True)
    assert (int8.precision, fp32.precision) == ("int8", "fp32")
    np.testing.assert_allclose(int8.predict_proba(cmdlines), fp32.predict_proba(cmdlines), atol=0.1)
    (tmp_path / "a.txt").write_text("ls -la\n")
    assert main(["score", str(folder), str(tmp_path / "a.txt")]) == 0
    assert "(int8 graph)" in capsys.readouterr().err
    assert main(["score", str(folder), str(tmp_path / "a.txt"), "--fp32"]) == 0
    assert "(fp32 graph)" in capsys.readouterr().err

    monkeypatch.setattr(export, "INT8_MIN_AGREEMENT", 1.01)  # no graph can pass: refused, the file deleted
    check = quantize_int8(folder, texts, positive, 1, 0.5)
    assert not check["accepted"] and not (folder / INT8_FILE).exists() and check["recipe"] is None
    assert [r["recipe"] for r in check["recipes_refused"]] == list(export.INT8_RECIPES)  # every recipe was tried
    assert OnnxScorer(folder).precision == "fp32"
