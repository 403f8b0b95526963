"""A run is a list of named stages. Each writes its outputs and a manifest under `<output>/<stage>/`;
a rerun skips every stage whose manifest says complete for the same inputs, so a run that died resumes.

A stage is complete for the same inputs when its fingerprint matches: the hash of the spec sections it
reads plus the run ids of the stages before it (a stage that reran makes every later stage rerun).
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smallsec_ray.errors import StageError
from smallsec_ray.spec import JobSpec

MANIFEST = "manifest.json"


@dataclass
class StageOutput:
    """What a stage reports: row counts (checked: rows_in = rows_out + rows_quarantined) and outputs."""

    counts: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    spec: JobSpec
    run_dir: Path
    stage_dir: Path
    manifests: dict[str, dict]  # manifests of the stages before this one, by name

    def outputs_of(self, stage: str) -> dict[str, Any]:
        if stage not in self.manifests:
            raise StageError(f"stage {self.stage_dir.name!r} needs the outputs of stage {stage!r}, which has not run")
        return self.manifests[stage]["outputs"]


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[StageContext], StageOutput]
    reads: tuple[str, ...]  # top-level spec sections whose change makes this stage rerun
    about: str = ""


def read_manifest(stage_dir: Path) -> dict | None:
    path = stage_dir / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def check_accounting(name: str, counts: dict[str, Any]) -> None:
    """rows_in = rows_out + rows_quarantined, at the top level and in every nested count block."""
    blocks = [("", counts)] + [(f"{k}.", v) for k, v in counts.items() if isinstance(v, dict)]
    for prefix, block in blocks:
        if "rows_in" in block:
            out, bad = block.get("rows_out", 0), block.get("rows_quarantined", 0)
            if block["rows_in"] != out + bad:
                raise StageError(f"stage {name!r}: {prefix}rows_in={block['rows_in']} but "
                                 f"rows_out={out} + rows_quarantined={bad}: rows were lost; this is a bug")


def run_stages(spec: JobSpec, stages: list[Stage], run_dir: Path, force_from: str | None = None,
               until: str | None = None, echo: Callable[[str], None] = print) -> dict[str, dict]:
    """Runs the stages in order, skipping complete ones; returns every stage's manifest by name."""
    names = [s.name for s in stages]
    for option, value in (("--from", force_from), ("--until", until)):
        if value is not None and value not in names:
            raise StageError(f"{option} {value!r} is not a stage of workload {spec.workload!r}; stages: {names}")
    run_dir.mkdir(parents=True, exist_ok=True)
    manifests: dict[str, dict] = {}
    forcing = False
    previous_run_id = ""
    for i, stage in enumerate(stages, 1):
        forcing = forcing or stage.name == force_from
        stage_dir = run_dir / stage.name
        fingerprint = f"{spec.fingerprint(*stage.reads)}:{previous_run_id}"
        old = read_manifest(stage_dir)
        tag = f"[{i}/{len(stages)}] {stage.name}"
        if old and old.get("status") == "complete" and old.get("fingerprint") == fingerprint and not forcing:
            echo(f"{tag}: complete (ran {old['finished']}), skipped")
        else:
            if old is not None and stage_dir.exists():
                # A finished stage with other inputs (or forced): its outputs are stale. A stage dir with no
                # manifest is a run that died; it is kept so that the stage can resume from what it wrote.
                shutil.rmtree(stage_dir)
            why = "forced" if forcing else "inputs changed" if old else "resuming" if stage_dir.exists() else ""
            echo(f"{tag}: running{f' ({why})' if why else ''} - {stage.about}")
            old = _run_one(spec, stage, run_dir, stage_dir, fingerprint, manifests)
            echo(f"{tag}: done in {old['seconds']:.1f}s {_summary(old['counts'])}")
        manifests[stage.name] = old
        previous_run_id = old["run_id"]
        if stage.name == until:
            break
    return manifests


def _run_one(spec: JobSpec, stage: Stage, run_dir: Path, stage_dir: Path, fingerprint: str,
             manifests: dict[str, dict]) -> dict:
    stage_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result = stage.run(StageContext(spec, run_dir, stage_dir, dict(manifests)))
    check_accounting(stage.name, result.counts)
    manifest = {
        "stage": stage.name,
        "status": "complete",
        "run_id": uuid.uuid4().hex[:12],
        "fingerprint": fingerprint,
        "started": _iso(started),
        "finished": _iso(time.time()),
        "seconds": round(time.time() - started, 2),
        "counts": result.counts,
        "outputs": result.outputs,
    }
    tmp = stage_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(stage_dir / MANIFEST)
    return manifest


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _summary(counts: dict[str, Any]) -> str:
    if "rows_in" not in counts:
        return ""
    return (f"(rows in {counts['rows_in']:,}, out {counts.get('rows_out', 0):,}, "
            f"quarantined {counts.get('rows_quarantined', 0):,})")
