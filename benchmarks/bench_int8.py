"""int8 students against fp32 on trained models and real rows: ONNX Runtime static quantization as the export
stage does it (export.int8: calibrated on even validation rows, checked on odd ones), then on the test rows
ROC AUC of the positive class, decisions unchanged at the shipped threshold, and events/s per core.

Models (each needs its experiment run first):
  url   the semi-supervised experiment's exported student (char CNN default preset, 3 classes, positive
        class phishing): runs/quality/url/run-default/export/model, rows runs/quality/url/data
  html  the synthetic experiment's production model (hierarchical HTML, 2 classes): runs/quality/html/run-V2/
        production/model, exported here with its threshold at 5% FPR on validation; rows runs/quality/html/data

Events/s: text -> encoder -> ONNX Runtime (one intra-op thread) -> probabilities, over the test rows, timed in
CPU seconds of this single-threaded process (per core, whatever else runs), three repeats each, fp32 and int8
alternating; the ratio is of the medians and the spread is min-max.

    .venv/bin/python benchmarks/bench_int8.py            # ~3 min
    .venv/bin/python benchmarks/bench_int8.py --smoke    # a freshly made tiny URL student on 100 rows: the code runs
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "quality")]

from results import SHARED, Results  # noqa: E402
from url_data import CLASSES as URL_CLASSES  # noqa: E402
from url_data import write_experiment_shards  # noqa: E402

from smallsec_ray.evaluation import pick_threshold  # noqa: E402
from smallsec_ray.export import OnnxScorer, export_onnx, quantize_int8  # noqa: E402
from smallsec_ray.students import build_student, student_config  # noqa: E402
from smallsec_ray.students.folder import Lineage, ModelConfig, load_model, read_config  # noqa: E402
from smallsec_ray.workloads.common import score_student  # noqa: E402

MODELS = {
    "url": ("runs/quality/url/run-default/export/model", "runs/quality/url/data", "phishing"),
    "html": ("runs/quality/html/run-V2/production/model", "runs/quality/html/data", "phishing"),
}


def rows(folder: Path, part: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted((folder / part).glob("*.parquet"))],
                            promote_options="permissive")


def shipped(model: Path, validation: pa.Table, positive: str, out: Path) -> Path:
    """The model as the export stage ships it: as is when exported, else exported here with its threshold at
    5% FPR on the validation rows."""
    if read_config(model).onnx is not None:
        shutil.copytree(model, out)
        return out
    net, _, config = load_model(model)
    texts = validation.column("text").to_pylist()
    scores = score_student(model, texts)[:, config.classes.index(positive)]
    labels = np.array([label == positive for label in validation.column("label").to_pylist()])
    threshold = pick_threshold(scores, labels, 0.05)
    export_onnx(net, replace(config, thresholds={positive: threshold}), out, texts[:256])
    return out


def cpu_rate(scorer: OnnxScorer, texts: list[str]) -> float:
    started = time.process_time()
    scorer.predict_proba(texts)
    return len(texts) / (time.process_time() - started)


def smoke_model(folder: Path) -> tuple[str, str, str]:
    """A smoke run's model: a freshly made tiny URL student, exported, and 100 rows of each split."""
    data = folder / "data"
    write_experiment_shards(SHARED, data, 300, 100, 100, 100)
    net, encoder = build_student("char_cnn", "tiny", len(URL_CLASSES))
    config = ModelConfig(student_config(net), encoder.config(), URL_CLASSES, Lineage(job="bench_int8 --smoke"),
                         thresholds={"phishing": 0.5})
    texts = rows(data, "test").column("text").to_pylist()
    export = export_onnx(net, config, folder / "model", texts[:64])
    return str(export.model_dir), str(data), "phishing"


def measure(name: str, repeats: int) -> dict:
    model_dir, data_dir, positive = MODELS[name]
    data = Path(data_dir)
    labelled = rows(data, "labelled")
    validation = labelled.filter(pc.equal(labelled.column("fixed_split"), "validation"))
    test = rows(data, "test")
    with tempfile.TemporaryDirectory() as tmp:
        folder = shipped(Path(model_dir), validation, positive, Path(tmp) / "model")
        config = read_config(folder)
        index, threshold = config.classes.index(positive), config.thresholds[positive]
        val_positive = np.array([label == positive for label in validation.column("label").to_pylist()])
        check = quantize_int8(folder, validation.column("text").to_pylist(), val_positive, index, threshold)
        if not check["accepted"]:
            return {"model": name, "int8_check_on_validation": check}
        texts = test.column("text").to_pylist()
        is_positive = np.array([label == positive for label in test.column("label").to_pylist()])
        with threadpool_limits(1):
            scorers = {"fp32": OnnxScorer(folder, intra_op_num_threads=1, fp32=True),
                       "int8": OnnxScorer(folder, intra_op_num_threads=1)}
            probs = {k: s.predict_proba(texts)[:, index] for k, s in scorers.items()}  # also the warm-up
            rates: dict[str, list[float]] = {"fp32": [], "int8": []}
            for _ in range(repeats):
                for k, s in scorers.items():
                    rates[k].append(cpu_rate(s, texts))
    median = {k: float(np.median(v)) for k, v in rates.items()}
    return {
        "model": name, "folder": model_dir, "classes": config.classes, "positive": positive,
        "architecture": config.architecture.get("model"), "test_rows": len(texts), "threshold": threshold,
        "int8_check_on_validation": check,
        "test_auc": {k: float(roc_auc_score(is_positive, p)) for k, p in probs.items()},
        "test_decisions_unchanged": float(np.mean((probs["fp32"] >= threshold) == (probs["int8"] >= threshold))),
        "events_per_s_per_core": {k: [round(r, 1) for r in v] for k, v in rates.items()},
        "speedup_of_medians": median["int8"] / median["fp32"],
        "speedup_spread": [min(rates["int8"]) / max(rates["fp32"]), max(rates["int8"]) / min(rates["fp32"])],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="url,html")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--url-run", default="runs/quality/url", help="the semi-supervised experiment's --out")
    parser.add_argument("--smoke", action="store_true", help="a freshly made tiny URL student and 100 rows, one "
                        "repeat: checks that the benchmark runs (results go to a temporary folder)")
    args = parser.parse_args()
    out = Results("bench_int8_results", smoke=args.smoke)
    MODELS["url"] = (f"{args.url_run}/run-default/export/model", f"{args.url_run}/data", "phishing")
    if args.smoke:
        MODELS["url"], args.models, args.repeats = smoke_model(out.folder), "url", 1
    results = []
    for name in args.models.split(","):
        if not Path(MODELS[name][0]).is_dir():
            print(f"{name}: {MODELS[name][0]} is missing; run its experiment first", file=sys.stderr)
            continue
        results.append(measure(name, args.repeats))
        print(json.dumps(results[-1], indent=1), flush=True)
    print(f"results: {out.write(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
