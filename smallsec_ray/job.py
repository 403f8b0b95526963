"""Run one job spec to the end: start or join Ray, run the workload's stages, say where results are."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from smallsec_ray.runtime import init_ray
from smallsec_ray.spec import JobSpec
from smallsec_ray.stages import run_stages
from smallsec_ray.workflows import stages_for


def run_job(spec: JobSpec, force_from: str | None = None, until: str | None = None,
            echo: Callable[[str], None] = print) -> dict[str, dict]:
    """Runs the spec's workload; returns the manifests of the stages that ran or were skipped."""
    stages = stages_for(spec)
    run_dir = Path(spec.output).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.resolved.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
    echo(f"job {spec.name!r}: workload {spec.workload}, {len(stages)} stages, output {run_dir.resolve()}")
    init_ray(spec.resources.address, spec.resources.num_cpus, spec.resources.dashboard)
    manifests = run_stages(spec, stages, run_dir, force_from=force_from, until=until, echo=echo)
    report = run_dir / "report.md"
    if report.is_file():
        echo(f"report: {report.resolve()}")
    echo(f"stage manifests: {run_dir.resolve()}/<stage>/manifest.json")
    return manifests
