"""Driver memory and time of prepare + label + audit at growing row counts (issue 12, part 3: a driver that
stays small). Goal: the driver's peak memory flat (within 20%) from 100k to 1M rows, time linear.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_driver_scale.py                  # 10k, 100k, 1M rows
    PYTHONPATH=. .venv/bin/python benchmarks/bench_driver_scale.py --rows 10000     # one size, ~1 min
    PYTHONPATH=. .venv/bin/python benchmarks/bench_driver_scale.py --backend hf     # the teacher on HF
    PYTHONPATH=. .venv/bin/python benchmarks/bench_driver_scale.py --smoke   # 300 rows in 3 shards: the code runs

Rows are synthetic command lines (6 to 12 words of the tiny tokenizer's vocabulary), 80% benign, in groups
of 10 rows, with unique ids, written as Parquet shards of --shard-rows rows to a temp folder (not timed):
they are the noisy part; the labelled part is one shard of 200 rows. The stages are the workload's own
functions, called as the distill workload calls them: run_prepare (read, validate, split by group, ids
checked across shards), label_parts on the noisy part (the Ray Data pipeline, 1 teacher replica), and
audit_shards (the label audit as a distributed top-k). The teacher is the tiny 2-layer BERT classifier of
tests/tiny_models.py with random seeded weights: its speed, not its quality, is what is measured. The spec is
jobs/local/distill.yaml with the data, the teacher, the labelling batch and Ray's CPUs as overrides.

Each size runs in its own subprocess (a fresh driver and a fresh embedded Ray, --num-cpus logical CPUs).
Driver memory is the driver process's resident set (psutil RSS), sampled every 20 ms by a thread: per
stage its peak, and that peak above the RSS the process had before the first stage (imports and Ray
started). Ray's own processes (raylet, GCS, the object store, task workers, the teacher actor) are not
the driver and are not counted. Prints one JSON line per size, then a table; writes
benchmarks/bench_driver_scale.{json,md} (--smoke: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import ROOT, Results, table, tiny_teacher  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))  # tiny_models' vocabulary, for rows the tiny teacher reads whole
from tiny_models import COMMAND_WORDS  # noqa: E402

from smallsec_ray.data.schema import GROUP, ID, LABEL, SOURCE, TEXT  # noqa: E402

SPEC = ROOT / "jobs" / "local" / "distill.yaml"
CLASSES = ["benign", "malicious"]
SIZES = (10_000, 100_000, 1_000_000)


class PeakRss:
    """The process's RSS sampled every `every` seconds in a daemon thread; `peak` since the last reset."""

    def __init__(self, every: float = 0.02) -> None:
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self.every = every
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.every)

    def reset(self) -> int:
        self.peak = self.process.memory_info().rss
        return self.peak


def write_rows(folder: Path, rows: int, shard_rows: int, seed: int = 0) -> None:
    """`rows` synthetic rows in Parquet shards of `shard_rows` rows under folder/noisy, and 200 labelled rows
    under folder/labelled."""
    rng = np.random.default_rng(seed)
    words = np.array(COMMAND_WORDS)
    for part, count, offset in (("noisy", rows, 0), ("labelled", 200, 10**9)):
        (folder / part).mkdir(parents=True)
        for start in range(0, count, shard_rows):
            n = min(shard_rows, count - start)
            lengths = rng.integers(6, 13, n)
            picks = rng.integers(0, len(words), lengths.sum())
            texts = [" ".join(chunk) for chunk in np.split(words[picks], np.cumsum(lengths)[:-1])]
            index = np.arange(offset + start, offset + start + n)
            table = pa.table({ID: [f"row-{i}" for i in index], TEXT: texts,
                              LABEL: np.where(rng.random(n) < 0.2, "malicious", "benign").tolist(),
                              SOURCE: ["synthetic"] * n, GROUP: [f"group-{i // 10}" for i in index]})
            pq.write_table(table, folder / part / f"{part}-{start // shard_rows:05d}.parquet")


@contextmanager
def stage(name: str, rss: PeakRss, base: int, out: dict):
    rss.reset()
    started = time.monotonic()
    yield
    out[name] = {"seconds": round(time.monotonic() - started, 1), "peak_rss_mb": round(rss.peak / 2**20, 1),
                 "peak_above_base_mb": round((rss.peak - base) / 2**20, 1)}


def run_one(rows: int, shard_rows: int, backend: str, num_cpus: int, batch_size: int) -> dict:
    """One size in this process: data written, Ray started, then the three stages measured."""
    from smallsec_ray.audit import audit_shards
    from smallsec_ray.prepare import run_prepare
    from smallsec_ray.runtime import init_ray
    from smallsec_ray.spec import load_spec
    from smallsec_ray.stages import StageContext
    from smallsec_ray.workloads.common import TeacherModel, Teachers, ctx_paths, label_parts

    with tempfile.TemporaryDirectory(prefix="drv-scale-") as folder:
        tmp = Path(folder)
        started = time.monotonic()
        write_rows(tmp / "data", rows, shard_rows)
        written = time.monotonic() - started
        teacher = tiny_teacher(tmp / "teacher", CLASSES)
        spec = load_spec(SPEC, {
            "name": "driver-scale", "data.labelled": [str(tmp / "data" / "labelled")],
            "data.noisy": [str(tmp / "data" / "noisy")], "data.test": [],
            "teacher.model": str(teacher), "teacher.backend": backend, "teacher.max_length": 32,
            "labeling.cpus_per_replica": 1, "labeling.batch_size": batch_size, "resources.num_cpus": num_cpus,
            "output": str(tmp / "run")})
        run_dir = tmp / "run"
        init_ray(num_cpus=spec.resources.num_cpus)
        rss = PeakRss()
        base = rss.reset()
        result: dict = {"rows": rows, "shards": -(-rows // shard_rows), "shard_rows": shard_rows, "backend": backend,
                  "num_cpus": num_cpus, "write_data_s": round(written, 1),
                  "base_rss_mb": round(base / 2**20, 1), "stages": {}}
        with stage("prepare", rss, base, result["stages"]):
            data = run_prepare(StageContext(spec, run_dir, run_dir / "prepare"))
        ctx = StageContext(spec, run_dir, run_dir / "label")
        with stage("label", rss, base, result["stages"]):
            labels = label_parts(ctx, data, Teachers([TeacherModel(str(teacher), finetuned=False)]), ("noisy",))
        with stage("audit", rss, base, result["stages"]):
            audit = audit_shards(ctx_paths(ctx, labels.shards("noisy")), CLASSES, 100, None)
        assert data.parts["noisy"].rows.rows_out == labels.by_part["noisy"].rows_out == audit.n_rows == rows
        result["splits"] = data.parts["noisy"].by_split
        result["audit"] = {"listed": len(audit.rows), "disagreements": audit.n_disagreements}
        result["load_avg_1m"] = round(os.getloadavg()[0], 1)
        return result


def markdown(results: list[dict]) -> str:
    rows = [[f"{r['rows']:,}", r["shards"], name, s["seconds"], f"{r['rows'] / max(s['seconds'], 0.1):,.0f}",
             s["peak_rss_mb"], s["peak_above_base_mb"]] for r in results for name, s in r["stages"].items()]
    return table(["rows", "shards", "stage", "seconds", "rows/s", "driver peak RSS, MB", "above start, MB"], rows,
                 right=(0, 1, 3, 4, 5, 6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, action="append", help=f"row counts (default {SIZES})")
    parser.add_argument("--shard-rows", type=int, default=20_000)
    parser.add_argument("--backend", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--num-cpus", type=int, default=4, help="Ray's logical CPUs (at least 4, see init_ray)")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per teacher call")
    parser.add_argument("--one", action="store_true", help="run one size in this process (used by the parent)")
    parser.add_argument("--smoke", action="store_true", help="one size of 300 rows in shards of 100: checks that "
                        "the benchmark runs (results go to a temporary folder)")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.shard_rows = [300], 100
    if args.one:
        print(json.dumps(run_one(args.rows[0], args.shard_rows, args.backend, args.num_cpus, args.batch_size)))
        return
    out = Results("bench_driver_scale", smoke=args.smoke)
    results = []
    print(f"started {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores", flush=True)
    for rows in args.rows or SIZES:
        command = [sys.executable, __file__, "--one", "--rows", str(rows), "--shard-rows", str(args.shard_rows),
                   "--backend", args.backend, "--num-cpus", str(args.num_cpus), "--batch-size", str(args.batch_size)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"{rows:,} rows failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    print(f"finished {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(markdown(results))
    print(f"results: {out.write({'sizes': results}, markdown=markdown(results))}")


if __name__ == "__main__":
    main()
