"""Run one job spec to the end: check its inputs, start or join Ray, run the workload's stages, say where
the results are. This and the CLI are the only places that start Ray."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
from pydantic import TypeAdapter

from smallsec_ray import console, storage
from smallsec_ray.data.io import expand_paths
from smallsec_ray.errors import SpecError, StageError
from smallsec_ray.runtime import init_ray
from smallsec_ray.spec import URI, JobSpec, load_spec
from smallsec_ray.stages import RunFolder, make_run_dir, read_manifest, run_stages
from smallsec_ray.teachers.bundled import BUNDLED
from smallsec_ray.workloads import stages_for


def load_job(path: str | Path, check_files: bool = True, overrides: Mapping[str, Any] | None = None) -> JobSpec:
    """A spec file with `overrides` (dotted key -> value, see load_spec), validated; with check_files, also the
    files and folders it names."""
    spec = load_spec(path, overrides)
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


def run_job(spec: JobSpec, force_from: str | None = None, until: str | None = None) -> RunResults:
    """Runs the spec's workload; returns the typed results of the stages that ran, were skipped or were reused,
    by stage name.

    The console shows a line per stage and epoch and a labelling progress line; everything else goes
    to <output>/job.log (console.job_console)."""
    stages = stages_for(spec)
    folder = RunFolder.at(spec.output)  # an object-store output gets a local folder for what the driver writes
    run_dir = folder.local
    make_run_dir(run_dir)
    (run_dir / RESOLVED_SPEC).write_text(json.dumps(spec.public_dump(), indent=2))
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
    return RunResults(folder.store, spec, results)


RESOLVED_SPEC = "spec.resolved.json"


class RunResults(dict):
    """Stage name -> that stage's typed result, in the workload's order; `spec` is the run's resolved spec."""

    def __init__(self, output: str, spec: JobSpec, results: dict[str, Any]):
        super().__init__(results)
        self.output, self.spec = output, spec

    def location(self, path: str) -> str:
        """A file named by a stage result (relative to the run folder; a reused stage's may lead out of it, or be
        a whole location) as a location to read: a local path or a URI."""
        if storage.is_uri(path) or Path(path).is_absolute():
            return path
        return storage.normalise(storage.join(self.output, path))

    def seconds(self, stage: str) -> float:
        """How long the stage took when it ran (in the run that made its result, for a skipped or reused one)."""
        self[stage]  # a stage without a result: __missing__ says so
        manifest = read_manifest(storage.join(self.output, stage))
        if manifest is None:
            raise StageError(f"{self.output}: stage {stage!r} has no manifest")
        return float(manifest["seconds"])

    def __missing__(self, stage: str) -> Any:
        raise StageError(f"{self.output}: stage {stage!r} has no complete result (finished stages: "
                         f"{list(self) or 'none'}); run the job to the end first, e.g. smallsec run SPEC "
                         f"--output {self.output}")


def read_results(output: str | Path) -> RunResults:
    """The typed results of a run's finished stages (as run_job returns them), read back from its output folder
    (local or a URI): what a script that scores a finished run again takes, instead of its manifests' JSON. The
    stages come in the workload's order, up to the first that has not finished."""
    folder = RunFolder.at(output)
    resolved = storage.join(folder.store, RESOLVED_SPEC)
    if not storage.is_file(resolved):
        raise StageError(f"{output}: not a run folder (no {RESOLVED_SPEC}); give the output folder of a job")
    # The spec as the run saw it; secret values were written back as ${NAME} and stay so (nothing is expanded).
    spec = JobSpec.model_validate(json.loads(storage.read_text(resolved)))
    results: dict[str, Any] = {}
    for stage in stages_for(spec):
        manifest = read_manifest(storage.join(folder.store, stage.name))
        if not manifest or manifest.get("status") != "complete":
            break
        results[stage.name] = TypeAdapter(stage.result_type).validate_python(manifest["result"])
    return RunResults(folder.store, spec, results)
