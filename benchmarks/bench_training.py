"""Student training throughput: the Ray Train loop (DeepSpeed with 1 and 2 workers, DDP with 2) against a
plain single-process PyTorch loop, on the same char-CNN student and the same real command lines.

    .venv/bin/python benchmarks/bench_training.py --quick      # ~3 min on 2 cores
    .venv/bin/python benchmarks/bench_training.py              # 20,000 rows, 3 epochs
    .venv/bin/python benchmarks/bench_training.py --smoke      # 300 rows, 1 epoch, one Ray fit: the code runs

Samples/s is training rows per second in the last epoch (steady state: the first epoch also starts the
data pipeline); "fit s" is the whole call, start-up included; ratios are against the plain loop with one
torch thread, which is what a Ray worker with one CPU runs. Numbers swing with other load on the machine:
the load average is printed with them. Reads ../shared/data/cmdline (or --data).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import SHARED, Results, table  # noqa: E402

from smallsec_ray.runtime import init_ray  # noqa: E402
from smallsec_ray.spec import StudentSpec, TrainingSpec  # noqa: E402
from smallsec_ray.students import build_student  # noqa: E402
from smallsec_ray.training.loss import distillation_loss  # noqa: E402
from smallsec_ray.training.trainer import train_student  # noqa: E402

CLASSES = ["benign", "malicious"]
MALICIOUS = ["atomic_red_team.jsonl", "gtfobins.jsonl"]
BENIGN = ["tldr.jsonl.gz", "nl2bash.jsonl"]
DEFAULT_DATA = SHARED


def read_rows(data_dir: Path, rows: int) -> pd.DataFrame:
    """`rows` real command lines, a third malicious (sampled with replacement: there are ~2,700)."""
    def sample(files: list[str], n: int) -> pd.DataFrame:
        frame = pd.concat(pd.read_json(data_dir / "cmdline" / f, lines=True)[["text", "label"]] for f in files)
        return frame.sample(n, replace=n > len(frame), random_state=0)

    frame = pd.concat([sample(MALICIOUS, rows // 3), sample(BENIGN, rows - rows // 3)])
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)


def plain_loop(train: pd.DataFrame, student: StudentSpec, training: TrainingSpec) -> float:
    """Samples/s of the last epoch of a single-process loop: encode a batch, loss, backward, step."""
    torch.manual_seed(0)
    model, encoder = build_student(student.model, student.preset, len(CLASSES), student.max_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate)
    labels = torch.tensor([CLASSES.index(x) for x in train["label"]])
    texts = list(train["text"])
    for _ in range(training.epochs):
        started = time.perf_counter()
        for i in range(0, len(texts), training.batch_size):
            ids = torch.from_numpy(encoder.encode(texts[i:i + training.batch_size]))
            loss = distillation_loss(model(ids), labels[i:i + training.batch_size], None, 1.0, 1.0)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
    return len(texts) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4,000 rows, 2 epochs")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "default"])
    parser.add_argument("--smoke", action="store_true", help="300 rows, 1 epoch, the tiny preset, one Ray fit "
                        "(DeepSpeed, 2 workers): checks that the benchmark runs (results go to a temporary folder)")
    args = parser.parse_args()
    rows, epochs = (4_000, 2) if args.quick else (20_000, 3)
    loops = [("Ray Train + DeepSpeed ZeRO-1", "deepspeed", 1), ("Ray Train + DeepSpeed ZeRO-1", "deepspeed", 2),
             ("Ray Train + DDP", "ddp", 2)]
    if args.smoke:
        rows, epochs, args.preset, loops = 300, 1, "tiny", loops[1:2]
    results = Results("bench_training", smoke=args.smoke)

    frame = read_rows(args.data, rows + rows // 10)
    train, val = frame.iloc[:rows], frame.iloc[rows:]
    student = StudentSpec(preset=args.preset)
    base = dict(epochs=epochs, batch_size=128, early_stopping_patience=0)
    init_ray(num_cpus=4)

    measured = []
    for threads in sorted({1, os.cpu_count() or 1}):  # a Ray worker with 1 CPU runs 1 torch thread
        torch.set_num_threads(threads)
        started = time.perf_counter()
        rate = plain_loop(train, student, TrainingSpec.model_validate(base))
        measured.append((f"plain PyTorch, 1 process, {threads} thread{'s' * (threads > 1)}", rate,
                      time.perf_counter() - started))
    plain = measured[0][1]
    for label, strategy, workers in loops:
        training = TrainingSpec.model_validate({**base, "scaling": {"strategy": strategy, "zero_stage": 1,
                                                                     "workers": workers, "cpus_per_worker": 1.0}})
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            result = train_student(training, student, CLASSES, ray.data.from_pandas(train),
                                   ray.data.from_pandas(val), out)
            measured.append((f"{label}, {workers} worker{'s' * (workers > 1)}", result.epochs[-1]["samples_per_s"],
                          time.perf_counter() - started))

    heading = (f"char_cnn/{args.preset}, {rows:,} training rows, {epochs} epochs, batch 128 per worker, "
               f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end\n\n")
    text = heading + table(["loop", "samples/s (last epoch)", "vs plain", "fit s"],
                           [[name, f"{rate:,.0f}", f"{rate / plain:.2f}x", f"{seconds:.1f}"]
                            for name, rate, seconds in measured], right=(1, 2, 3))
    print("\n" + text)
    path = results.write({"preset": args.preset, "rows": rows, "epochs": epochs, "load_average": os.getloadavg()[0],
                      "loops": [{"loop": name, "samples_per_s": rate, "vs_plain": rate / plain, "fit_s": seconds}
                                for name, rate, seconds in measured]}, markdown=text)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
