"""Where a short student fit spends its time, as the workloads run it: rows read from Parquet shards through
Ray Data (read, select columns, filter a split), streamed again every epoch or materialized once, with
Ray Data's Parquet reader V2 (Ray 2.60's default) or V1 (what `init_ray` sets).

    .venv/bin/python benchmarks/bench_fit_overhead.py            # ~8 min on 2 cores
    .venv/bin/python benchmarks/bench_fit_overhead.py --rows 1000 --epochs 2     # ~4 min
    .venv/bin/python benchmarks/bench_fit_overhead.py --fixed-cost   # ~6 min: tiny fits, Ray Train's poll
    .venv/bin/python benchmarks/bench_fit_overhead.py --smoke        # one tiny fit: the code runs

--fixed-cost times fits of 200 rows and one epoch (nearly all of such a fit is fixed cost), DeepSpeed ZeRO-1
with 2 workers, alternating Ray Train's default controller poll (every 2 s) and the 0.5 s that `init_ray`
sets, three of each, and splits each, with a step callback of the training loop (trainer.StepCallback,
rank 0), into: until the first optimizer step is done (counting the rows, the controller, worker and
data-split actors starting, DeepSpeed's set-up, the first batch), the steps after it, and after the last
step (validation, the checkpoint, the workers' shutdown, until fit() returns).

One Ray instance for all four fits, in a fixed order after one warm-up fit, so that every fit finds
Ray's worker processes in the same state. Per fit: the seconds of the whole call, the part before Ray
Train starts (counting and, when on, materializing), the training time of the epochs and the last
epoch's rate. Reads ../shared/data/cmdline (or --data) like bench_training.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.train

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_training import CLASSES, DEFAULT_DATA, read_rows  # noqa: E402
from results import Results, table  # noqa: E402

from smallsec_ray.runtime import init_ray  # noqa: E402
from smallsec_ray.spec import ScalingSpec, StudentSpec, TrainingSpec  # noqa: E402
from smallsec_ray.training.trainer import Progress, train_student  # noqa: E402
from smallsec_ray.workloads.common import dataset  # noqa: E402


def write_shards(folder: Path, rows: int, data: Path) -> list[str]:
    """Two shards of real command lines in the prepared-shard layout: text, label, split (a tenth of
    the rows validation)."""
    frame = read_rows(data, rows + rows // 10)
    frame["split"] = ["validation" if i % 11 == 10 else "train" for i in range(len(frame))]
    frame["id"] = [f"r{i}" for i in range(len(frame))]
    paths = []
    for k, part in enumerate((frame.iloc[::2], frame.iloc[1::2])):
        path = folder / f"part-{k}.parquet"
        pq.write_table(pa.Table.from_pandas(part[["id", "text", "label", "split"]], preserve_index=False), path)
        paths.append(str(path))
    return paths


def one_fit(paths: list[str], v2: bool, materialize: bool, epochs: int, preset: str = "small") -> dict:
    ray.data.DataContext.get_current().use_datasource_v2 = v2
    training = TrainingSpec(epochs=epochs, batch_size=32, learning_rate=1e-3, early_stopping_patience=0,
                            materialize=materialize,
                            scaling=ScalingSpec(strategy="ddp", workers=2, cpus_per_worker=1.0))
    train, val = dataset(paths, "train", with_probs=False), dataset(paths, "validation", with_probs=False)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = train_student(training, StudentSpec.model_validate({"preset": preset, "max_length": 128}), CLASSES,
                               train, val, out)
        seconds = time.perf_counter() - started
    epochs_s = sum(e["train_seconds"] for e in result.epochs)
    return {"reader": "V2" if v2 else "V1", "rows": "materialized" if materialize else "streamed every epoch",
            "fit_s": round(seconds, 1), "epochs_train_s": round(epochs_s, 1),
            "last_epoch_rows_per_s": round(result.epochs[-1]["samples_per_s"]),
            "outside_training_s": round(seconds - epochs_s, 1)}


@dataclass
class StepTimes:
    """A step callback (trainer.StepCallback): rank 0 appends the time each optimizer step ended to `path`."""

    path: str

    def __call__(self, progress: Progress, resumed_at_step: int, batch: dict) -> None:
        if ray.train.get_context().get_world_rank() == 0:
            with open(self.path, "a") as f:
                f.write(f"{time.time()}\n")


def tiny_fit(poll_s: str, data: Path, preset: str = "small") -> dict:
    """One fit of 200 rows, one epoch, split into until the first step, the steps, and after the last step."""
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = poll_s  # Ray Train passes it on to its controller
    frame = read_rows(data, 256)
    train, val = ray.data.from_pandas(frame.iloc[:200]), ray.data.from_pandas(frame.iloc[200:])
    training = TrainingSpec(epochs=1, batch_size=32, learning_rate=1e-3, early_stopping_patience=0,
                            scaling=ScalingSpec(strategy="deepspeed", zero_stage=1, workers=2, cpus_per_worker=1.0))
    with tempfile.TemporaryDirectory() as out:
        marks = Path(out) / "steps.txt"
        started = time.time()
        train_student(training, StudentSpec.model_validate({"preset": preset, "max_length": 128}), CLASSES, train, val,
                      out, callbacks=[StepTimes(str(marks))])
        ended = time.time()
        steps = [float(line) for line in marks.read_text().split()]
    first, last = min(steps), max(steps)
    return {"poll_s": float(poll_s), "fit_s": round(ended - started, 1), "to_first_step_s": round(first - started, 1),
            "steps_s": round(last - first, 1), "after_last_step_s": round(ended - last, 1)}


def fixed_cost(data: Path, smoke: bool) -> None:
    if smoke:
        fits = [tiny_fit("0.5", data, preset="tiny")]
    else:
        tiny_fit("0.5", data)  # warm-up: DeepSpeed's op, imports
        fits = [tiny_fit(poll, data) for _ in range(3) for poll in ("2.0", "0.5")]
    text = (f"char_cnn/{'tiny' if smoke else 'small'}, 200 training rows, 1 epoch, DeepSpeed ZeRO-1 2 workers, "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end\n\n")
    text += table(["controller poll s", "fit s", "to the first step s", "the other steps s", "after the last step s"],
                  [[r["poll_s"], r["fit_s"], r["to_first_step_s"], r["steps_s"], r["after_last_step_s"]] for r in fits],
                  right=(0, 1, 2, 3, 4))
    print("\n" + text)
    print(f"results: {Results('bench_fit_overhead_fixed_cost', smoke=smoke).write(fits, markdown=text)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000, help="training rows (a tenth more for validation)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--fixed-cost", action="store_true", help="time tiny fits instead (see the docstring)")
    parser.add_argument("--smoke", action="store_true", help="one tiny fit with the step callback (200 rows, 1 "
                        "epoch, the tiny preset): checks that the benchmark runs (results go to a temporary folder)")
    args = parser.parse_args()
    init_ray(num_cpus=4)
    if args.fixed_cost or args.smoke:
        fixed_cost(args.data, args.smoke)
    if args.fixed_cost or args.smoke:  # a smoke run: the tiny fit above covers the fit and the step callback
        return
    kinds = [(True, False), (True, True), (False, False), (False, True)]
    rows, epochs, preset = (200, 1, "tiny") if args.smoke else (args.rows, args.epochs, "small")
    with tempfile.TemporaryDirectory() as folder:
        paths = write_shards(Path(folder), rows, args.data)
        if not args.smoke:
            one_fit(paths, v2=False, materialize=True, epochs=1)  # warm-up: worker processes, imports
        fits = [one_fit(paths, v2, materialize, epochs, preset) for v2, materialize in kinds[:1 if args.smoke else 4]]
    base = fits[0]["fit_s"]
    text = (f"char_cnn/{preset}, {rows:,} training rows, {epochs} epochs, DDP 2 workers x 32 rows, "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end\n\n")
    text += table(["Parquet reader", "rows", "fit s", "vs V2 streamed", "training s (epochs)", "outside training s",
                   "last epoch rows/s"],
                  [[r["reader"], r["rows"], r["fit_s"], f"{base / r['fit_s']:.2f}x faster", r["epochs_train_s"],
                    r["outside_training_s"], f"{r['last_epoch_rows_per_s']:,}"] for r in fits], right=(2, 3, 4, 5, 6))
    print("\n" + text)
    print(f"results: {Results('bench_fit_overhead', smoke=args.smoke).write(fits, markdown=text)}")


if __name__ == "__main__":
    main()
