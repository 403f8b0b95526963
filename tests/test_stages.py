"""The stage runner: complete stages are skipped on rerun, changed inputs and --from rerun, rows add up."""

from pathlib import Path

import pytest

from smallsec_ray.errors import StageError
from smallsec_ray.spec import parse_spec
from smallsec_ray.stages import Stage, StageOutput, run_stages


@pytest.fixture
def spec(tmp_path: Path):
    shard = tmp_path / "rows.jsonl"
    shard.write_text('{"text": "ls", "label": "benign"}\n')
    return parse_spec({"name": "t", "workload": "distill", "artifact": "cmdline",
                       "data": {"labelled": [str(shard)]}, "output": str(tmp_path / "run")})


def recording_stages(calls: list[str], fail_in: str | None = None) -> list[Stage]:
    def make(name: str):
        def run(ctx):
            calls.append(name)
            (ctx.stage_dir / "partial").write_text("x")
            if name == fail_in:
                raise RuntimeError("worker died")
            return StageOutput(counts={"rows_in": 3, "rows_out": 2, "rows_quarantined": 1}, outputs={"n": len(calls)})
        return run

    return [Stage("a", make("a"), reads=("data",)), Stage("b", make("b"), reads=("student",)),
            Stage("c", make("c"), reads=("evaluation",))]


def test_rerun_skips_complete_stages(spec):
    calls: list[str] = []
    run_stages(spec, recording_stages(calls), Path(spec.output), echo=lambda _: None)
    manifests = run_stages(spec, recording_stages(calls), Path(spec.output), echo=lambda _: None)
    assert calls == ["a", "b", "c"]
    assert manifests["c"]["counts"]["rows_in"] == 3


def test_changed_section_reruns_that_stage_and_the_ones_after(spec):
    calls: list[str] = []
    run_stages(spec, recording_stages(calls), Path(spec.output), echo=lambda _: None)
    changed = spec.model_copy(update={"student": spec.student.model_copy(update={"preset": "tiny"})})
    run_stages(changed, recording_stages(calls), Path(spec.output), echo=lambda _: None)
    assert calls == ["a", "b", "c", "b", "c"]


def test_force_from_reruns_from_that_stage(spec):
    calls: list[str] = []
    run_stages(spec, recording_stages(calls), Path(spec.output), echo=lambda _: None)
    run_stages(spec, recording_stages(calls), Path(spec.output), force_from="b", echo=lambda _: None)
    assert calls == ["a", "b", "c", "b", "c"]
    with pytest.raises(StageError, match="'z' is not a stage"):
        run_stages(spec, recording_stages(calls), Path(spec.output), force_from="z")


def test_a_stage_that_died_resumes_with_its_partial_outputs(spec):
    calls: list[str] = []
    with pytest.raises(RuntimeError):
        run_stages(spec, recording_stages(calls, fail_in="b"), Path(spec.output), echo=lambda _: None)
    stage_b = Path(spec.output) / "b"
    assert (stage_b / "partial").exists() and not (stage_b / "manifest.json").exists()
    lines: list[str] = []
    run_stages(spec, recording_stages(calls), Path(spec.output), echo=lines.append)
    assert calls == ["a", "b", "b", "c"]
    assert any("b: running (resuming)" in line for line in lines)


def test_lost_rows_fail_the_stage(spec):
    def leaky(ctx):
        return StageOutput(counts={"rows_in": 10, "rows_out": 8, "rows_quarantined": 1})

    with pytest.raises(StageError, match="rows were lost"):
        run_stages(spec, [Stage("leaky", leaky, reads=())], Path(spec.output), echo=lambda _: None)
    assert not (Path(spec.output) / "leaky" / "manifest.json").exists()
