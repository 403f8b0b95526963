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

A run's output (`RunFolder`) is a local folder, a shared mount or an object-store URI. Work that Ray
spreads over the cluster (prepared and labelled shards, generated candidates, training checkpoints)
writes to the output directly (`ctx.store(...)`); what the driver itself makes (models, reports, the
log) is written to a local folder, which is the output itself when that is local, and is uploaded
after the stage (`RunFolder.sync`). A stage's manifest is written last, after its files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_type_hints

from pydantic import TypeAdapter

from smallsec_ray import storage
from smallsec_ray.data.accounting import RowCounts
from smallsec_ray.errors import StageError
from smallsec_ray.placement import StageWatch
from smallsec_ray.spec import JobSpec

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

MANIFEST = "manifest.json"
STARTED = "started.json"  # the fingerprint a stage was started with: a run that died resumes only under it


UPLOADED = ".uploaded.json"  # in a remote output's local folder: what was uploaded (size, mtime per file)


@dataclass
class RunFolder:
    """Where a run's files go: `store` is the output (a local folder or a URI), `local` this machine's
    folder for what the driver writes: the output itself when it is local, else a cache folder mirrored
    to the store by `sync`."""

    store: str
    local: Path

    @classmethod
    def at(cls, output: str | Path) -> RunFolder:
        store = storage.resolve(output)
        return cls(store, storage.local_folder(store) if storage.is_remote(store) else Path(store))

    @property
    def remote(self) -> bool:
        return storage.is_remote(self.store)

    def sync(self) -> int:
        """Uploads the local files that are new or changed since the last sync (manifests last); returns
        how many. A no-op for a local output."""
        if not self.remote:
            return 0
        index_path = self.local / UPLOADED
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
        changed = []
        for path in sorted(self.local.rglob("*")):
            relative = path.relative_to(self.local).as_posix()
            if path.is_file() and path.name != UPLOADED and ".tmp" not in path.name:
                stat = path.stat()
                if index.get(relative) != [stat.st_size, stat.st_mtime_ns]:
                    changed.append((path.name == MANIFEST, relative, [stat.st_size, stat.st_mtime_ns]))
        for _, relative, stamp in sorted(changed):  # manifests after every other file
            storage.upload(self.local / relative, storage.join(self.store, relative))
            index[relative] = stamp
            index_path.write_text(json.dumps(index))
        return len(changed)


@dataclass
class StageContext:
    spec: JobSpec
    run_dir: Path  # this machine's folder of the run (see RunFolder.local)
    stage_dir: Path  # this machine's folder of the stage: what the driver writes goes here
    input_runs: dict[str, str] = field(default_factory=dict)  # stage name -> run id, of the stages it takes
    store_root: str = ""  # the run's output (RunFolder.store); "" means run_dir
    sync: Callable[[], int] = lambda: 0  # uploads what the driver wrote so far (RunFolder.sync)

    @property
    def store_dir(self) -> str:
        """The stage's folder in the output: where work spread over the cluster writes (shards, checkpoints)."""
        return self.store(self.stage_dir.name)

    def store(self, relative: str) -> str:
        """A path from a stage result (relative to the run folder) in the output: what Ray tasks, Ray Data and
        Ray Train read and write. A stage reused from another run (spec.reuse_from) names its files by a whole
        location, or by a path that leaves this run's folder (../base/label/...)."""
        if storage.is_uri(relative) or os.path.isabs(relative):
            return relative
        joined = storage.join(self.store_root or str(self.run_dir), relative)
        return storage.normalise(joined) if relative.startswith("..") else joined

    def path(self, relative: str) -> Path:
        """A path from a stage result as a local path (a model folder, a report), fetched from the output if
        this machine has no copy (the run was started elsewhere)."""
        if storage.is_uri(relative):
            return storage.local_copy(relative)  # a file of another run, in an object store
        local = Path(os.path.normpath(self.run_dir / relative))
        self.fetch(local)
        return local

    def fetch(self, local: Path) -> bool:
        """Whether a file under the run folder exists, on this machine or in the output (then fetched): what a
        stage that resumes on another machine reads back."""
        if local.exists():
            return True
        if not storage.is_remote(self.store_root):
            return False
        remote = self.store_of(local)
        if not storage.exists(remote):
            return False
        storage.download(remote, local)
        return True

    def store_of(self, local: str | Path) -> str:
        """The output's location of a local path under the run folder (the same for a local output)."""
        return self.store(self.relative(local))

    def relative(self, path: str | Path) -> str:
        """A path under the run folder (local, or in the output) as stage results keep it."""
        if self.store_root and storage.is_uri(path):
            try:
                return storage.relative_to(path, self.store_root)
            except ValueError:
                return str(path)  # another run's file (a reused stage's), named whole
        return os.path.relpath(Path(path).resolve(), self.run_dir.resolve())


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[..., Any]  # run(ctx, **inputs) -> a result dataclass
    reads: tuple[str, ...]  # dotted spec keys whose change makes this stage rerun
    inputs: Mapping[str, str] = field(default_factory=dict)  # argument name -> stage whose result it takes
    about: str = ""

    @cached_property
    def result_type(self) -> type[DataclassInstance]:
        return get_type_hints(self.run)["return"]


def run_stages(spec: JobSpec, stages: list[Stage], output: str | Path | RunFolder, force_from: str | None = None,
               until: str | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the stages in order, skipping complete ones; returns every stage's result by stage name."""
    folder = output if isinstance(output, RunFolder) else RunFolder.at(output)
    run_dir = folder.local
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
        store_dir = storage.join(folder.store, stage.name)
        reads = spec.values_at(stage.reads)
        inputs = {arg: run_ids[source] for arg, source in stage.inputs.items()}
        fingerprint = _fingerprint(reads, inputs)
        old = read_manifest(store_dir)
        tag = f"[{i}/{len(stages)}] {stage.name}"
        reused = None if forcing else _reused(spec.reuse_from, stage.name, fingerprint, folder, names)
        if old and old.get("status") == "complete" and old.get("fingerprint") == fingerprint and not forcing:
            echo(f"{tag}: complete (ran {old['finished']}), skipped")
        elif reused is not None:
            _remove_stale(folder, stage.name)
            _write_reused(folder, stage.name, reused)
            old = reused
            echo(f"{tag}: reused from {reused['reused_from']} (ran {reused['finished']})")
        else:
            # A stage folder without a manifest is a run that died: it is kept so that the stage resumes from
            # what it wrote, but only if it was started with the same keys and inputs. Anything else is stale.
            started = _read_json(storage.join(store_dir, STARTED))
            resuming = (old is None and not forcing and started is not None
                        and started.get("fingerprint") == fingerprint)
            why = "resuming" if resuming else _why(old or started, reads, inputs, forcing)
            if not resuming:
                _remove_stale(folder, stage.name)
            echo(f"{tag}: running{f' ({why})' if why else ''} - {stage.about}")
            args = {arg: results[source] for arg, source in stage.inputs.items()}
            ctx = StageContext(spec, run_dir, stage_dir, {s: run_ids[s] for s in stage.inputs.values()},
                               store_root=folder.store, sync=folder.sync)
            old = _run_one(stage, ctx, folder, fingerprint, reads, inputs, args)
            echo(f"{tag}: done in {old['seconds']:.1f}s" + _rows_note(old["result"], store_dir))
        results[stage.name] = TypeAdapter(stage.result_type).validate_python(old["result"])
        run_ids[stage.name] = old["run_id"]
        if stage.name == until:
            break
    return results


def _reused(sources: list[str], name: str, fingerprint: str, folder: RunFolder, names: list[str]) -> dict | None:
    """The manifest of stage `name` in the first of `sources` (spec.reuse_from) where it is complete with the same
    fingerprint, its result's paths made to point from this run into that one; None if no source has it."""
    for source in sources:
        root = storage.resolve(source)
        if root == folder.store:
            continue
        manifest = read_manifest(storage.join(root, name))
        if manifest and manifest.get("status") == "complete" and manifest.get("fingerprint") == fingerprint:
            return {**manifest, "reused_from": storage.join(root, name),
                    "result": _rebased(manifest["result"], root, folder.store, set(names))}
    return None


def _rebased(value: Any, source: str, target: str, stages: set[str]) -> Any:
    """A stage result of the run at `source` as the run at `target` names the same files. Results name files by
    paths relative to their run folder, and every such path starts with the stage folder that wrote it (or with
    ../ when it was itself reused); those are rewritten: relative to `target` when both runs are local folders,
    else as whole locations (URIs)."""
    if isinstance(value, dict):
        return {k: _rebased(v, source, target, stages) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebased(v, source, target, stages) for v in value]
    if not isinstance(value, str) or storage.is_uri(value) or os.path.isabs(value):
        return value
    head = value.split("/", 1)[0]
    if head not in stages and head != "..":
        return value
    if storage.is_uri(source) or storage.is_uri(target):
        return storage.normalise(storage.join(source, value))
    return os.path.relpath(os.path.normpath(os.path.join(source, value)), target)


def _write_reused(folder: RunFolder, name: str, manifest: dict) -> None:
    """A reused stage in this run: its manifest (and started.json, as the runner's own folders have), no files."""
    store_dir = storage.join(folder.store, name)
    (folder.local / name).mkdir(parents=True, exist_ok=True)
    storage.write_text(storage.join(store_dir, STARTED), json.dumps(
        {"fingerprint": manifest["fingerprint"], "reused_from": manifest["reused_from"]}))
    storage.write_text(storage.join(store_dir, MANIFEST), json.dumps(manifest, indent=2, default=str))


def make_run_dir(run_dir: Path) -> None:
    """Creates the run folder; a run holds raw telemetry (prepared and quarantined rows), so other users of
    the machine get no access to it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.chmod(run_dir.stat().st_mode & ~0o007)


def read_manifest(stage_dir: str | Path) -> dict | None:
    """A stage's manifest (the stage's folder, local or in the output), None if it has none."""
    return _read_json(storage.join(stage_dir, MANIFEST))


def _read_json(location: str) -> dict | None:
    return json.loads(storage.read_text(location)) if storage.is_file(location) else None


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


def _run_one(stage: Stage, ctx: StageContext, folder: RunFolder, fingerprint: str, reads: dict[str, Any],
             inputs: dict[str, str], args: dict[str, Any]) -> dict:
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    storage.write_text(storage.join(ctx.store_dir, STARTED), json.dumps(
        {"fingerprint": fingerprint, "reads": reads, "inputs": inputs, "started": _iso(started)}, default=str))
    with StageWatch(stage.name, ctx.spec.resources.scale_up_timeout) as watch:
        try:
            result = stage.run(ctx, **args)
        except KeyboardInterrupt:
            if watch.expired:  # the watch stopped a stage that waited too long for nodes
                raise StageError(watch.expired) from None
            raise
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
        "nodes": watch.nodes,  # node type -> most nodes of it the stage's work used at once
        "result_type": type(result).__name__,
        "result": asdict(result),
    }
    folder.sync()  # what the driver wrote, before the manifest that vouches for it
    storage.write_text(storage.join(ctx.store_dir, MANIFEST), json.dumps(manifest, indent=2, default=str))
    return manifest


def _rows_note(result: dict, stage_dir: str) -> str:
    """" (rows in 20, out 18, quarantined 2; 7 files skipped ...)" for a stage result with row counts."""
    rows = result.get("rows") if isinstance(result, dict) else None
    note = RowCounts(**rows).summary() if isinstance(rows, dict) else ""
    skipped = result.get("files_skipped") if isinstance(result, dict) else None
    if skipped:
        note += (f"; {len(skipped)} file(s) skipped as unreadable, their rows not counted above (which and why: "
                 f"{storage.join(stage_dir, MANIFEST)})")
    return f" ({note.lstrip('; ')})" if note else ""


def _remove_stale(folder: RunFolder, name: str) -> None:
    """Deletes a stage folder this tool wrote so that the stage runs afresh (in the output and this machine's
    copy). A folder of that name without the tool's started.json, or with files added after the stage finished
    (a user's notes), is refused instead."""
    if folder.remote:
        store_dir = storage.join(folder.store, name)
        if storage.list_files(store_dir) and not storage.is_file(storage.join(store_dir, STARTED)):
            raise StageError(f"{store_dir} holds files this tool did not write (no {STARTED}), and the stage "
                             "would replace it; move them, or give the job another output")
        storage.delete_dir(store_dir)
        shutil.rmtree(folder.local / name, ignore_errors=True)
        _forget_uploads(folder, name)
        return
    stage_dir = folder.local / name
    if not stage_dir.exists():
        return
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


def _forget_uploads(folder: RunFolder, name: str) -> None:
    index_path = folder.local / UPLOADED
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        index_path.write_text(json.dumps({k: v for k, v in index.items() if not k.startswith(name + "/")}))


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")
