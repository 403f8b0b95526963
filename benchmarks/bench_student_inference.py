"""Student inference throughput on one core: events/s end to end (text -> encoder -> model ->
probabilities) for every preset, with ONNX Runtime and with PyTorch eager, both on one thread.

Also measures this core's single-thread float32 matmul rate (numpy and torch sgemm) and counts each
model's FLOPs per event analytically (convolutions and dense layers), so each figure comes with the
share of the FLOP ceiling it reaches. Times are CPU seconds of this (single-threaded) process, so
"events/s" means per second of one core even when other processes share the machine. Rows are real:
command lines from tldr and Atomic Red Team, HTML pages from every file in shared/data/html. Models
are freshly initialised: speed does not depend on the weights.

Run:  .venv/bin/python benchmarks/bench_student_inference.py [--quick | --smoke] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import SHARED, Results  # noqa: E402

from smallsec_ray.export import OnnxScorer, export_onnx  # noqa: E402
from smallsec_ray.students import build_student, student_config  # noqa: E402
from smallsec_ray.students.folder import Lineage, ModelConfig  # noqa: E402

DATA = SHARED
HEADER = ("| model | preset | params | L | MFLOP/event | batch | encode only ev/s | ONNX Runtime ev/s "
          "| ORT % of ceiling | torch eager ev/s | torch % of ceiling |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
PRESETS = ("default", "small", "tiny")
CLASSES = ["benign", "malicious"]


def load_cmdlines(data: Path, rows: int) -> list[str]:
    benign = pd.read_json(data / "cmdline" / "tldr.jsonl.gz", lines=True).text
    malicious = pd.read_json(data / "cmdline" / "atomic_red_team.jsonl", lines=True).text
    mixed = pd.concat([benign.sample(frac=1, random_state=0), malicious.sample(frac=1, random_state=0)])
    return mixed.sample(n=min(rows, len(mixed)), random_state=0).tolist()


def load_pages(data: Path, rows: int) -> list[str]:
    pages = pd.concat([pd.read_json(path, lines=True).html for path in sorted((data / "html").glob("*.jsonl.gz"))])
    return pages.sample(n=min(rows, len(pages)), random_state=0).tolist()


def matmul_flops(size: int = 1024, seconds: float = 1.0) -> dict[str, float]:
    """Best single-thread sgemm rate (FLOP/s) of numpy and of torch on this core."""
    a, b = np.random.default_rng(0).standard_normal((2, size, size), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    return {"numpy": best_rate(lambda: a @ b, 2 * size**3, seconds),
            "torch": best_rate(lambda: torch.mm(ta, tb), 2 * size**3, seconds)}


def best_rate(work: Callable[[], object], units: float, seconds: float) -> float:
    work()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.process_time()
        work()
        best = max(best, units / (time.process_time() - start))
    return best


def events_per_second(score: Callable[[Sequence[str]], np.ndarray], texts: list[str], batch_size: int,
                      seconds: float) -> float:
    """Passes over `texts` in batches until `seconds` of CPU time have gone by (at least one pass), after
    a warm-up."""
    score(texts[:batch_size])
    events, start = 0, time.process_time()
    while True:
        for i in range(0, len(texts), batch_size):
            score(texts[i: i + batch_size])
        events += len(texts)
        elapsed = time.process_time() - start
        if elapsed >= seconds:
            return events / elapsed


def bench_preset(model_name: str, preset: str, texts: list[str], batch_sizes: Sequence[int], seconds: float,
                 peak: float, workdir: Path) -> list[str]:
    student, encoder = build_student(model_name, preset, len(CLASSES))
    student.eval()
    config = ModelConfig(student_config(student), encoder.config(), CLASSES, Lineage(job="bench"),
                         thresholds={"malicious": 0.5})
    export = export_onnx(student, config, workdir / f"{model_name}-{preset}", texts[:64])
    scorer = OnnxScorer(export.model_dir, intra_op_num_threads=1, batch_size=max(batch_sizes))

    def torch_score(batch: Sequence[str]) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(student(torch.from_numpy(encoder.encode(batch))), dim=-1).numpy()

    params = sum(p.numel() for p in student.parameters())
    flops = student.flops_per_event()
    length = encoder.encode([""]).shape[1]
    rows = []
    for batch in batch_sizes:
        encode = events_per_second(encoder.encode, texts, batch, seconds)
        onnx = events_per_second(scorer.predict_proba, texts, batch, seconds)
        eager = events_per_second(torch_score, texts, batch, seconds)
        rows.append(f"| {model_name} | {preset} | {params:,} | {length} | {flops / 1e6:.2f} | {batch} | "
                    f"{encode:,.0f} | {onnx:,.0f} | {100 * onnx * flops / peak:.1f}% | "
                    f"{eager:,.0f} | {100 * eager * flops / peak:.1f}% |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rows, short timings (about a minute)")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--smoke", action="store_true", help="the tiny presets, a few rows, 0.1 s timings: checks "
                        "that the benchmark runs (results go to a temporary folder)")
    args = parser.parse_args()
    seconds, cmd_rows, html_rows = (0.5, 256, 64) if args.quick else (3.0, 2000, 2000)
    presets: tuple[str, ...] = PRESETS
    if args.smoke:
        seconds, cmd_rows, html_rows, presets = 0.1, 64, 16, ("tiny",)
    results = Results("bench_student_inference", smoke=args.smoke)

    torch.set_num_threads(1)
    with threadpool_limits(limits=1), tempfile.TemporaryDirectory() as tmp:
        rates = matmul_flops(seconds=0.2 if args.smoke else 1.0 if args.quick else 3.0)
        peak = max(rates.values())
        ceiling = (f"single-thread sgemm 1024^3: numpy {rates['numpy'] / 1e9:.1f} GFLOP/s, "
                   f"torch {rates['torch'] / 1e9:.1f} GFLOP/s; ceiling = {peak / 1e9:.1f} GFLOP/s\n")
        print(ceiling + "\n" + HEADER)
        workloads = [("char_cnn", load_cmdlines(args.data, cmd_rows)), ("html_hier", load_pages(args.data, html_rows))]
        rows = [row for model_name, texts in workloads for preset in presets
                for row in bench_preset(model_name, preset, texts, args.batch_sizes, seconds, peak, Path(tmp))]
    path = results.write({"sgemm_flops": rates, "rows": rows}, markdown=ceiling + "\n" + HEADER + "\n" +
                         "\n".join(rows) + "\n")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
