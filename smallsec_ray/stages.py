"""A run is a list of named stages. Each writes its outputs and a manifest under `<output>/<stage>/`;
a rerun skips every stage whose manifest says complete for the same inputs, and a stage that died resumes
from what it wrote if its keys and inputs are still the same (else its partial outputs are discarded).

A stage declares what it depends on, and nothing else makes it rerun:
* `reads`: the dotted spec keys it uses ("training", "teacher.finetune.epochs");
* `inputs`: the earlier stages whose results it takes, by argument name ({"model": "train_student"}).
Its fingerprint hashes the values of those keys and the run ids of those stages, so a change reruns
the stages that read it and, through their new run ids, the stages that use their results.

A stage function is `run(ctx, **inputs) -> Result`, where Result is a dataclass (its return annotation).
The manifest keeps the result as JSON and the next run reads it back typed; results name files by
paths relative to the run folder, so a finished run can be moved.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, get_type_hints

from pydantic import TypeAdapter

from smallsec_ray.data.accounting import RowCounts
from smallsec_ray.errors import StageError
from smallsec_ray.spec import JobSpec

MANIFEST = "manifest.json"
STARTED = "started.json"  # the fingerprint a stage was started with: a run that died resumes only under it


@dataclass
class StageContext:
    spec: JobSpec
    run_dir: Path
    stage_dir: Path
    input_runs: dict[str, str] = field(default_factory=dict)  # stage name -> run id, of the stages it takes

    def path(self, relative: str) -> Path:
        """A path from a stage result (relative to the run folder) as an absolute path."""
        return self.run_dir / relative

    def relative(self, path: str | Path) -> str:
        """A path under the run folder as stage results keep it."""
        return str(Path(path).resolve().relative_to(self.run_dir.resolve()))


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[..., Any]  # run(ctx, **inputs) -> a result dataclass
    reads: tuple[str, ...]  # dotted spec keys whose change makes this stage rerun
    inputs: Mapping[str, str] = field(default_factory=dict)  # argument name -> stage whose result it takes
    about: str = ""

    @cached_property
    def result_type(self) -> type:
        return get_type_hints(self.run)["return"]


def run_stages(spec: JobSpec, stages: list[Stage], run_dir: Path, force_from: str | None = None,
               until: str | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the stages in order, skipping complete ones; returns every stage's result by stage name."""
    _check_graph(spec, stages)
    names = [s.name for s in stages]
    for option, value in (("--from", force_from), ("--until", until)):
        if value is not None and value not in names:
            raise StageError(f"{option} {value!r} is not a stage of workload {spec.workload!r}; stages: {names}")
    make_run_dir(run_dir)
    results: dict[str, Any] = {}
    run_ids: dict[str, str] = {}
    forcing = False
    for i, stage in enumerate(stages, 1):
        forcing = forcing or stage.name == force_from
        stage_dir = run_dir / stage.name
        reads = spec.values_at(stage.reads)
        inputs = {arg: run_ids[source] for arg, source in stage.inputs.items()}
        fingerprint = _fingerprint(reads, inputs)
        old = read_manifest(stage_dir)
        tag = f"[{i}/{len(stages)}] {stage.name}"
        if old and old.get("status") == "complete" and old.get("fingerprint") == fingerprint and not forcing:
            echo(f"{tag}: complete (ran {old['finished']}), skipped")
        else:
            # A stage folder without a manifest is a run that died: it is kept so that the stage resumes from
            # what it wrote, but only if it was started with the same keys and inputs. Anything else is stale.
            started = _read_json(stage_dir / STARTED)
            resuming = (old is None and not forcing and started is not None
                        and started.get("fingerprint") == fingerprint)
            why = "resuming" if resuming else _why(old or started, reads, inputs, forcing)
            if stage_dir.exists() and not resuming:
                _remove_stale(stage_dir)
            echo(f"{tag}: running{f' ({why})' if why else ''} - {stage.about}")
            args = {arg: results[source] for arg, source in stage.inputs.items()}
            ctx = StageContext(spec, run_dir, stage_dir, {s: run_ids[s] for s in stage.inputs.values()})
            old = _run_one(stage, ctx, fingerprint, reads, inputs, args)
            echo(f"{tag}: done in {old['seconds']:.1f}s" + _rows_note(old["result"], stage_dir))
        results[stage.name] = TypeAdapter(stage.result_type).validate_python(old["result"])
        run_ids[stage.name] = old["run_id"]
        if stage.name == until:
            break
    return results


def make_run_dir(run_dir: Path) -> None:
    """Creates the run folder; a run holds raw telemetry (prepared and quarantined rows), so other users of
    the machine get no access to it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.chmod(run_dir.stat().st_mode & ~0o007)


def read_manifest(stage_dir: Path) -> dict | None:
    return _read_json(stage_dir / MANIFEST)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def check_rows(name: str, result: Any, where: str = "") -> None:
    """Every RowCounts inside a result (fields, dict values, list items) must add up."""
    if isinstance(result, RowCounts):
        result.check(f"stage {name!r}{where}")
    elif is_dataclass(result):
        for f in fields(result):
            check_rows(name, getattr(result, f.name), f"{where}.{f.name}")
    elif isinstance(result, dict):
        for key, value in result.items():
            check_rows(name, value, f"{where}.{key}")
    elif isinstance(result, list):
        for k, value in enumerate(result):
            check_rows(name, value, f"{where}[{k}]")


def _check_graph(spec: JobSpec, stages: list[Stage]) -> None:
    seen: set[str] = set()
    for stage in stages:
        try:
            spec.values_at(stage.reads)
        except KeyError as err:
            raise StageError(f"stage {stage.name!r} reads {err}; this is a bug in the workload") from None
        missing = set(stage.inputs.values()) - seen
        if missing:
            raise StageError(f"stage {stage.name!r} takes the results of {sorted(missing)}, which do not run "
                             "before it; this is a bug in the workload")
        seen.add(stage.name)


def _fingerprint(reads: dict[str, Any], inputs: dict[str, str]) -> str:
    blob = json.dumps({"reads": reads, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _why(old: dict | None, reads: dict[str, Any], inputs: dict[str, str], forcing: bool) -> str:
    """Why a stage runs, in a few words: forced, or which keys or inputs changed since it last ran."""
    if forcing:
        return "forced"
    if old is None:
        return ""
    changed = [k for k in reads if old.get("reads", {}).get(k) != reads[k]]
    changed += [f"results of {k}" for k in inputs if old.get("inputs", {}).get(k) != inputs[k]]
    return f"changed: {', '.join(changed)}" if changed else "inputs changed"


def _run_one(stage: Stage, ctx: StageContext, fingerprint: str, reads: dict[str, Any], inputs: dict[str, str],
             args: dict[str, Any]) -> dict:
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    (ctx.stage_dir / STARTED).write_text(json.dumps(
        {"fingerprint": fingerprint, "reads": reads, "inputs": inputs, "started": _iso(started)}, default=str))
    result = stage.run(ctx, **args)
    if not isinstance(result, stage.result_type):
        raise StageError(f"stage {stage.name!r} returned a {type(result).__name__}, not the "
                         f"{stage.result_type.__name__} it declares; this is a bug in the workload")
    check_rows(stage.name, result)
    manifest = {
        "stage": stage.name,
        "status": "complete",
        "run_id": uuid.uuid4().hex[:12],
        "fingerprint": fingerprint,
        "reads": reads,
        "inputs": inputs,
        "started": _iso(started),
        "finished": _iso(time.time()),
        "seconds": round(time.time() - started, 2),
        "result_type": type(result).__name__,
        "result": asdict(result),
    }
    tmp = ctx.stage_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(ctx.stage_dir / MANIFEST)
    return manifest


def _rows_note(result: dict, stage_dir: Path) -> str:
    """" (rows in 20, out 18, quarantined 2; 7 files skipped ...)" for a stage result with row counts."""
    rows = result.get("rows") if isinstance(result, dict) else None
    note = RowCounts(**rows).summary() if isinstance(rows, dict) else ""
    skipped = result.get("files_skipped") if isinstance(result, dict) else None
    if skipped:
        note += (f"; {len(skipped)} file(s) skipped as unreadable, their rows not counted above (which and why: "
                 f"{stage_dir / MANIFEST})")
    return f" ({note.lstrip('; ')})" if note else ""


def _remove_stale(stage_dir: Path) -> None:
    """Deletes a stage folder this tool wrote so that the stage runs afresh. A folder of that name without the
    tool's started.json, or with files added after the stage finished (a user's notes), is refused instead."""
    if not (stage_dir / STARTED).is_file() and any(stage_dir.iterdir()):
        raise StageError(f"{stage_dir} holds files this tool did not write (no {STARTED}), and the stage would "
                         "replace it; move them, or give the job another output folder")
    manifest = stage_dir / MANIFEST
    if manifest.is_file():
        finished = manifest.stat().st_mtime + 1.0
        added = [p for p in stage_dir.rglob("*") if p.is_file() and p.stat().st_mtime > finished]
        if added:
            names = ", ".join(str(p.relative_to(stage_dir)) for p in added[:3]) + (" ..." if len(added) > 3 else "")
            raise StageError(f"{stage_dir} holds {len(added)} file(s) added after the stage finished ({names}), and "
                             "the stage is about to run again and replace the folder; move them out first")
    shutil.rmtree(stage_dir)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")
