"""`smallsec`: a thin command line over the library. Errors are printed as messages, not tracebacks."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from smallsec_ray.errors import SmallsecError, SpecError

DESCRIPTION = """\
smallsec: use large models to train small, fast security classifiers (command lines, URLs, HTML), on Ray.

A job spec (YAML) names the workload, the data, the teacher, the student and the resources.
Typical use:
  smallsec demo-data demo-data                 # a small synthetic data set for a first run
  smallsec validate jobs/local/distill.yaml    # check a spec, print it resolved
  smallsec run jobs/local/distill.yaml         # run it here, on an embedded Ray
  smallsec submit jobs/cluster/distill.yaml --address http://HEAD:8265   # run it on a Ray cluster
  smallsec spec-reference                      # every spec key, its type, default and meaning
"""


def _cmd_validate(args: argparse.Namespace) -> int:
    from smallsec_ray.job import load_job
    from smallsec_ray.workloads import stages_for

    spec = load_job(args.spec, check_files=not args.skip_file_checks, overrides=_overrides(args))
    stages = stages_for(spec)
    print(json.dumps(spec.public_dump(), indent=2))
    print(f"\n{args.spec}: valid. Workload {spec.workload}: stages " + " -> ".join(s.name for s in stages),
          file=sys.stderr)
    return 0


def _overrides(args: argparse.Namespace) -> dict:
    """--set KEY=VALUE pairs, then --output and --reuse, as spec overrides (dotted key -> value)."""
    from smallsec_ray.spec import parse_override

    overrides = dict(parse_override(text) for text in args.set or [])
    if getattr(args, "output", None):
        overrides["output"] = args.output
    if getattr(args, "reuse", None):
        overrides["reuse_from"] = list(args.reuse)
    return overrides


def _cmd_spec_reference(args: argparse.Namespace) -> int:
    from smallsec_ray.spec import spec_reference

    print(spec_reference())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from smallsec_ray.job import load_job, run_job

    spec = load_job(args.spec, overrides=_overrides(args))
    run_job(spec, force_from=args.from_stage, until=args.until)
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    if args.auth_token_file:  # before Ray is imported: it reads its authentication settings once
        if not Path(args.auth_token_file).is_file():
            raise SpecError(f"submit: --auth-token-file {args.auth_token_file}: no such file; `ray get-auth-token` "
                            "prints where the cluster's token is")
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(Path(args.auth_token_file).resolve()))
    from smallsec_ray.runtime import submit_job
    from smallsec_ray.spec import load_spec, resource_requests, spec_variables

    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SpecError("submit: no cluster address; pass --address http://HEAD:8265 or set RAY_ADDRESS")
    # Schema errors fail here; paths are left to the cluster, where the data, models and output live.
    spec = load_spec(args.spec, _overrides(args))
    sent, secret, unset = spec_variables(args.spec)
    extra = []
    for flag, value in (("--from", args.from_stage), ("--until", args.until), ("--output", args.output)):
        if value:
            extra += [flag, value]
    for text in args.set or []:
        extra += ["--set", text]
    for run in args.reuse or []:
        extra += ["--reuse", run]
    print(f"{args.spec}: valid (paths are checked on the cluster, where they live)")
    if sent or secret or unset:
        print("  variables sent with the job: " + (", ".join(sorted(sent)) or "none")
              + (f"; secret, set them on the cluster: {', '.join(secret)}" if secret else "")
              + (f"; not set here (validated with the spec's defaults; a value the cluster sets wins there): "
                 f"{', '.join(unset)}" if unset else ""))
    for line in resource_requests(spec):
        print(f"  asks for {line}")
    job_id = submit_job(args.spec, address, working_dir=args.working_dir, extra_args=extra, pip=args.pip,
                        env_vars=sent)
    print(f"submitted job {job_id} to {address}")
    print(f"  follow:  ray job logs --address {address} --follow {job_id}")
    print(f"  status:  ray job status --address {address} {job_id}")
    print(f"  stop:    ray job stop --address {address} {job_id}")
    if not args.wait:
        return 0
    return _follow(address, job_id)


def _follow(address: str, job_id: str) -> int:
    import asyncio

    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    status = client.get_job_status(job_id)
    print(f"job {job_id}: {status.value}")
    return 0 if status == JobStatus.SUCCEEDED else 1


def _cmd_local_cluster(args: argparse.Namespace) -> int:
    import time

    from smallsec_ray.autoscaling import LocalAutoscalingCluster

    if not Path(args.config).is_file():
        raise SpecError(f"local-cluster: {args.config}: no such launcher config; name one of cluster/*.yaml")
    cluster = LocalAutoscalingCluster(args.config, idle_timeout_s=args.idle_timeout, cpus=args.cpus,
                                      max_workers=args.max_workers)
    print(f"starting an autoscaling Ray cluster with the node types of {args.config} (fake provider: every node "
          f"is a raylet on this machine, {args.cpus:g} CPU each, no GPUs) ...", flush=True)
    with cluster:
        print(f"up: head {cluster.gcs_address}, dashboard {cluster.address}; its log: {cluster.folder}")
        print(f"  watch:   watch -n 2 ray status --address {cluster.gcs_address}")
        print(f"  submit:  GPUS_PER_WORKER=0 CPUS_PER_WORKER=1 TEACHER_WORKERS=1 STUDENT_WORKERS=1 "
              f"smallsec submit jobs/cluster/distill.yaml --address {cluster.address} --wait")
        print(f"idle workers go after {args.idle_timeout:g} s; Ctrl-C stops the cluster", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping the cluster")
    return 0


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from smallsec_ray.data.demo import write_demo_data

    written = write_demo_data(args.dir, seed=args.seed, scale=args.scale)
    n = sum(len(v) for v in written.values())
    print(f"wrote {n} demo shards under {Path(args.dir).resolve()} (synthetic data, for the demo only)")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from smallsec_ray.export import score_file

    return score_file(args.model_dir, args.file, column=args.column, output=args.output, fp32=args.fp32)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smallsec", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def stage_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--from", dest="from_stage", metavar="STAGE",
                       help="rerun this stage and every stage after it, even if complete")
        p.add_argument("--until", metavar="STAGE", help="stop after this stage")
        p.add_argument("--output", metavar="DIR", help="write the run here instead of the spec's `output`")
        spec_options(p)

    def spec_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one spec key, as if the "
                       "file said so (the value is YAML), e.g. --set training.epochs=3 --set "
                       "'data.noise={mode: rows, flip_rates: {malicious: 0.3}}'; may be given several times")
        p.add_argument("--reuse", action="append", metavar="RUN", help="an earlier run's output folder whose "
                       "complete stages this run takes where their keys and inputs are the same, instead of "
                       "running them again (spec key reuse_from); may be given several times")

    p = sub.add_parser("run", help="run a job spec on an embedded Ray on this machine (or resources.address)",
                       description="Run a job spec. Each stage writes its outputs and a manifest under the "
                       "output folder; a rerun skips complete stages, so a run that died resumes.")
    p.add_argument("spec", help="path of the YAML job spec")
    stage_options(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("submit", help="submit a job spec to a Ray cluster through the Ray Jobs API",
                       description="Submit `smallsec run SPEC` as a Ray job. The current folder travels as the "
                       "job's working dir; the spec path must be relative to it, and the spec's data and output "
                       "must be reachable from the cluster (shared storage or s3:// / gs:// URIs).")
    p.add_argument("spec", help="path of the YAML job spec, relative to the working dir")
    p.add_argument("--address", help="the cluster's dashboard address, e.g. http://127.0.0.1:8265 through `ray "
                   "dashboard CLUSTER.yaml` (default: $RAY_ADDRESS)")
    p.add_argument("--working-dir", default=".", help="folder sent to the cluster (default: this folder)")
    p.add_argument("--pip", nargs="*", metavar="REQ", help="pip requirements to install on the cluster for "
                   "this job (default: none, the cluster image has them)")
    p.add_argument("--wait", action="store_true", help="follow the job's logs until it ends; exit 1 if it failed")
    p.add_argument("--auth-token-file", metavar="FILE", help="the cluster's token file, for a cluster with token "
                   "authentication (default: Ray's own lookup: $RAY_AUTH_TOKEN, then ~/.ray/auth_token)")
    stage_options(p)
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("validate", help="check a job spec; print it resolved (with defaults) or every error",
                       description="Check a job spec: unknown keys, wrong types, bad values and missing files "
                       "are reported with their key path. On success print the resolved spec as JSON.")
    p.add_argument("spec", help="path of the YAML job spec")
    p.add_argument("--skip-file-checks", action="store_true", help="don't check that input files and folders "
                   "exist (a spec for a cluster whose storage this machine cannot see)")
    spec_options(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("spec-reference", help="print every job spec key with its type, default and meaning")
    p.set_defaults(func=_cmd_spec_reference)

    p = sub.add_parser("local-cluster", help="start an autoscaling Ray cluster on this machine, with a launcher "
                       "config's node types, to watch a job scale",
                       description="Start Ray's fake multi-node provider on this machine: the head and the node "
                       "types of a launcher config (cluster/aws.yaml), each worker type with --cpus CPUs, no GPUs "
                       "and its custom resources (teacher_gpu, trainer_gpu), from its min_workers. The autoscaler "
                       "adds a node (a raylet here) when a stage asks for what a type offers and removes it when "
                       "idle. Stops, with every node it started, on Ctrl-C. See cluster/README.md.")
    p.add_argument("config", nargs="?", default="cluster/aws.yaml", help="launcher config whose node types to "
                   "take (default: cluster/aws.yaml)")
    p.add_argument("--idle-timeout", type=float, default=60, metavar="S", help="seconds an idle worker node "
                   "stays (default 60; the shipped config says 10 minutes)")
    p.add_argument("--cpus", type=int, default=1, help="CPUs of each worker node (default 1)")
    p.add_argument("--max-workers", type=int, default=2, help="at most this many nodes per type (default 2: each "
                   "node is a raylet of this machine)")
    p.set_defaults(func=_cmd_local_cluster)

    p = sub.add_parser("demo-data", help="write a small synthetic telemetry set (for the demo job only)",
                       description="Write synthetic command lines, URLs and HTML pages (labelled, noisily "
                       "labelled, unlabelled and test parts, in Parquet, JSONL and CSV shards) to DIR. "
                       "The noisy part's labels are wrong by whole families, as signatures are: whole malicious "
                       "groups holding 30% of its malicious rows are labelled benign, whole benign groups holding "
                       "10% of its benign rows malicious; its true_label column keeps the truth for the label audit.")
    p.add_argument("dir", help="folder to write into")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--scale", type=float, default=1.0, help="size multiplier (default 1.0)")
    p.set_defaults(func=_cmd_demo_data)

    p = sub.add_parser("score", help="score a file of artifacts with an exported student (ONNX Runtime)",
                       description="Score every row of FILE (a text file with one artifact per line, or a "
                       "JSONL/CSV/Parquet shard) with the exported model in MODEL_DIR, as an endpoint would.")
    p.add_argument("model_dir", help="a shipped student model folder, as the export stage writes it "
                   "(<run>/export/model: model.onnx, config.json)")
    p.add_argument("file", help="artifacts to score")
    p.add_argument("--column", default="text", help="column holding the artifact in JSONL/CSV/Parquet input")
    p.add_argument("--output", help="write scores as JSONL here (default: print to stdout)")
    p.add_argument("--fp32", action="store_true", help="run the fp32 graph even when the folder has an int8 "
                   "one that passed its agreement check (export.int8)")
    p.set_defaults(func=_cmd_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as err:
        # Ray wraps errors raised in tasks (a RayTaskError that is also a DataError prints the remote
        # traceback as its message): ours are shown as their one-line message.
        cause = getattr(err, "cause", None)
        message = cause if isinstance(cause, SmallsecError) else err
        if not isinstance(message, SmallsecError):
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
