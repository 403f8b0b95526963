"""The semi_supervised workload end to end, small: three URL classes from the shared data (benign,
phishing, malware), a tiny teacher and student, two teacher rounds and two shares of pseudo-labelled rows,
on real Ray Data, vLLM, Ray Train and DeepSpeed."""

import json
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest
import yaml

from smallsec_ray.cli import main

# End to end: minutes; `make test-slow` (and .ci/run) runs it, `make test` does not.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # generous: a loaded 2-core machine is several times slower

CLASSES = ["benign", "phishing", "malware"]


def url_rows(shared_data: Path, per_class: int) -> pd.DataFrame:
    """`per_class` URLs of each class, grouped by host, in a seeded order."""
    url = shared_data / "url"
    sources = {"benign": ["tranco_top100k.csv", "tldr_doc_links.csv"], "phishing": ["phishtank.csv"],
               "malware": ["urlhaus.csv"]}
    frames = []
    for label, files in sources.items():
        rows = pd.concat([pd.read_csv(url / f, usecols=["url"]).assign(source=f.removesuffix(".csv"))
                          for f in files]).sample(n=per_class * 3, random_state=0)
        rows["group"] = [urlsplit(u if "://" in u else "http://" + u).hostname or u for u in rows["url"]]
        frames.append(rows.drop_duplicates("group").head(per_class).assign(label=label))
    rows = pd.concat(frames).drop_duplicates("group")  # one row per host: parts never share a host
    assert (rows["label"].value_counts() > per_class * 0.9).all()
    rows = rows.sample(frac=1.0, random_state=1).reset_index(drop=True)
    rows["id"] = [f"u{i}" for i in range(len(rows))]
    return rows


def test_semi_supervised_runs_rounds_and_students_to_a_report(tmp_path, tiny_classifier, ray_local, shared_data,
                                                              capsys):
    rows = url_rows(shared_data, per_class=140).head(390)
    data = tmp_path / "data"
    data.mkdir()
    labelled, pool, test = rows.iloc[:150], rows.iloc[150:300], rows.iloc[300:]
    labelled.to_csv(data / "labelled.csv", index=False)
    # The pool's labels are hidden from training: kept as true_label, to score the pseudo-labels.
    pool.rename(columns={"label": "true_label"}).to_parquet(data / "pool.parquet")
    test.to_json(data / "test.jsonl", orient="records", lines=True)

    out = tmp_path / "run"
    spec = {
        "name": "semi-e2e", "workload": "semi_supervised", "artifact": "url", "classes": CLASSES,
        "positive_class": "phishing",
        "data": {"labelled": [str(data / "labelled.csv")], "unlabelled": [str(data / "pool.parquet")],
                 "test": [str(data / "test.jsonl")], "split": {"validation": 0.3, "test": 0.0}},
        "teacher": {"model": str(tiny_classifier), "max_length": 48,
                    "finetune": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-3}},
        "labeling": {"cpus_per_replica": 0.5, "batch_size": 32},
        "student": {"model": "char_cnn", "preset": "tiny"},
        "training": {"epochs": 2, "batch_size": 32, "scaling": {"zero_stage": 1, "workers": 2}},
        "semi_supervised": {"rounds": 2, "min_gain": 0.0, "round_max_rows": 100, "ratios": [0.0, 1.0],
                            "added_rows": [0, -1], "confidence": 0.0},
        "evaluation": {"fprs": [0.1], "group_by": ["source"], "linear_reference": True},
        "resources": {"num_cpus": 4},
        "output": str(out),
    }
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(spec_path)]) == 0
    capsys.readouterr()
    assert main(["run", str(spec_path)]) == 0
    printed = capsys.readouterr().out
    assert "[7/7] evaluate: done" in printed, printed[-3000:]
    assert "finetune_teacher[round 2]: epoch 1/1" in printed

    def result(stage: str) -> dict:
        return json.loads((out / stage / "manifest.json").read_text())["result"]

    rounds = result("rounds")
    assert [r["round"] for r in rounds["rounds"]] == [1, 2]
    assert rounds["rounds"][1]["pool_rows_used"] == 100
    for r in rounds["rounds"]:  # every row scored in each round: labelled, pool and test
        assert r["labels"]["rows"]["rows_in"] == 390 and r["labels"]["rows"]["rows_quarantined"] == 0
    students = result("train_students")
    points = {p["name"]: p for p in students["points"]}
    assert set(points) == {"r=0", "r=1", "+0", "+all"}
    assert points["r=1"]["labelled_rows"] == 0 and points["r=1"]["pseudo_rows"] == points["r=0"]["labelled_rows"]
    assert points["+0"]["model"] == points["r=0"]["model"]  # the same rows: trained once
    assert points["+all"]["pseudo_rows"] == students["pool_rows"] == 150

    report = json.loads((out / "report.json").read_text())
    names = [m["name"] for m in report["models"]]
    assert names == ["teacher round 1", "teacher round 2", "linear reference (labelled rows)", "student r=0",
                     "student r=1", "student +all"]
    for m in report["models"]:  # three classes: per-class figures and macro ones
        assert set(m["by_class"]["per_class"]) == set(CLASSES) and m["by_class"]["n"] == 90
        assert m["by_class"]["roc_auc_macro"] is not None
    accuracy = report["extra"]["pseudo_label_accuracy"]
    assert [a["rows_with_true_label"] for a in accuracy] == [150, 150]
    assert all(0.0 <= a["accuracy"] <= 1.0 for a in accuracy)
    assert set(report["extra"]["gap_closed"]) == {"macro_f1", "auc"}
    md = (out / "report.md").read_text()
    assert "## Students against pseudo-labelled data" in md and "## Teacher rounds" in md
    assert "### All classes" in md
    assert (out / "plots" / "semi_supervised_curves.png").stat().st_size > 10_000
    assert result("export")["parity_max_abs_diff"] <= 1e-4

    # A rerun does nothing; a changed mix retrains the students only.
    assert main(["run", str(spec_path)]) == 0
    assert capsys.readouterr().out.count("skipped") == 7
    spec["semi_supervised"]["ratios"] = [0.0, 0.5]
    spec_path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(spec_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped") == 4 and "train_students: running (changed: semi_supervised.ratios)" in printed

    # Two students per point, one per training seed, on the same rows: the curves give means and ranges.
    spec["semi_supervised"] |= {"repeats": 2, "added_rows": []}
    spec_path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(spec_path)]) == 0
    assert "train_students[r=0.5 seed 1]: epoch" in capsys.readouterr().out
    students = result("train_students")
    assert [(p["name"], p["seed"]) for p in students["points"]] == [("r=0", 0), ("r=0", 1), ("r=0.5", 0),
                                                                     ("r=0.5", 1)]
    first, second = students["points"][:2]
    assert first["model"]["model_dir"] != second["model"]["model_dir"]
    assert first["model"]["epochs"][0]["val_loss"] != second["model"]["epochs"][0]["val_loss"]
    report = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in report["models"]][-4:] == ["student r=0", "student r=0 seed 1", "student r=0.5",
                                                          "student r=0.5 seed 1"]
    for c in report["extra"]["curves"]:
        runs = [r["macro_f1"] for r in c["runs"]]
        assert len(runs) == 2 and c["macro_f1"] == pytest.approx(sum(runs) / 2)
        assert c["macro_f1_range"] == [min(runs), max(runs)]
    assert "the mean of 2 students, one per training seed" in (out / "report.md").read_text()
