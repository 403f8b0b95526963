"""The distill workload end to end, small: tiny teacher and student, a few hundred rows, real Ray Data,
vLLM, Ray Train and DeepSpeed; then the exported student scores a file as an endpoint would."""

import json

import pytest
import yaml

from smallsec_ray.cli import main
from smallsec_ray.data.demo import write_demo_data

pytestmark = pytest.mark.timeout(1200)


def test_distill_runs_to_a_report_and_a_scoring_model(tmp_path, tiny_classifier, ray_local, capsys):
    write_demo_data(tmp_path / "data", seed=1, scale=0.15)
    # A shard with bad rows: they must be quarantined with a reason, and counted.
    bad = tmp_path / "data" / "cmdline" / "labelled" / "bad.jsonl"
    bad.write_bytes(b'{"text": "", "label": "benign"}\n{"text": "ls \xff", "label": "benign"}\n'
                    b'{"text": "whoami", "label": "evil"}\n')
    out = tmp_path / "run"
    spec = {
        "name": "e2e", "workload": "distill", "artifact": "cmdline",
        "data": {"labelled": [str(tmp_path / "data/cmdline/labelled")],
                 "noisy": [str(tmp_path / "data/cmdline/noisy")],
                 "test": [str(tmp_path / "data/cmdline/test")],
                 "split": {"validation": 0.25, "test": 0.0}},
        "teacher": {"model": str(tiny_classifier), "max_length": 64,
                    "finetune": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-3}},
        "labeling": {"cpus_per_replica": 0.5},
        "student": {"model": "char_cnn", "preset": "tiny"},
        "training": {"zero_stage": 2, "workers": 2, "epochs": 2, "batch_size": 64},
        "evaluation": {"fprs": [0.05], "group_by": ["source", "platform"], "audit_top_k": 20},
        "output": str(out),
    }
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec))

    assert main(["run", str(spec_path)]) == 0
    printed = capsys.readouterr().out
    assert "[7/7] evaluate: done" in printed

    prepare = json.loads((out / "prepare" / "manifest.json").read_text())["counts"]
    assert prepare["labelled"]["rows_quarantined"] == 3
    reasons = prepare["labelled"]["quarantine_reasons"]
    assert reasons["text is empty"] == 1 and reasons["label '…' is not one of"] == 1, reasons
    assert prepare["rows_in"] == prepare["rows_out"] + prepare["rows_quarantined"]
    label = json.loads((out / "label" / "manifest.json").read_text())["counts"]
    assert label["rows_in"] == sum(prepare[part]["rows_out"] for part in ("labelled", "noisy", "test"))
    assert label["rows_in"] == label["rows_out"] + label["rows_quarantined"]

    report = json.loads((out / "report.json").read_text())
    names = [m["name"] for m in report["models"]]
    assert names == ["teacher", "baseline student", "distilled student"]
    assert len({m["overall"]["n"] for m in report["models"]}) == 1  # the same test rows for all three
    assert (out / "plots" / "roc.png").stat().st_size > 10_000
    assert "![ROC curves](plots/roc.png)" in (out / "report.md").read_text()

    export = json.loads((out / "export" / "manifest.json").read_text())["outputs"]
    assert export["parity_max_abs_diff"] <= 1e-4
    model_dir = out / export["model_dir"]
    artifacts = tmp_path / "artifacts.txt"
    artifacts.write_text("ls -la /tmp\npowershell -enc SQBFAFgA\n")
    assert main(["score", str(model_dir), str(artifacts)]) == 0
    scored = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(scored) == 2 and all(set(s["probabilities"]) == {"benign", "malicious"} for s in scored)

    # A rerun finds every stage complete and does nothing.
    assert main(["run", str(spec_path)]) == 0
    assert capsys.readouterr().out.count("skipped") == 7
