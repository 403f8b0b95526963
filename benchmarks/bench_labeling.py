"""Teacher labelling throughput: the Ray Data pipeline (label_shards, 1 replica) against the same vLLM engine
called in a plain loop (make_teacher + label_shard per shard, one process), vLLM against Hugging Face on the
same model and rows, and the bytes each labelled row takes on disk.

    .venv/bin/python benchmarks/bench_labeling.py --quick     # 4 shards x 500 rows, ~1.5 min on 2 cores
    .venv/bin/python benchmarks/bench_labeling.py             # 8 shards x 1,000 rows, ~3 min
    .venv/bin/python benchmarks/bench_labeling.py --smoke     # 2 shards x 100 rows, a tiny teacher: the code runs

The teacher is bundled:all-minilm-l6-v2 with a fresh, seeded 2-class head (benign/malicious): speed does not
depend on the weights, so it is not fine-tuned. Rows are real: command lines from tldr and NL2Bash, URLs from
Tranco and URLhaus (../shared/data, or --data), written as Parquet shards in the canonical schema, command-line
and URL shards alternating.

Each engine runs in its own subprocess (`--part pipeline|loop|hf`; vLLM allows one in-process engine per
process). "Whole call" is the call as a user makes it, engine start included (for the pipeline: label_shards
with Ray already up; Ray's own start is shown apart). "Steady" is rows of all shards but the first finished
over the time from the first shard's output to the last one's (file mtimes), so engine start and warm-up are
left out on both sides alike. The backend rows time Teacher.probs on every text in chunks of --batch-size,
after a warm-up chunk. Every engine runs --threads torch threads (OMP_NUM_THREADS; the pipeline's replica
asks Ray for as many CPUs, from which Ray sets the same variable). Numbers swing with other load on the
machine (on 2 cores, Ray's own processes compete with a 2-thread engine): each part's 1-minute load average
before and after is printed with it; compare rates only between parts that ran under similar load.
Writes benchmarks/bench_labeling.{json,md} (--smoke: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

PROCESS_START = time.perf_counter()  # before the imports below, which the pipeline's replica pays in its actor
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import SHARED, Results, table, tiny_teacher  # noqa: E402

from smallsec_ray.data.schema import CANONICAL_SCHEMA, GROUP, ID, LABEL, SOURCE, TEXT  # noqa: E402
from smallsec_ray.labeling import PROBS_DIR, label_shard, label_shards  # noqa: E402
from smallsec_ray.runtime import apply_env_defaults  # noqa: E402
from smallsec_ray.teachers.backends import make_teacher  # noqa: E402
from smallsec_ray.teachers.bundled import resolve_model  # noqa: E402

CLASSES = ["benign", "malicious"]
TEACHER = "bundled:all-minilm-l6-v2"
CMDLINE_FILES = ["tldr.jsonl.gz", "nl2bash.jsonl"]
URL_FILES = ["tranco_top100k.csv", "urlhaus.csv"]
PARTS = ("pipeline", "loop", "hf")


def read_cmdlines(data: Path, rows: int, seed: int) -> pd.DataFrame:
    frame = pd.concat(pd.read_json(data / "cmdline" / f, lines=True)[["text", "label", "source"]]
                      for f in CMDLINE_FILES)
    frame = frame.sample(rows, replace=rows > len(frame), random_state=seed)
    return frame.assign(group=frame["text"].str.split().str[0].fillna(""))  # the command's program


def read_urls(data: Path, rows: int, seed: int) -> pd.DataFrame:
    frame = pd.concat(pd.read_csv(data / "url" / f, usecols=["url", "label"]).assign(source=Path(f).stem)
                      for f in URL_FILES)
    frame = frame.rename(columns={"url": "text"}).sample(rows, replace=rows > len(frame), random_state=seed)
    return frame.assign(group=[urlsplit(u).hostname or "" for u in frame["text"]])


def write_shards(data: Path, folder: Path, shards: int, rows: int) -> dict[str, str]:
    """`shards` canonical Parquet shards of `rows` rows, command lines and URLs alternating; returns
    shard path -> artifact."""
    half = (shards + 1) // 2
    frames = {"cmdline": read_cmdlines(data, half * rows, seed=0), "url": read_urls(data, half * rows, seed=0)}
    folder.mkdir(parents=True)
    artifacts = {}
    for i in range(shards):
        artifact = "cmdline" if i % 2 == 0 else "url"
        part = frames[artifact].iloc[(i // 2) * rows:(i // 2 + 1) * rows]
        table = pa.table({ID: [f"{artifact}-{i}-{j}" for j in range(len(part))], TEXT: part["text"].tolist(),
                          LABEL: part["label"].tolist(), SOURCE: part["source"].tolist(),
                          GROUP: part["group"].tolist()}, schema=CANONICAL_SCHEMA)
        path = folder / f"part-{i:05d}.parquet"
        pq.write_table(table, path)
        artifacts[str(path)] = artifact
    return artifacts


def write_teacher(folder: Path, smoke: bool) -> str:
    """MiniLM with a new seeded 2-class head, saved as a safetensors sequence-classifier folder (smoke: the
    tiny BERT classifier); returns what the report calls it."""
    if smoke:
        tiny_teacher(folder, CLASSES)
        return "tiny 2-layer BERT classifier (tests/tiny_models.py)"
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = resolve_model(TEACHER)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(CLASSES), id2label=dict(enumerate(CLASSES)),
        label2id={c: i for i, c in enumerate(CLASSES)})
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return f"{TEACHER} (fresh 2-class head)"


def teacher_cfg(work: Path, backend: str, max_length: int) -> dict:
    return {"kind": "classifier", "backend": backend, "model": str(work / "teacher"), "max_length": max_length,
            "dtype": "float32", "artifact": "cmdline"}


def steady_rate(outputs: list[Path]) -> float:
    """Rows of all shards but the first finished, per second from the first output's mtime to the last's."""
    finished = sorted(outputs, key=lambda p: p.stat().st_mtime)
    span = finished[-1].stat().st_mtime - finished[0].stat().st_mtime
    rows = sum(pq.read_metadata(p).num_rows for p in finished[1:])
    return rows / span if span > 0 else float("nan")


def all_texts(work: Path) -> list[str]:
    return [t for p in sorted((work / "shards").glob("*.parquet")) for t in pq.read_table(p)[TEXT].to_pylist()]


def timed_probs(teacher, texts: list[str], batch_size: int) -> tuple[np.ndarray, float]:
    """Teacher.probs over `texts` in chunks of batch_size, after one warm-up chunk; (probs, seconds)."""
    teacher.probs(texts[:batch_size])
    started = time.perf_counter()
    probs = np.concatenate([teacher.probs(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
    return probs, time.perf_counter() - started


def part_pipeline(work: Path, args: argparse.Namespace) -> dict:
    from smallsec_ray.runtime import init_ray

    started = time.perf_counter()
    init_ray()
    ray_start = time.perf_counter() - started
    shards = sorted(str(p) for p in (work / "shards").glob("*.parquet"))
    out = work / "out-pipeline"
    started = time.perf_counter()
    result = label_shards(shards, str(out), teacher_cfg(work, "vllm", args.max_length), CLASSES, replicas=1,
                          cpus_per_replica=args.threads, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    return {"rows": result.rows.rows_out, "seconds": seconds, "ray_start": ray_start,
            "steady": steady_rate([Path(s.output) for s in result.shards])}


def part_loop(work: Path, args: argparse.Namespace) -> dict:
    shards = sorted(str(p) for p in (work / "shards").glob("*.parquet"))
    out = work / "out-loop"
    cfg = teacher_cfg(work, "vllm", args.max_length)
    started = time.perf_counter()
    teacher = make_teacher(**{k: v for k, v in cfg.items() if k != "model"}, model_dir=cfg["model"], classes=CLASSES)
    engine_start = time.perf_counter() - started
    results = [label_shard(teacher, s, out, args.batch_size) for s in shards]
    seconds = time.perf_counter() - started
    probs, probs_seconds = timed_probs(teacher, all_texts(work), args.batch_size)
    np.save(work / "probs-vllm.npy", probs)
    teacher.close()
    return {"rows": sum(r.rows_labelled for r in results), "seconds": seconds, "engine_start": engine_start,
            "imports": started - PROCESS_START,
            "steady": steady_rate([Path(r.output) for r in results]), "probs_rows": len(probs),
            "probs_seconds": probs_seconds}


def part_hf(work: Path, args: argparse.Namespace) -> dict:
    cfg = teacher_cfg(work, "hf", args.max_length)
    teacher = make_teacher(**{k: v for k, v in cfg.items() if k != "model"}, model_dir=cfg["model"], classes=CLASSES)
    probs, seconds = timed_probs(teacher, all_texts(work), args.batch_size)
    np.save(work / "probs-hf.npy", probs)
    teacher.close()
    return {"probs_rows": len(probs), "probs_seconds": seconds}


def run_part(part: str, work: Path, args: argparse.Namespace) -> dict:
    """Runs one part in a fresh Python process (one engine per process) and returns its measurements."""
    command = [sys.executable, __file__, "--part", part, "--work", str(work), "--max-length", str(args.max_length),
               "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    print(f"running part {part} ...", flush=True)
    # The same thread count everywhere: Ray would set OMP_NUM_THREADS from the replica's CPUs anyway.
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    return json.loads((work / f"{part}.json").read_text())


def bytes_per_row(work: Path, artifacts: dict[str, str]) -> list[tuple[str, int, float, float]]:
    """Per artifact: labelled rows, input bytes/row, labelled (pipeline output) bytes/row."""
    table = []
    for artifact in ("cmdline", "url"):
        inputs = [Path(p) for p, a in artifacts.items() if a == artifact]
        outputs = [work / "out-pipeline" / PROBS_DIR / p.name for p in inputs]
        rows = sum(pq.read_metadata(p).num_rows for p in outputs)
        table.append((artifact, rows, sum(p.stat().st_size for p in inputs) / rows,
                      sum(p.stat().st_size for p in outputs) / rows))
    return table


def report(args: argparse.Namespace, teacher: str, results: dict[str, dict], sizes: list, max_diff: float) -> str:
    """The benchmark's tables (Markdown), with what ran and how loaded the machine was."""
    pipe, loop, hf = results["pipeline"], results["loop"], results["hf"]
    lines = [f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, `{shlex.join(['python', *sys.argv])}`", "",
             f"{teacher}, vLLM pooling runner, float32, max_length {args.max_length}, batch {args.batch_size}; "
             f"{args.shards} shards x {args.rows:,} rows (command lines and URLs alternating); {args.threads} torch "
             f"thread(s) per engine (the pipeline's replica has {args.threads} CPUs); {os.cpu_count()} cores, load "
             f"average {os.getloadavg()[0]:.1f} at the end", ""]
    pipe_rate, loop_rate = pipe["rows"] / pipe["seconds"], loop["rows"] / loop["seconds"]
    # The replica imports torch, pyarrow and the labelling code in its actor, inside the pipeline's whole call;
    # the loop's process imported them before its timer started.
    with_imports = loop["seconds"] + loop["imports"]
    lines.append(table(
        ["labelling path", "rows", "whole call s", "rows/s whole call", "rows/s steady", "load avg"],
        [[f"plain loop: make_teacher + label_shard per shard, 1 process (engine start {loop['engine_start']:.1f} s)",
          f"{loop['rows']:,}", f"{loop['seconds']:.1f}", f"{loop_rate:,.0f}", f"{loop['steady']:,.0f}", loop["load"]],
         [f"Ray Data label_shards, 1 replica (Ray start {pipe['ray_start']:.1f} s, not counted)", f"{pipe['rows']:,}",
          f"{pipe['seconds']:.1f}", f"{pipe_rate:,.0f}", f"{pipe['steady']:,.0f}", pipe["load"]],
         ["**pipeline / loop**", "", "", f"**{pipe_rate / loop_rate:.2f}x**",
          f"**{pipe['steady'] / loop['steady']:.2f}x** (goal >= 0.90)", ""],
         [f"pipeline / loop with its process's imports ({loop['imports']:.1f} s)", "", f"{with_imports:.1f}",
          f"**{pipe_rate / (loop['rows'] / with_imports):.2f}x**", "", ""]],
        right=(1, 2, 3, 4)))
    vllm_rate = loop["probs_rows"] / loop["probs_seconds"]
    hf_rate = hf["probs_rows"] / hf["probs_seconds"]
    lines.append(table(
        ["backend: Teacher.probs, same model and rows, after warm-up", "rows", "s", "rows/s", "vs HF", "load avg"],
        [["Hugging Face transformers", f"{hf['probs_rows']:,}", f"{hf['probs_seconds']:.1f}", f"{hf_rate:,.0f}",
          "1.00x", hf["load"]],
         ["vLLM", f"{loop['probs_rows']:,}", f"{loop['probs_seconds']:.1f}", f"{vllm_rate:,.0f}",
          f"{vllm_rate / hf_rate:.2f}x", f"{loop['load']} (whole loop part)"]],
        right=(1, 2, 3, 4)))
    lines += [f"max |p_vLLM - p_HF| over all rows and classes: {max_diff:.2e}", ""]
    lines.append(table(["artifact", "labelled rows", "input B/row", "labelled B/row", "added by labelling"],
                       [[artifact, f"{rows:,}", f"{before:.1f}", f"{after:.1f}", f"{after / before:.2f}x"]
                        for artifact, rows, before, after in sizes], right=(1, 2, 3, 4)))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 shards x 500 rows")
    parser.add_argument("--smoke", action="store_true", help="2 shards x 100 rows, the tiny teacher, max_length 32, "
                        "every part: checks that the benchmark runs (results go to a temporary folder)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1_000, help="rows per shard")
    parser.add_argument("--data", type=Path, default=SHARED, help="the shared data folder")
    parser.add_argument("--max-length", type=int, default=128, help="teacher max_length (tokens)")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per teacher call")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of every engine: OMP_NUM_THREADS, and the pipeline replica's CPUs")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    apply_env_defaults()
    if args.part:
        part = {"pipeline": part_pipeline, "loop": part_loop, "hf": part_hf}[args.part]
        load_before = os.getloadavg()[0]
        measured = part(args.work, args)
        # Other work on the machine skews a part: its 1-minute load average before and after goes with it.
        measured["load"] = f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}"
        (args.work / f"{args.part}.json").write_text(json.dumps(measured))
        return
    if args.quick:
        args.shards, args.rows = 4, 500
    if args.smoke:
        args.shards, args.rows, args.max_length = 2, 100, 32
    out = Results("bench_labeling", smoke=args.smoke)
    with tempfile.TemporaryDirectory(prefix="bench-labeling-") as tmp:
        work = Path(tmp)
        artifacts = write_shards(args.data, work / "shards", args.shards, args.rows)
        teacher = write_teacher(work / "teacher", args.smoke)
        results = {part: run_part(part, work, args) for part in PARTS}
        max_diff = float(np.abs(np.load(work / "probs-vllm.npy") - np.load(work / "probs-hf.npy")).max())
        sizes = bytes_per_row(work, artifacts)
        text = report(args, teacher, results, sizes, max_diff)
    print("\n" + text)
    figures = {"teacher": teacher, "shards": args.shards, "rows_per_shard": args.rows, "max_length": args.max_length,
               "batch_size": args.batch_size, "threads": args.threads, "parts": results, "max_abs_diff": max_diff,
               "bytes_per_row": [{"artifact": a, "rows": n, "input": before, "labelled": after}
                                 for a, n, before, after in sizes]}
    print(f"results: {out.write(figures, markdown=text)}")


if __name__ == "__main__":
    main()
