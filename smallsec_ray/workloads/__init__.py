"""The workloads as stage lists, one module each, named after the spec's `workload` key.
`stages_for(spec)` is the one place that maps a workload to its stages."""

from __future__ import annotations

from smallsec_ray.errors import SpecError
from smallsec_ray.spec import JobSpec
from smallsec_ray.stages import Stage


def stages_for(spec: JobSpec) -> list[Stage]:
    if spec.workload == "distill":
        from smallsec_ray.workloads.distill import STAGES

        return STAGES
    if spec.workload == "semi_supervised":
        from smallsec_ray.workloads.semi_supervised import STAGES

        return STAGES
    if spec.workload == "synthetic":
        from smallsec_ray.workloads.synthetic import STAGES

        return STAGES
    raise SpecError(f"workload: {spec.workload!r} is not one of distill, semi_supervised, synthetic")
