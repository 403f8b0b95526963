"""The synthetic workload end to end, small: real HTML pages from the shared data (fathom benign pages,
zphisher phishing pages), the bundled SmolLM2 on vLLM writing three storefront families, a tiny production
HTML model trained in the run, and the gate both ways: within the tolerance the new model is exported; a
run whose training wrecks the model (tolerance 0) is refused and production stays the shipped one. The
quality of the result is the experiment's business (benchmarks/quality), not this test's."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from smallsec_ray.cli import main

# End to end: minutes; `make test-slow` (and .ci/run) runs it, `make test` does not.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # generous: a loaded 2-core machine is several times slower


def html_rows(shared_data: Path) -> pd.DataFrame:
    html = shared_data / "html"
    benign = pd.read_json(html / "fathom_login_pages.jsonl.gz", lines=True).sample(n=150, random_state=0)
    phishing = pd.read_json(html / "zphisher_pages.jsonl.gz", lines=True)
    rows = pd.concat([benign, phishing])[["html", "label", "source", "origin"]]
    rows = rows.sample(frac=1.0, random_state=1).reset_index(drop=True)
    rows["id"] = [f"p{i}" for i in range(len(rows))]
    # A benign page is a site of its own (Fathom's samples); a phishing kit's pages share its brand folder.
    rows["group"] = rows["origin"].where(rows["label"] == "benign", rows["origin"].str.split("/").str[:2].str.join("/"))
    return rows.drop(columns=["origin"])


def test_synthetic_generates_trains_and_gates_both_ways(tmp_path, ray_local, shared_data, capsys):
    rows = html_rows(shared_data)
    data = tmp_path / "data"
    data.mkdir()
    rows.to_parquet(data / "pages.parquet")
    out = tmp_path / "run"
    spec = {
        "name": "synthetic-e2e", "workload": "synthetic", "artifact": "html", "classes": ["benign", "phishing"],
        "positive_class": "phishing",
        "data": {"labelled": [str(data / "pages.parquet")], "split": {"validation": 0.25, "test": 0.3}},
        "teacher": {"kind": "generative", "model": "bundled:smollm2-135m-instruct", "backend": "vllm",
                    "finetune": {"enabled": False}},
        "labeling": {"cpus_per_replica": 1},
        "synthetic": {"families": [{"name": "tea", "description": "loose-leaf tea"},
                                   {"name": "jewels", "description": "handmade jewellery"},
                                   {"name": "bags", "description": "leather bags"}],
                      "train_families": ["tea", "jewels"], "layouts": ["storefront/grid", "checkout/steps"],
                      "holdout_layouts": ["social_login/centered"], "per_family": 4, "max_tokens": 32,
                      "min_text_chars": 100, "replay_rows": 60, "tolerance": 1.0},
        "student": {"model": "html_hier", "preset": "tiny"},
        "training": {"epochs": 2, "batch_size": 16, "learning_rate": 3e-3,
                     "scaling": {"strategy": "ddp", "workers": 2}},
        "evaluation": {"fprs": [0.1], "group_by": ["source"]},
        "resources": {"num_cpus": 4},
        "output": str(out),
    }
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(spec_path)]) == 0
    capsys.readouterr()
    assert main(["run", str(spec_path)]) == 0
    printed = capsys.readouterr().out
    assert "[8/8] report: done" in printed, printed[-3000:]

    def result(stage: str) -> dict:
        return json.loads((out / stage / "manifest.json").read_text())["result"]

    # Generation: every family in the training layouts and in the held-out layout.
    generated = out / "generate"
    assert sorted(p.name for p in (generated / "candidates").glob("*.parquet")) == [
        "bags.parquet", "bags.strict.parquet", "jewels.parquet", "jewels.strict.parquet", "tea.parquet",
        "tea.strict.parquet"]
    families = result("filter")["families"]
    for f in families:  # every candidate accepted, or rejected with its reason
        rejected = pq.read_table(generated / "rejected" / f"{f['family']}.parquet")
        assert f["accepted"] + rejected.num_rows == f["candidates"] == 4
        assert sum(f["rejected"].values()) == rejected.num_rows
    assert sum(f["accepted"] for f in families) > 0, families
    tea = pq.read_table(generated / "accepted" / "tea.parquet")
    assert set(tea.column("family").to_pylist()) <= {"tea"}
    assert set(tea.column("template").to_pylist()) <= {"storefront/grid", "checkout/steps"}

    evaluation = result("evaluate")
    holdouts = {(f["family"], f["holdout"]) for f in evaluation["families"]}
    kinds = ("trained on", "trained on, layouts held out", "held out, training layouts", "held out, layouts held out")
    assert {h for _, h in holdouts} <= set(kinds), holdouts
    assert all(h.startswith("trained on") == (family != "bags") for family, h in holdouts), holdouts
    assert evaluation["gate"]["passed"], evaluation["gate"]  # tolerance 1: any change passes (tiny models)
    shipped = result("export")
    assert shipped["exported"] is not None and (out / shipped["shipped_model"] / "model.onnx").is_file()
    report = (out / "report.md").read_text()
    assert "Gate passed" in report and "| bags |" in report and "Generation" in report
    # Both decisions are measured; the new model's threshold is the one its export ships with.
    assert set(evaluation["gates"]) == {"argmax", "threshold"} and evaluation["gate"] == evaluation["gates"]["argmax"]
    assert evaluation["thresholds"]["new"] == pytest.approx(shipped["exported"]["threshold"])
    assert "It decides at argmax" in report and "| accuracy | threshold |" in report

    # A training run that wrecks the model, on another training split: the gate refuses it, production stays
    # shipped. Generation does not depend on the split: only the stages after it run again. This run also
    # replays production's probabilities and weighs synthetic pages less (the trainer's soft-label path).
    spec["synthetic"]["train_families"] = ["tea"]
    spec["synthetic"].update({"replay_targets": "production", "row_weight": 0.5})
    spec["synthetic"]["training"] = {**spec["training"], "learning_rate": 5.0}
    spec["synthetic"]["tolerance"] = 0.0
    spec["synthetic"]["gate_at"] = "threshold"
    spec_path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(spec_path)]) == 0
    printed = capsys.readouterr().out
    kept = ("prepare", "production", "generate", "filter")
    assert all(f"{stage}: complete (ran" in printed for stage in kept), printed[-3000:]
    holdouts = {(f["family"], f["holdout"]) for f in result("evaluate")["families"]}  # families with pages
    assert all(h.startswith("trained on") == (family == "tea") for family, h in holdouts), holdouts
    gate = result("evaluate")["gate"]
    assert not gate["passed"] and gate["reasons"], gate
    assert gate == result("evaluate")["gates"]["threshold"]
    shipped = result("export")
    assert shipped["exported"] is None and shipped["shipped_model"] == result("production")["model_dir"]
    assert "Gate FAILED" in (out / "report.md").read_text()
    lineage = json.loads((out / result("train_student")["model_dir"] / "config.json").read_text())["lineage"]
    assert lineage["data"]["train_families"] == ["tea"], lineage

    # What the trainer was given: synthetic pages with their label as a one-hot distribution and weight 0.5;
    # replayed real pages with production's probabilities and weight 1.
    from smallsec_ray.spec import parse_spec
    from smallsec_ray.workloads.common import score_student
    from smallsec_ray.workloads.synthetic import training_rows

    production_dir = out / result("production")["model_dir"]
    synthetic = pq.read_table(generated / "accepted" / "tea.parquet").select(["id", "text", "label"])
    replay = pq.read_table(data / "pages.parquet").select(["id", "html", "label"]).slice(0, 5)
    replay = replay.rename_columns(["id", "text", "label"])
    rows, distillation = training_rows(parse_spec(spec, "job.yaml"), synthetic, replay, production_dir)
    assert distillation is not None and rows.num_rows == synthetic.num_rows + 5
    probs, weights = np.array(rows.column("probs").to_pylist()), np.array(rows.column("weight").to_pylist())
    n = synthetic.num_rows
    assert (probs[:n, 1] == 1.0).all() and (weights[:n] == 0.5).all() and (weights[n:] == 1.0).all()
    assert np.allclose(probs[n:], score_student(production_dir, replay.column("text").to_pylist()), atol=1e-6)


def test_the_gate_refuses_a_model_it_cannot_measure():
    from smallsec_ray.evaluation import class_metrics
    from smallsec_ray.workloads.synthetic import gate

    classes = ["benign", "phishing"]
    both = class_metrics(np.array([[0.9, 0.1], [0.2, 0.8]]), ["benign", "phishing"], classes)
    assert gate(both, both, 0.0).passed
    one_class = class_metrics(np.array([[0.9, 0.1], [0.8, 0.2]]), ["phishing", "phishing"], classes)
    refused = gate(one_class, one_class, 1.0)
    assert not refused.passed and "roc_auc_macro cannot be measured" in refused.reasons[0], refused


def test_class_metrics_at_a_threshold_take_the_decision_a_shipped_model_makes():
    from smallsec_ray.evaluation import class_metrics

    probs = np.array([[0.7, 0.3], [0.9, 0.1], [0.4, 0.6]])
    labels = ["phishing", "benign", "phishing"]
    at_argmax = class_metrics(probs, labels, ["benign", "phishing"])
    at_threshold = class_metrics(probs, labels, ["benign", "phishing"], at=(1, 0.25))
    assert at_argmax.accuracy == pytest.approx(2 / 3) and at_threshold.accuracy == 1.0
    assert at_threshold.roc_auc_macro == at_argmax.roc_auc_macro
    # Three classes: below the threshold, the most likely of the other classes.
    three = np.array([[0.5, 0.2, 0.3], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    labels = ["c", "c", "a"]
    assert class_metrics(three, labels, ["a", "b", "c"]).accuracy == pytest.approx(1 / 3)  # a, b, a
    assert class_metrics(three, labels, ["a", "b", "c"], at=(2, 0.3)).accuracy == 1.0  # c, c, then a (not b)
