"""The stage runner: complete stages are skipped on rerun, a changed key reruns exactly the stages that
read it (and those that take their results), --from reruns, rows add up, results come back typed."""

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest

from smallsec_ray.data.accounting import RowCounts
from smallsec_ray.errors import StageError
from smallsec_ray.spec import parse_spec
from smallsec_ray.stages import Stage, StageContext, run_stages
from smallsec_ray.workloads.distill import STAGES as DISTILL


@pytest.fixture
def spec(tmp_path: Path):
    shard = tmp_path / "rows.jsonl"
    shard.write_text('{"text": "ls", "label": "benign"}\n')
    return parse_spec({"name": "t", "workload": "distill", "artifact": "cmdline",
                       "data": {"labelled": [str(shard)]}, "output": str(tmp_path / "run")})


@dataclass
class Counted:
    rows: RowCounts
    calls: int


def recording_stages(calls: list[str], fail_in: str | None = None, found: list[str] | None = None) -> list[Stage]:
    def make(name: str):
        def run(ctx: StageContext, **inputs: Counted) -> Counted:
            calls.append(name)
            if found is not None and (ctx.stage_dir / "partial").exists():
                found.append(name)  # the stage found what an earlier run of it wrote
            (ctx.stage_dir / "partial").write_text("x")
            if name == fail_in:
                raise RuntimeError("worker died")
            assert all(isinstance(v, Counted) for v in inputs.values())  # results come back typed
            return Counted(RowCounts(3, 2, 1), len(calls))
        return run

    return [Stage("a", make("a"), reads=("data",)), Stage("b", make("b"), reads=("student",), inputs={"x": "a"}),
            Stage("c", make("c"), reads=("evaluation",), inputs={"x": "b"})]


def quiet(_: str) -> None:
    pass


def test_rerun_skips_complete_stages_and_reads_results_back_typed(spec):
    calls: list[str] = []
    run_stages(spec, recording_stages(calls), Path(spec.output), echo=quiet)
    results = run_stages(spec, recording_stages(calls), Path(spec.output), echo=quiet)
    assert calls == ["a", "b", "c"]
    assert results["c"] == Counted(RowCounts(3, 2, 1), 3)


def test_changed_key_reruns_that_stage_and_the_ones_using_its_result(spec):
    calls: list[str] = []
    run_stages(spec, recording_stages(calls), Path(spec.output), echo=quiet)
    changed = spec.model_copy(update={"student": spec.student.model_copy(update={"preset": "tiny"})})
    lines: list[str] = []
    run_stages(changed, recording_stages(calls), Path(spec.output), echo=lines.append)
    assert calls == ["a", "b", "c", "b", "c"]
    assert any("b: running (changed: student)" in line for line in lines)


def test_force_from_reruns_from_that_stage(spec):
    calls: list[str] = []
    run_stages(spec, recording_stages(calls), Path(spec.output), echo=quiet)
    run_stages(spec, recording_stages(calls), Path(spec.output), force_from="b", echo=quiet)
    assert calls == ["a", "b", "c", "b", "c"]
    with pytest.raises(StageError, match="'z' is not a stage"):
        run_stages(spec, recording_stages(calls), Path(spec.output), force_from="z")


def test_a_stage_that_died_resumes_with_its_partial_outputs(spec):
    calls: list[str] = []
    with pytest.raises(RuntimeError):
        run_stages(spec, recording_stages(calls, fail_in="b"), Path(spec.output), echo=quiet)
    stage_b = Path(spec.output) / "b"
    assert (stage_b / "partial").exists() and not (stage_b / "manifest.json").exists()
    lines: list[str] = []
    found: list[str] = []
    run_stages(spec, recording_stages(calls, found=found), Path(spec.output), echo=lines.append)
    assert calls == ["a", "b", "b", "c"]
    assert found == ["b"]
    assert any("b: running (resuming)" in line for line in lines)


def test_a_stage_that_died_under_other_keys_starts_afresh(spec):
    """A checkpoint written under other settings (another noise rate, another preset) must not be resumed."""
    calls: list[str] = []
    with pytest.raises(RuntimeError):
        run_stages(spec, recording_stages(calls, fail_in="b"), Path(spec.output), echo=quiet)
    changed = spec.model_copy(update={"student": spec.student.model_copy(update={"preset": "tiny"})})
    lines: list[str] = []
    found: list[str] = []
    run_stages(changed, recording_stages(calls, found=found), Path(spec.output), echo=lines.append)
    assert calls == ["a", "b", "b", "c"]
    assert found == []
    assert any("b: running (changed: student)" in line for line in lines)


def test_lost_rows_fail_the_stage(spec):
    def leaky(ctx: StageContext) -> Counted:
        return Counted(RowCounts(10, 8, 1), 0)

    with pytest.raises(StageError, match="rows were lost"):
        run_stages(spec, [Stage("leaky", leaky, reads=())], Path(spec.output), echo=quiet)
    assert not (Path(spec.output) / "leaky" / "manifest.json").exists()


def test_a_stage_graph_reading_an_unknown_key_is_refused(spec):
    with pytest.raises(StageError, match="'training.alpha' is not a job spec key"):
        run_stages(spec, [Stage("s", lambda ctx: None, reads=("training.alpha",))], Path(spec.output), echo=quiet)


# ---------------------------------------------------------------- the distill workload's own graph


def placeholder(cls: type) -> object:
    """An instance of a result dataclass with empty values (a stand-in for a real stage's result)."""
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _empty(hints[f.name]) for f in dataclasses.fields(cls)})


def _empty(kind: object) -> object:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return None
    if dataclasses.is_dataclass(kind):
        return placeholder(kind)
    return (origin or kind)()


def stand_ins(calls: list[str]) -> list[Stage]:
    """The distill stages with their real reads and inputs, running cheap stand-ins that record calls."""
    def make(stage: Stage):
        def run(ctx: StageContext, **inputs: object) -> object:
            calls.append(stage.name)
            return placeholder(stage.result_type)
        return run

    return [_with_run(stage, make(stage)) for stage in DISTILL]


def _with_run(stage: Stage, run) -> Stage:
    run.__annotations__ = {"return": stage.result_type}
    return dataclasses.replace(stage, run=run)


# One key edited at a time in a finished run -> the stages that must run again.
EDITS = [
    ({"distillation": {"alpha": 0.9}}, ["train_student", "export", "evaluate"]),
    ({"training": {"epochs": 9}}, ["train_student", "export", "train_baseline", "evaluate"]),
    ({"training": {"scaling": {"zero_stage": 2}}}, ["train_student", "export", "train_baseline", "evaluate"]),
    ({"teacher": {"finetune": {"epochs": 7}}}, ["finetune_teacher", "label", "train_student", "export", "evaluate"]),
    ({"teacher": {"finetune": {"scaling": {"workers": 1}}}},
     ["finetune_teacher", "label", "train_student", "export", "evaluate"]),
    ({"teacher": {"dtype": "bfloat16"}}, ["label", "train_student", "export", "evaluate"]),
    ({"labeling": {"on_too_long": "quarantine"}}, ["label", "train_student", "export", "evaluate"]),
    ({"labeling": {"replicas": 3, "cpus_per_replica": 0.5}}, []),
    ({"teacher": {"engine": {"max_num_seqs": 8}}}, []),
    ({"resources": {"num_cpus": 8}}, []),
    ({"student": {"preset": "tiny"}}, ["train_student", "export", "train_baseline", "evaluate"]),
    ({"evaluation": {"fprs": [0.05]}}, ["export", "evaluate"]),
    ({"evaluation": {"group_by": ["platform"]}}, ["evaluate"]),
    ({"data": {"split": {"seed": 3}}}, [s.name for s in DISTILL]),
    # Noise is applied where labels are read: a sweep reuses the prepared and scored shards.
    ({"data": {"noise": {"mode": "groups", "flip_rates": {"malicious": 0.3}}}},
     ["train_student", "export", "train_baseline", "evaluate"]),
]


def _merged(base: dict, edit: dict) -> dict:
    out = dict(base)
    for key, value in edit.items():
        out[key] = _merged(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


@pytest.mark.parametrize(("edit", "rerun"), EDITS, ids=[json.dumps(e) for e, _ in EDITS])
def test_editing_one_key_reruns_only_the_stages_it_affects(spec, edit, rerun):
    calls: list[str] = []
    run_stages(spec, stand_ins(calls), Path(spec.output), echo=quiet)
    assert calls == [s.name for s in DISTILL]
    edited = parse_spec(_merged(spec.model_dump(mode="json"), edit))
    calls.clear()
    run_stages(edited, stand_ins(calls), Path(spec.output), echo=quiet)
    assert calls == rerun


def test_a_rerun_never_deletes_files_the_tool_did_not_write(spec):
    run_dir = Path(spec.output)
    calls: list[str] = []
    run_stages(spec, recording_stages(calls), run_dir, echo=quiet)
    notes = run_dir / "b" / "notes.txt"
    notes.write_text("my notes")
    later = (run_dir / "b" / "manifest.json").stat().st_mtime + 5
    os.utime(notes, (later, later))
    changed = spec.model_copy(update={"student": spec.student.model_copy(update={"preset": "tiny"})})
    with pytest.raises(StageError, match=r"b holds 1 file\(s\) added after the stage finished \(notes.txt\)"):
        run_stages(changed, recording_stages(calls), run_dir, echo=quiet)
    assert notes.read_text() == "my notes"

    (run_dir / "c").rename(run_dir / "c-mine")  # a folder named like a stage, not written by the tool
    (run_dir / "c").mkdir()
    (run_dir / "c" / "data.csv").write_text("x")
    notes.unlink()
    with pytest.raises(StageError, match=r"c holds files this tool did not write \(no started.json\)"):
        run_stages(changed, recording_stages(calls), run_dir, echo=quiet)
    assert (run_dir / "c" / "data.csv").exists()


@dataclass
class Read:
    rows: RowCounts
    files_skipped: list[str]


def test_skipped_files_are_named_in_the_stage_line(spec):
    def read(ctx: StageContext) -> Read:
        return Read(RowCounts(20, 20, 0), ["bad-1.parquet", "bad-2.parquet"])

    lines: list[str] = []
    run_stages(spec, [Stage("prepare", read, reads=("data",))], Path(spec.output), echo=lines.append)
    assert any("(rows in 20, out 20, quarantined 0; 2 file(s) skipped as unreadable, their rows not counted above"
               in line for line in lines)


def test_a_run_folder_is_closed_to_other_users(spec):
    run_dir = Path(spec.output)
    run_dir.mkdir(parents=True)
    run_dir.chmod(0o777)
    run_stages(spec, recording_stages([]), run_dir, echo=quiet)
    assert run_dir.stat().st_mode & 0o777 == 0o770


@dataclass
class Written:
    path: str  # a file the stage wrote, relative to the run folder
    note: str = "teacher"  # not a path: left as it is when the result is reused


def writing_stages(calls: list[str]) -> list[Stage]:
    """Stage a writes a file and names it in its result; b and c read the file named by their input."""
    def first(ctx: StageContext) -> Written:
        calls.append("a")
        (ctx.stage_dir / "rows.txt").write_text("rows of a")
        return Written(ctx.relative(ctx.stage_dir / "rows.txt"))

    def make(name: str):
        def run(ctx: StageContext, x: Written) -> Written:
            calls.append(name)
            assert Path(ctx.store(x.path)).read_text().startswith("rows of"), x.path
            assert ctx.path(x.path).read_text().startswith("rows of")
            (ctx.stage_dir / "rows.txt").write_text(f"rows of {name}")
            return Written(ctx.relative(ctx.stage_dir / "rows.txt"), note=x.note)
        return run

    return [Stage("a", first, reads=("data",)), Stage("b", make("b"), reads=("student",), inputs={"x": "a"}),
            Stage("c", make("c"), reads=("evaluation",), inputs={"x": "b"})]


def test_reuse_from_takes_matching_stages_of_another_run_without_copying_them(spec, tmp_path):
    calls: list[str] = []
    first = tmp_path / "first"
    run_stages(spec, writing_stages(calls), first, echo=quiet)
    # Another configuration: another student, the same data. It reuses a; b and c run in its own folder.
    other = spec.model_copy(update={"student": spec.student.model_copy(update={"preset": "tiny"}),
                                    "reuse_from": [str(first)]})
    lines: list[str] = []
    results = run_stages(other, writing_stages(calls), tmp_path / "second", echo=lines.append)
    assert calls == ["a", "b", "c", "b", "c"]
    assert any(line.startswith("[1/3] a: reused from") and str(first / "a") in line for line in lines), lines
    assert not (tmp_path / "second" / "a" / "rows.txt").exists()  # nothing copied: the manifest points there
    assert results["a"] == Written("../first/a/rows.txt") and results["b"] == Written("b/rows.txt")
    manifest = json.loads((tmp_path / "second" / "a" / "manifest.json").read_text())
    assert manifest["reused_from"] == str(first / "a")
    # A run that reuses a run that reused: paths still lead to the files; the same spec reuses b and c too.
    third = other.model_copy(update={"reuse_from": [str(tmp_path / "second")]})
    results = run_stages(third, writing_stages(calls), tmp_path / "runs" / "third", echo=quiet)
    assert calls == ["a", "b", "c", "b", "c"]
    assert results["a"] == Written("../../first/a/rows.txt") and results["c"] == Written("../../second/c/rows.txt")
    # Rerun in place: complete, skipped (not reused again); a changed key reruns only what reads it.
    lines = []
    run_stages(third.model_copy(update={"evaluation": third.evaluation.model_copy(update={"audit_top_k": 5})}),
               writing_stages(calls), tmp_path / "runs" / "third", echo=lines.append)
    assert calls == ["a", "b", "c", "b", "c", "c"]
    assert any("a: complete" in line for line in lines) and any("c: running" in line for line in lines)


def test_reuse_from_does_not_take_a_stage_run_under_other_keys(spec, tmp_path):
    calls: list[str] = []
    run_stages(spec, writing_stages(calls), tmp_path / "first", echo=quiet)
    other_data = spec.model_copy(update={"data": spec.data.model_copy(update={"max_rows_per_shard": 5}),
                                         "reuse_from": [str(tmp_path / "first")]})
    run_stages(other_data, writing_stages(calls), tmp_path / "second", echo=quiet)
    assert calls == ["a", "b", "c", "a", "b", "c"]
