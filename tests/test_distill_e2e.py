"""The distill workload end to end, small: tiny teacher and student, a few hundred rows, real Ray Data,
vLLM, Ray Train and DeepSpeed; the console a person reads; then a second job continues the shipped
student and the result scores a file as an endpoint would."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from smallsec_ray.cli import main
from smallsec_ray.data.demo import write_demo_data
from smallsec_ray.errors import StageError
from smallsec_ray.job import read_results
from smallsec_ray.students.folder import read_config
from smallsec_ray.workloads.distill import STAGES as DISTILL

# End to end: minutes; `make test-slow` (and .ci/run) runs it, `make test` does not.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # generous: a loaded 2-core machine is several times slower

RAY_INTERNALS = ("PlacementGroupCleaner", "TrainingReport", "core_worker", "SplitCoordinator", "RayTrainWorker",
                 "(raylet)", "Traceback")


def distill_spec(data: Path, out: Path, teacher: str, **overrides) -> dict:
    spec = {
        "name": "e2e", "workload": "distill", "artifact": "cmdline",
        "data": {"labelled": [str(data / "cmdline/labelled")], "noisy": [str(data / "cmdline/noisy")],
                 "test": [str(data / "cmdline/test")], "split": {"validation": 0.25, "test": 0.0},
                 "noise": {"mode": "groups", "flip_rates": {"malicious": 0.2}}},
        "teacher": {"model": teacher, "max_length": 64,
                    "finetune": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-3}},
        "labeling": {"cpus_per_replica": 0.5, "batch_size": 16},
        "student": {"model": "char_cnn", "preset": "tiny"},
        "training": {"epochs": 2, "batch_size": 64, "scaling": {"zero_stage": 2, "workers": 2}},
        "evaluation": {"fprs": [0.05], "group_by": ["source", "platform"], "audit_top_k": 20},
        "export": {"int8": True},
        "resources": {"num_cpus": 4},
        "output": str(out),
    }
    spec.update(overrides)
    return spec


def result_of(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())["result"]


def test_distill_runs_to_a_report_and_a_student_that_another_job_continues(tmp_path, tiny_classifier, ray_local,
                                                                         capsys):
    data = tmp_path / "data"
    write_demo_data(data, seed=1, scale=0.15)
    # A shard with bad rows: they must be quarantined with a reason, and counted.
    (data / "cmdline" / "labelled" / "bad.jsonl").write_bytes(
        b'{"text": "", "label": "benign"}\n{"text": "ls \xff", "label": "benign"}\n'
        b'{"text": "whoami", "label": "evil"}\n')
    out = tmp_path / "run"
    spec_path = tmp_path / "job.yaml"
    spec = distill_spec(data, out, str(tiny_classifier), distillation={"policy": "relabel", "alpha": 0.5})
    spec["teacher"]["ensemble"] = {"size": 2, "split": "folds"}  # two teachers, averaged
    spec_path.write_text(yaml.safe_dump(spec))

    # As a user runs it, output to a pipe: the console shows stages, epochs and labelling progress;
    # Ray's, vLLM's and DeepSpeed's own lines go to the run's log.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SMALLSEC_VERBOSE")}
    proc = subprocess.run([sys.executable, "-m", "smallsec_ray.cli", "run", str(spec_path)], env=env,
                          capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:] + (out / "job.log").read_text()[-5000:]
    printed = proc.stdout
    assert f"log {out / 'job.log'}" in printed.splitlines()[0]
    assert "[7/7] evaluate: done" in printed
    assert "train_student: epoch 2/2" in printed and "finetune_teacher[1]: epoch 1/1" in printed
    assert "label[1]: 0/" in printed or "label[1]: 1/" in printed, printed  # the labelling progress line
    assert not any(noise in printed for noise in RAY_INTERNALS), printed
    assert proc.stderr.strip() == "", proc.stderr[-2000:]
    assert "PlacementGroupCleaner" in (out / "job.log").read_text() or "Ray" in (out / "job.log").read_text()

    prepare = result_of(out, "prepare")
    labelled = prepare["parts"]["labelled"]
    assert labelled["rows"]["rows_quarantined"] == 3
    reasons = labelled["quarantine_reasons"]
    assert reasons["text is empty"] == 1 and reasons["label '…' is not one of"] == 1, reasons
    label = result_of(out, "label")
    scored = ("labelled", "noisy", "test")
    assert label["rows"]["rows_in"] == sum(prepare["parts"][p]["rows"]["rows_out"] for p in scored)

    assert len(result_of(out, "finetune_teacher")["members"]) == 2 and len(label["teacher"]["ensemble"]) == 2
    policy = result_of(out, "train_student")["label_policy"]
    assert policy["policy"] == "relabel" and set(policy["thresholds"]) == {"benign", "malicious"}
    assert policy["changed_correctly"] is not None  # data.noise keeps the true labels

    report = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["teacher", "linear reference", "baseline student",
                                                     "distilled student"]
    assert (out / "report.md").read_text().splitlines()[2].startswith("**The distilled student ")
    assert len({m["overall"]["n"] for m in report["models"]}) == 1  # the same test rows for all three
    assert (out / "plots" / "roc.png").stat().st_size > 10_000
    assert "![ROC curves](plots/roc.png)" in (out / "report.md").read_text()

    export = result_of(out, "export")
    assert export["parity_max_abs_diff"] <= 1e-4
    shipped = out / export["model_dir"]
    config = read_config(shipped)
    assert config.lineage.job == "e2e" and len(config.lineage.teacher[0]["ensemble"]) == 2
    assert set(config.thresholds) == {"malicious"} and config.onnx is not None
    # export.int8: the int8 graph was made and checked on validation rows; kept only when it agreed.
    assert export["int8"] == config.onnx.int8 and export["int8"]["check_rows"] > 0
    assert (shipped / "model.int8.onnx").is_file() == export["int8"]["accepted"]
    assert (export["events_per_s_one_thread_int8"] is not None) == export["int8"]["accepted"]

    # A second job continues the shipped student on the same data (teacher already fine-tuned), in
    # this process, on the session's Ray.
    teacher = out / result_of(out, "finetune_teacher")["members"][0]["model"]
    more = tmp_path / "more"
    spec2 = distill_spec(data, more, str(teacher), name="e2e-continued",
                         student={"init_from": str(shipped)}, training={"epochs": 1, "batch_size": 64})
    spec2["teacher"]["finetune"] = {"enabled": False}
    spec2_path = tmp_path / "job2.yaml"
    spec2_path.write_text(yaml.safe_dump(spec2))
    capsys.readouterr()
    assert main(["run", str(spec2_path), "--until", "export"]) == 0  # the shipped student, no comparison
    continued = more / result_of(more, "export")["model_dir"]
    # A finished run's typed results, read back (what an experiment script scores again): the first job's, and
    # the second job's up to where it stopped.
    finished = read_results(out)
    assert list(finished) == [stage.name for stage in DISTILL]
    assert list(finished["evaluate"].models) == [m["name"] for m in report["models"]]
    assert finished["evaluate"].models["distilled student"].overall.roc_auc == report["models"][3]["overall"]["roc_auc"]
    assert finished["evaluate"].versus.candidate == "distilled student" and finished["evaluate"].audit.top_k == 20
    assert Path(finished.location(finished["export"].model_dir)) == shipped
    partial = read_results(more)
    assert list(partial)[-1] == "export"
    with pytest.raises(StageError, match="stage 'evaluate' has no complete result"):
        partial["evaluate"]
    assert read_config(continued).lineage.parent["job"] == "e2e"
    assert read_config(continued).architecture == config.architecture

    artifacts = tmp_path / "artifacts.txt"
    artifacts.write_text("ls -la /tmp\npowershell -enc SQBFAFgA\n")
    capsys.readouterr()
    assert main(["score", str(continued), str(artifacts)]) == 0
    scored = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(scored) == 2 and all(set(s["probabilities"]) == {"benign", "malicious"} for s in scored)

    # A rerun finds every stage complete and does nothing.
    assert main(["run", str(spec_path)]) == 0
    assert capsys.readouterr().out.count("skipped") == 7
