"""Run one job spec to the end: check its inputs, start or join Ray, run the workload's stages, say where
the results are. This and the CLI are the only places that start Ray."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ray

from smallsec_ray import console, storage
from smallsec_ray.data.io import expand_paths
from smallsec_ray.errors import SpecError
from smallsec_ray.runtime import init_ray
from smallsec_ray.spec import URI, JobSpec, load_spec
from smallsec_ray.stages import RunFolder, make_run_dir, run_stages
from smallsec_ray.teachers.bundled import BUNDLED
from smallsec_ray.workloads import stages_for


def load_job(path: str | Path, check_files: bool = True) -> JobSpec:
    """A spec file, validated; with check_files, also the files and folders it names."""
    spec = load_spec(path)
    if check_files:
        check_inputs(spec, str(path))
    return spec


def check_inputs(spec: JobSpec, source: str = "spec") -> None:
    """Raises SpecError listing every input shard entry that matches nothing and every model folder
    that is missing (skip this for a spec meant for another machine's storage)."""
    problems = []
    for key in ("labelled", "noisy", "unlabelled", "test"):
        for i, entry in enumerate(getattr(spec.data, key)):
            try:
                expand_paths([entry])
            except FileNotFoundError as err:
                problems.append(f"  data.{key}.{i}: {err}")
    if not (spec.data.labelled or spec.data.noisy or spec.data.unlabelled):
        problems.append("  data: no input shards; give at least one of data.labelled, data.noisy, data.unlabelled")
    model = spec.teacher.model
    if URI.match(model):
        problems.append(f"  teacher.model: {model!r} is a URI; vLLM and transformers load a local folder: copy "
                        f"the model to a path every node has, or use {' / '.join(BUNDLED)}")
    elif model not in BUNDLED and not (Path(model).expanduser() / "config.json").is_file():
        problems.append(f"  teacher.model: {model!r} is not a Hugging Face model folder (no config.json); give a "
                        f"local model folder or {' / '.join(BUNDLED)}")
    init_from = spec.student.init_from
    if init_from and not any((Path(init_from) / sub / "config.json").is_file() for sub in ("", "model")):
        problems.append(f"  student.init_from: {init_from!r} is not a student model folder (no config.json)")
    if problems:
        raise SpecError("\n".join([f"{source}: {len(problems)} error(s) in the job spec", *problems]))


def run_job(spec: JobSpec, force_from: str | None = None, until: str | None = None) -> dict[str, Any]:
    """Runs the spec's workload; returns the results of the stages that ran or were skipped, by name.

    The console shows a line per stage and epoch and a labelling progress line; everything else goes
    to <output>/job.log (console.job_console)."""
    stages = stages_for(spec)
    folder = RunFolder.at(spec.output)  # an object-store output gets a local folder for what the driver writes
    run_dir = folder.local
    make_run_dir(run_dir)
    (run_dir / "spec.resolved.json").write_text(json.dumps(spec.public_dump(), indent=2))
    with console.job_console(run_dir) as out:
        where = "" if console.verbose() else f", log {run_dir / console.LOG_FILE}"
        local = f" (this machine's files in {run_dir})" if folder.remote else ""
        out.line(f"job {spec.name!r}: workload {spec.workload}, {len(stages)} stages, output "
                 f"{folder.store}{local}{where}")
        started = init_ray(spec.resources.address, spec.resources.num_cpus, spec.resources.dashboard)
        try:
            with console.relaying(out):
                results = run_stages(spec, stages, folder, force_from=force_from, until=until, echo=out.line)
        finally:
            if started:  # inside the console: the workers' last lines reach the log, not the terminal
                ray.shutdown()
            folder.sync()  # the log and the report, also after a failure
        if (run_dir / "report.md").is_file():
            out.line(f"report: {storage.join(folder.store, 'report.md')}")
    return results
