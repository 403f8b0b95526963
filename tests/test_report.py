"""The run report: report.json holds every metric with class names, report.md shows them with real plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from smallsec_ray.evaluation import compare_at_threshold, evaluate_model, label_audit
from smallsec_ray.report import write_report

CLASSES = ["benign", "malicious"]
FPRS = [0.001, 0.01]


def _rows(rng: np.random.Generator, n: int):
    y = (rng.random(n) < 0.2).astype(int)
    sources = np.where(rng.random(n) < 0.5, "tldr", "atomic").astype(object)
    sources[(y == 0) & (rng.random(n) < 0.1)] = "docs-only-benign"  # a group with one class only
    return y, list(sources)


def _model(name: str, separation: float, y_test, y_val, sources, rng) -> object:
    def probs(y):
        p = 1 / (1 + np.exp(-rng.normal(separation * (2 * y - 1), 1.5)))
        return np.stack([1 - p, p], axis=1)
    labels = [CLASSES[v] for v in y_test]
    return evaluate_model(name, probs(y_test), labels, CLASSES, "malicious", probs(y_val),
                          [CLASSES[v] for v in y_val], FPRS, groups={"source": sources})


@pytest.fixture(scope="module")
def report_files(tmp_path_factory):
    rng = np.random.default_rng(7)
    y_test, sources = _rows(rng, 3000)
    y_val, _ = _rows(rng, 2000)
    models = [_model(name, sep, y_test, y_val, sources, rng)
              for name, sep in (("teacher", 4.0), ("baseline student", 2.0), ("distilled student", 3.0))]
    comparison = compare_at_threshold(models[1], models[2], fpr=0.01)
    given = ["malicious", "benign", "benign", None]
    audit = label_audit(["cmd-1", "cmd|2", "cmd-3", "cmd-4"],
                        ["powershell -enc AAA", "ls | grep `x`\nrm -rf /tmp/x", "dir", "whoami"], given,
                        np.array([[0.97, 0.03], [0.01, 0.99], [0.9, 0.1], [0.5, 0.5]]), CLASSES, top_k=10,
                        true_labels=["benign", "malicious", "benign", "benign"])
    stages = [{"stage": "prepare", "rows_in": 5100, "rows_out": 5000, "rows_quarantined": 100, "seconds": 3.2},
              {"stage": "label", "rows_in": 5000, "rows_out": 4990, "rows_quarantined": 0},
              {"stage": "train-student", "epochs": 3}]
    out = tmp_path_factory.mktemp("run")
    json_path, md_path = write_report(out, {"name": "distill-cmdline", "workload": "distill",
                                            "classes": CLASSES}, stages, models, [comparison], audit,
                                      {"onnx_rows_per_second": 51234.5, "parity_max_abs_diff": np.float32(1e-6)})
    return json_path, md_path, models, comparison


def test_report_json_holds_every_metric_with_class_names(report_files):
    json_path, _, models, comparison = report_files
    report = json.loads(json_path.read_text())
    assert [m["name"] for m in report["models"]] == ["teacher", "baseline student", "distilled student"]
    teacher = report["models"][0]
    assert teacher["classes"] == CLASSES and teacher["positive_class"] == "malicious"
    assert teacher["overall"]["roc_auc"] == pytest.approx(models[0].overall.roc_auc)
    assert teacher["overall"]["at_threshold"]["val_fpr_0.01"]["fp"] == models[0].overall.at_threshold[
        "val_fpr_0.01"].fp
    assert teacher["groups"]["source"]["docs-only-benign"]["roc_auc"] is None
    assert report["comparisons"][0]["sentence"] == comparison.sentence
    top = report["audit"]["rows"][0]
    assert (top["id"], top["given_label"], top["teacher_label"]) == ("cmd|2", "benign", "malicious")
    assert report["audit"]["precision"] == 1.0 and report["audit"]["recall"] == 1.0
    assert report["extra"]["parity_max_abs_diff"] == pytest.approx(1e-6)


def test_report_markdown_links_real_plots(report_files):
    json_path, md_path, _, _ = report_files
    md = md_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"plots/roc.png", "plots/scores.png"} <= set(links)
    assert any(link.startswith("plots/tp_fp_") for link in links)
    assert set(links) == set(json.loads(json_path.read_text())["plots"].values())
    for link in links:
        image = imread(md_path.parent / link)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300
        assert image[..., :3].std() > 0.05  # something is drawn, not a blank canvas


def test_report_markdown_tells_the_run(report_files):
    _, md_path, _, comparison = report_files
    md = md_path.read_text()
    assert "| prepare | 5,100 | 5,000 | 100 | yes |" in md
    assert "| label | 5,000 | 4,990 | 0 | **NO** |" in md  # ten rows lost: shown, not hidden
    assert "### distilled student: operating points on the test rows" in md
    assert "### Per source" in md and "| docs-only-benign | teacher |" in md
    assert comparison.sentence in md
    # The first thing a reader sees: whether the student beat the baseline, in one sentence.
    assert md.splitlines()[2] == f"**{comparison.verdict}**"
    assert comparison.verdict.startswith(("The distilled student beat", "The distilled student did not beat"))
    # Each operating point says how many validation negatives its threshold rests on.
    assert "rests on (validation negatives above)" in md
    assert "## Label audit" in md
    # One line per table row, pipes escaped, so a command line cannot break the table.
    assert r"`` ls \| grep `x` rm -rf /tmp/x ``" in md
    assert "cmd\\|2" in md
    assert "onnx_rows_per_second" in md


def test_report_without_comparisons_or_audit(tmp_path: Path):
    rng = np.random.default_rng(3)
    y, sources = _rows(rng, 500)
    model = _model("student", 2.0, y, y, sources, rng)
    json_path, md_path = write_report(tmp_path, {"name": "small"}, [], [model], [], None, {})
    assert json.loads(json_path.read_text())["audit"] is None
    assert "## Label audit" not in md_path.read_text()
    assert (tmp_path / "plots" / "roc.png").is_file()
