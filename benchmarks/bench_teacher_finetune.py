"""Teacher fine-tuning with and without `group_by_length`, side by side in one run: seconds per fit and the
validation figures, on the URL experiment's labelled rows (MiniLM-L6, 2 DDP workers, 3 epochs).

A transformer batch is padded to its longest row. URLs are 11 MiniLM tokens at the median but 54 at the 90th
percentile, so a random batch of 32 is nearly always padded to the 64-token cap; grouping rows of similar
length cuts the padding. Grouping also makes batches less mixed (length goes with the source here), which
could cost quality: the validation figures say whether it does.

    .venv/bin/python benchmarks/bench_teacher_finetune.py      # ~15 min on 2 cores
    .venv/bin/python benchmarks/bench_teacher_finetune.py --smoke   # a tiny teacher, 300 rows, the grouped fit
Reads runs/quality/url/data (written here if missing, as url_semi.py writes it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import ray
from sklearn.metrics import f1_score, roc_auc_score

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "quality")]

from results import SHARED, Results, tiny_teacher  # noqa: E402
from url_data import CLASSES, write_experiment_shards  # noqa: E402

from smallsec_ray.runtime import init_ray  # noqa: E402
from smallsec_ray.spec import FinetuneSpec, ScalingSpec  # noqa: E402
from smallsec_ray.teachers.backends import make_teacher  # noqa: E402
from smallsec_ray.teachers.bundled import resolve_model  # noqa: E402
from smallsec_ray.teachers.finetune import finetune_teacher  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("runs/quality/url/data"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="a tiny teacher, 300 labelled rows, one epoch, the grouped "
                   "fit only: checks that the benchmark runs (data and results go to a temporary folder)")
    args = p.parse_args()
    out_results = Results("bench_teacher_finetune_results", smoke=args.smoke)
    teacher = resolve_model("bundled:all-minilm-l6-v2")
    kinds: tuple[bool, ...] = (False, True)
    if args.smoke:
        args.data, args.epochs, kinds = out_results.folder / "data", 1, (True,)
        teacher = tiny_teacher(out_results.folder / "tiny-teacher", CLASSES)
        write_experiment_shards(SHARED, args.data, 300, 100, 100, 100)
    elif not (args.data / "labelled").exists():
        write_experiment_shards(SHARED, args.data, 3600, 600, 24000, 6000)
    rows = pd.read_parquet(args.data / "labelled").rename(columns={"fixed_split": "split"})
    train, val = rows[rows["split"] == "train"], rows[rows["split"] == "validation"]
    init_ray(num_cpus=4)
    train_ds = ray.data.from_pandas(train[["id", "text", "label"]]).materialize()
    val_ds = ray.data.from_pandas(val[["id", "text", "label"]]).materialize()
    y = val["label"].map(CLASSES.index).to_numpy()
    results = []
    for grouped in kinds:
        spec = FinetuneSpec(epochs=args.epochs, batch_size=32, learning_rate=1e-4, schedule="linear", warmup=0.1,
                            select_by="auc", early_stopping_patience=0, group_by_length=grouped,
                            scaling=ScalingSpec(strategy="ddp", workers=2, cpus_per_worker=0.5))
        with tempfile.TemporaryDirectory() as out:
            started = time.time()
            trained = finetune_teacher(teacher, CLASSES, train_ds, val_ds, spec, max_length=64, out_dir=out)
            seconds = time.time() - started
            probs = make_teacher("classifier", "hf", trained.model_dir, CLASSES, max_length=64).probs(
                list(val["text"]))
        result = {"group_by_length": grouped, "fit_seconds": round(seconds, 1),
                  "train_rows_per_s": round(trained.samples_per_s, 1), "best_epoch": trained.best_epoch,
                  "val_macro_f1": round(float(f1_score(y, probs.argmax(1), average="macro")), 4),
                  "val_auc_macro": round(float(np.mean([roc_auc_score(y == k, probs[:, k])
                                                        for k in range(len(CLASSES))])), 4)}
        print(json.dumps(result), flush=True)
        results.append(result)
    if len(results) == 2:
        plain, by_length = results
        print(f"group_by_length: {plain['fit_seconds'] / by_length['fit_seconds']:.2f}x faster fit, "
              f"{by_length['train_rows_per_s'] / plain['train_rows_per_s']:.2f}x training rows/s")
    print(f"results: {out_results.write(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
