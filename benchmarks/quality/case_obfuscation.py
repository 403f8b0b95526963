"""Does case obfuscation (`PoWeRsHeLl -eNc ...`) move the models' scores? MiniLM is uncased, so its tokenizer
lowercases and it cannot see case at all; the char-CNN students read bytes and can.

Scores the test rows of a finished cmdline_distill.py run twice, as they are and with the letters of each
row put in random case (seeded), with the teacher (transformers, the run's fine-tuned folder) and the
run's students, and reports how far the scores move and how many detections at the run's validation
thresholds (1% FPR) change.

Run after cmdline_distill.py:
    .venv/bin/python benchmarks/quality/case_obfuscation.py runs/quality/cmdline/run
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from smallsec_ray.teachers.backends import make_teacher
from smallsec_ray.workloads.common import score_student


def random_case(text: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)


def main(run: Path) -> None:
    manifest = {p.parent.name: json.loads(p.read_text())["result"] for p in run.glob("*/manifest.json")}
    report = json.loads((run / "report.json").read_text())
    thresholds = {m["name"]: m["thresholds"]["val_fpr_0.01"] for m in report["models"]}
    test = pa.concat_tables([pq.read_table(run / s) for s in manifest["label"]["parts"]["test"]])
    test = test.filter(pc.equal(test["label"], "malicious"))
    texts = test["text"].to_pylist()
    rng = random.Random(0)
    obfuscated = [random_case(t, rng) for t in texts]
    teacher_dir = run / manifest["finetune_teacher"]["members"][0]["model"]
    teacher = make_teacher("classifier", "hf", str(teacher_dir), ["benign", "malicious"], max_length=128)
    scorers = {"teacher": lambda batch: teacher.probs(batch)[:, 1]}
    # the distilled student as shipped (export), the baseline as trained
    for name, stage in (("baseline student", "train_baseline"), ("distilled student", "export")):
        folder = run / manifest[stage]["model_dir"]
        scorers[name] = lambda batch, folder=folder: score_student(folder, batch)[:, 1]
    print(f"{len(texts)} malicious test rows, letters in random case (seed 0)\n")
    print("| model | mean abs score change | max | detections at the 1% FPR threshold: as is -> random case |")
    print("|---|---:|---:|---|")
    for name, score in scorers.items():
        before, after = score(texts), score(obfuscated)
        t = thresholds[name]
        print(f"| {name} | {np.abs(after - before).mean():.4f} | {np.abs(after - before).max():.4f} | "
              f"{int((before >= t).sum())} -> {int((after >= t).sum())} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/quality/cmdline/run"))
