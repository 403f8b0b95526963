"""Teacher labelling on Ray Data: prepared Parquet shards in, the same shards with `probs` out.

The unit of work is a shard. A dataset of shard paths flows through `map_batches` into an actor pool;
each actor (a `ShardLabeller`) holds one teacher, reads its shard in batches of `batch_size` rows,
and writes one output shard, under a temporary name renamed into place once complete. So:

* an output shard exists only when all its rows are labelled: a run that dies loses at most the
  shards in flight, never leaves a partial one, and a rerun labels only the shards whose output is
  missing, so no row is ever labelled twice;
* a replica lost with its node is restarted (on a node that offers its resources) and its shard in
  flight labelled again from the start, under a new temporary name: the lost attempt's temporary
  files are deleted once every shard is done;
* every replica runs the same loop one would write by hand (teacher called on batch after batch),
  and rows never pass through the driver, so the pipeline keeps the engine's own rate; what Ray adds
  is a fixed start-up cost and the spread of shards over replicas.

Layout under `out_dir`: `probs/NAME.parquet` (input columns + probs + truncated) and, for rows set
aside (no text; over max_length with on_too_long="quarantine"), `quarantine/NAME.parquet` (input
columns + reason). Rows in = rows labelled + rows quarantined, for every shard.

Each replica posts its rows to the job's console as it goes (a progress line with rows/s and ETA).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy, DataContext

from smallsec_ray import console, storage
from smallsec_ray.data.accounting import RowCounts
from smallsec_ray.data.io import write_parquet_atomic
from smallsec_ray.data.schema import ID, META_CLASSES, META_TEACHER, PROBS, REASON, TEXT, TRUNCATED
from smallsec_ray.errors import DataError, StageError
from smallsec_ray.placement import check_request
from smallsec_ray.teachers.backends import Teacher, make_teacher, teacher_identity

OnTooLong = Literal["truncate", "quarantine"]
PROBS_DIR, QUARANTINE = "probs", "quarantine"
DERIVED = (PROBS, TRUNCATED, REASON)  # columns a previous labelling round added; replaced, not kept
# Identity fields that do not change the probabilities: a rerun may differ in them.
IDENTITY_FREE = ("model", "backend", "device", "engine")
# A replica whose node is lost comes back as often as it takes, and its shard in flight is labelled again
# (Ray Data's defaults today; said here because the no-row-lost promise rests on them). A shard labelled
# twice is written twice under the same name, never appended to.
REPLICA_FAULT_TOLERANCE: dict[str, Any] = {"max_restarts": -1, "max_task_retries": -1}


@dataclass
class ShardLabels:
    """One input shard and its labelled output."""

    input: str
    output: str
    quarantine: str | None
    rows_in: int
    rows_labelled: int
    rows_quarantined: int
    rows_truncated: int  # labelled rows the teacher saw truncated (on_too_long: truncate)
    skipped: bool = False  # labelled by an earlier run
    seconds: float = 0.0

    @property
    def rows(self) -> RowCounts:
        return RowCounts(self.rows_in, self.rows_labelled, self.rows_quarantined)


@dataclass
class LabelRun:
    """What `label_shards` did: every shard, in input order."""

    out_dir: str
    classes: list[str]
    teacher: dict
    shards: list[ShardLabels] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> RowCounts:
        return sum((s.rows for s in self.shards), RowCounts())

    @property
    def rows_truncated(self) -> int:
        return sum(s.rows_truncated for s in self.shards)

    @property
    def rows_per_s(self) -> float:
        """Rows this run labelled (earlier runs' shards excluded) per second of the whole call."""
        fresh = sum(s.rows_in for s in self.shards if not s.skipped)
        return fresh / self.seconds if self.seconds else 0.0


def label_shards(input_paths: list[str], out_dir: str, teacher_cfg: dict, classes: list[str],
                 replicas: int | tuple[int, int] = 1, cpus_per_replica: float = 1.0,
                 gpus_per_replica: float = 0.0, batch_size: int = 64,
                 on_too_long: OnTooLong = "truncate", name: str = "label",
                 resources: dict[str, float] | None = None) -> LabelRun:
    """Labels every input shard whose output is missing, with `replicas` teacher actors (a fixed count, or
    (min, max) for an autoscaling pool), and returns the row accounting of all shards. Each replica also
    requests the custom Ray `resources` (the teacher node group's, on a cluster).

    `teacher_cfg` holds the job spec's teacher keys (kind, backend, model, max_length, dtype,
    prompt_template, verbalizers, engine) and the artifact type. Ray must be up; on a cluster `out_dir`
    must be a filesystem every node writes to. Replicas with GPUs run vLLM's GPU settings, the others
    its CPU ones (runtime.CPU_ENGINE_ENV).
    """
    started = time.monotonic()
    device = "cuda" if gpus_per_replica > 0 else "cpu"
    teacher_args = teacher_args_for({**teacher_cfg, "device": device}, classes)
    identity = teacher_identity(**teacher_args)  # config errors surface here, not inside the actors
    out = str(out_dir)
    plan = _output_paths(input_paths, out)
    done: list[str] = []
    pending: list[str] = []
    for source, target in plan.items():
        (done if storage.is_file(target) else pending).append(source)
    results = {s: _finished_shard(s, out, classes, identity) for s in done}
    _remove_leftovers(out, [plan[s] for s in pending])
    if pending:
        check_request("labeling", "teacher replica", replica_bundle(cpus_per_replica, gpus_per_replica, resources),
                      min(min_replicas(replicas), len(pending)))
        with growing_pools():
            shards = ray.data.from_items([{"path": s} for s in pending], override_num_blocks=len(pending))
        labelled = shards.map_batches(
            ShardLabeller, batch_size=1, compute=actor_pool(replicas, len(pending)), num_cpus=cpus_per_replica,
            num_gpus=gpus_per_replica or None, resources=resources or None,
            fn_constructor_kwargs={"teacher_args": teacher_args, "out_dir": out, "batch_size": batch_size,
                                   "on_too_long": on_too_long, "relay": console.relay()},
            **REPLICA_FAULT_TOLERANCE)
        total_rows = sum(storage.read_metadata(s).num_rows for s in pending)
        progress = console.current()
        with progress.track(name, total_rows, len(pending)) if progress else nullcontext() as tracker:
            for row in labelled.iter_rows():
                # Ray hands back numpy scalars; the result must hold plain values (it becomes JSON).
                plain = {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}
                results[plain["input"]] = ShardLabels(**plain)
                if tracker:
                    tracker.shard_done()
        _remove_leftovers(out, [plan[s] for s in pending])  # of attempts lost with their node
    result = LabelRun(out, list(classes), identity, [results[s] for s in input_paths])
    result.seconds = time.monotonic() - started
    _check_accounting(result)
    return result


def average_runs(runs: list[LabelRun], out_dir: str | Path) -> LabelRun:
    """An ensemble's labels: for each input shard, the members' probabilities averaged into
    out_dir/probs/NAME.parquet (rows and their order are the same in every member's shard)."""
    started = time.monotonic()
    identity = {"ensemble": [run.teacher for run in runs]}
    out = str(out_dir)
    refs = [_average_shard.remote([s.output for s in shards], storage.join(out, PROBS_DIR, _name(shards[0].input)),
                                  identity, len(runs[0].classes))
            for shards in zip(*(run.shards for run in runs), strict=True)]
    ray.get(refs)
    first = runs[0]
    shards = [ShardLabels(s.input, storage.join(out, PROBS_DIR, _name(s.input)), s.quarantine, s.rows_in,
                          s.rows_labelled, s.rows_quarantined, s.rows_truncated,
                          skipped=all(run.shards[i].skipped for run in runs), seconds=s.seconds)
              for i, s in enumerate(first.shards)]
    result = LabelRun(out, first.classes, identity, shards, seconds=time.monotonic() - started)
    _check_accounting(result)
    return result


@ray.remote(num_cpus=0.5)
def _average_shard(members: list[str], target: str, identity: dict, num_classes: int) -> None:
    tables = [storage.read_table(path) for path in members]
    ids = tables[0][ID]
    for path, table in zip(members[1:], tables[1:], strict=True):
        if not table[ID].equals(ids):
            raise StageError(f"{path} holds other rows than {members[0]}; ensemble members must label the same "
                             "rows: delete the label stage's folder and run it again")
    mean = np.mean([np.asarray(t[PROBS].to_pylist(), np.float32).reshape(-1, num_classes) for t in tables], axis=0)
    probs = pa.FixedSizeListArray.from_arrays(pa.array(mean.ravel()), num_classes).cast(pa.list_(pa.float32()))
    table = tables[0].set_column(tables[0].schema.get_field_index(PROBS), PROBS, probs)
    metadata = {**(table.schema.metadata or {}), META_TEACHER: json.dumps(identity, sort_keys=True).encode()}
    write_parquet_atomic(table, target, metadata)


def teacher_args_for(teacher_cfg: dict, classes: list[str]) -> dict:
    """make_teacher's arguments from the spec's teacher keys (`model` is make_teacher's `model_dir`)."""
    args = {k: v for k, v in teacher_cfg.items() if k != "model"}
    return {**args, "model_dir": teacher_cfg["model"], "classes": list(classes)}


def replica_bundle(cpus: float, gpus: float, resources: dict[str, float] | None) -> dict[str, float]:
    """What one teacher replica reserves, as Ray's resource names."""
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **(resources or {})}


def min_replicas(replicas: int | tuple[int, int]) -> int:
    return replicas if isinstance(replicas, int) else replicas[0]


@contextmanager
def growing_pools() -> Iterator[None]:
    """Datasets made inside take their actor pools to grow while every replica is busy and inputs wait.
    Ray Data grows a pool when its tasks in flight reach 1.75x its size (DataContext's default); with one
    shard in flight per replica (actor_pool) they never pass 1x, and a [min, max] pool would stay at min."""
    context = DataContext.get_current()
    saved = context.autoscaling_config
    # a new object: a dataset keeps a shallow copy of the context, and with it this config
    context.autoscaling_config = replace(saved, actor_pool_util_upscaling_threshold=1.0)
    try:
        yield
    finally:
        context.autoscaling_config = saved


def actor_pool(replicas: int | tuple[int, int], shards: int) -> ActorPoolStrategy:
    """No more replicas than shards (each would start an engine for nothing), and one shard in flight
    per replica: a shard queued behind a busy replica would wait while another one idles."""
    if isinstance(replicas, int):
        return ActorPoolStrategy(size=min(replicas, shards), max_tasks_in_flight_per_actor=1)
    low, high = replicas
    return ActorPoolStrategy(min_size=min(low, shards), max_size=min(high, shards), max_tasks_in_flight_per_actor=1)


class ShardLabeller:
    """A Ray Data actor holding one teacher; each call labels whole shards and returns their accounting."""

    def __init__(self, teacher_args: dict, out_dir: str, batch_size: int, on_too_long: OnTooLong,
                 relay: Any = None) -> None:
        self.teacher = make_teacher(**teacher_args)
        self.out_dir = out_dir
        self.batch_size = batch_size
        self.on_too_long = on_too_long
        self.relay = relay

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [asdict(label_shard(self.teacher, str(path), self.out_dir, self.batch_size, self.on_too_long,
                                   lambda n: console.post_rows(self.relay, n)))
                for path in batch["path"]]
        return {key: [row[key] for row in rows] for key in rows[0]}


def label_shard(teacher: Teacher, source: str, out_dir: str | Path, batch_size: int = 64,
                on_too_long: OnTooLong = "truncate", on_rows: Callable[[int], None] | None = None) -> ShardLabels:
    """Labels one shard with a loaded teacher: writes probs/NAME.parquet (and quarantine/NAME.parquet
    when rows are set aside), each renamed into place once complete, quarantine first. `on_rows` hears
    of every batch done (progress)."""
    started = time.monotonic()
    target = storage.join(out_dir, PROBS_DIR, _name(source))
    quarantine_target = storage.join(out_dir, QUARANTINE, _name(source))
    storage.delete_file(quarantine_target)  # left by an attempt that died before its labelled shard
    reader = _open_shard(source)
    base = pa.schema([f for f in reader.schema_arrow if f.name not in DERIVED])
    metadata = {**(reader.schema_arrow.metadata or {}), META_CLASSES: json.dumps(teacher.classes).encode(),
                META_TEACHER: json.dumps(teacher.identity(), sort_keys=True).encode()}
    labelled = _AtomicWriter(target, base.append(pa.field(PROBS, pa.list_(pa.float32())))
                             .append(pa.field(TRUNCATED, pa.bool_())).with_metadata(metadata))
    quarantined = _AtomicWriter(quarantine_target, base.append(pa.field(REASON, pa.string()))
                                .with_metadata(metadata))
    rows_in = 0
    try:
        for batch in reader.iter_batches(batch_size=batch_size, columns=base.names):
            table = pa.Table.from_batches([batch])
            rows_in += table.num_rows
            good, bad = _label_batch(teacher, table, on_too_long)
            labelled.write(good)
            quarantined.write(bad)
            if on_rows:
                on_rows(table.num_rows)
        labelled.ensure_open()  # an empty shard still gets its (empty) output: it is done
        quarantined.commit()
        labelled.commit()
    finally:
        labelled.discard()
        quarantined.discard()
    return ShardLabels(source, target, quarantine_target if quarantined.rows else None, rows_in,
                       labelled.rows, quarantined.rows, labelled.truncated, seconds=time.monotonic() - started)


def _label_batch(teacher: Teacher, table: pa.Table, on_too_long: OnTooLong) -> tuple[pa.Table, pa.Table]:
    """Splits a batch into labelled rows (+ probs, truncated) and quarantined rows (+ reason)."""
    texts = table[TEXT].to_pylist()
    present = np.array([t is not None for t in texts], bool)
    probs = np.zeros((len(texts), len(teacher.classes)), np.float32)
    truncated = np.zeros(len(texts), bool)
    if present.any():
        probs[present], truncated[present] = teacher.probs_with_flags([t for t in texts if t is not None])
    keep = present & ~truncated if on_too_long == "quarantine" else present
    reasons = np.where(present, f"text is over the teacher's max_length of {teacher.max_length} tokens "
                       "(labeling.on_too_long: quarantine)", "text is missing")
    probs_column = pa.FixedSizeListArray.from_arrays(pa.array(probs[keep].ravel()), len(teacher.classes))
    good = (table.filter(pa.array(keep)).append_column(PROBS, probs_column.cast(pa.list_(pa.float32())))
            .append_column(TRUNCATED, pa.array(truncated[keep])))
    bad = table.filter(pa.array(~keep)).append_column(REASON, pa.array(reasons[~keep], pa.string()))
    return good, bad


class _AtomicWriter:
    """A Parquet file that appears at `target` (a local path or a URI) on commit, whole (storage.open_output);
    opened on the first rows."""

    def __init__(self, target: str, schema: pa.Schema) -> None:
        self.target = target
        self.schema = schema
        self.output: Any = None  # the storage.open_output context
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0
        self.truncated = 0

    def ensure_open(self) -> pq.ParquetWriter:
        if self.writer is None:
            self.output = storage.open_output(self.target)
            self.writer = pq.ParquetWriter(self.output.__enter__(), self.schema)
        return self.writer

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self.ensure_open().write_table(table.cast(self.schema))
            self.rows += table.num_rows
            if TRUNCATED in table.column_names:
                self.truncated += int(table[TRUNCATED].to_numpy().sum())

    def commit(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.output.__exit__(None, None, None)

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            error = StageError(f"{self.target}: not written")
            self.output.__exit__(StageError, error, None)  # the file never appears


def _open_shard(source: str) -> pq.ParquetFile:
    try:
        reader = storage.parquet_file(source)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{source}: cannot read this Parquet shard ({err}); re-run the prepare stage") from None
    if TEXT not in reader.schema_arrow.names:
        raise DataError(f"{source}: no {TEXT!r} column (columns: {reader.schema_arrow.names}); label only "
                        "shards written by the prepare stage")
    return reader


def _name(source: str) -> str:
    """A shard's file name (labelled shards are named after their input)."""
    return source.rstrip("/").rsplit("/", 1)[-1]


def _output_paths(input_paths: list[str], out: str) -> dict[str, str]:
    names: dict[str, str] = {}
    for source in input_paths:
        name = _name(source)
        if name in names:
            raise DataError(f"{source} and {names[name]} have the same file name; labelled shards are named "
                            "after their input, so give each input shard a distinct name")
        names[name] = source
    return {source: storage.join(out, PROBS_DIR, _name(source)) for source in input_paths}


def _finished_shard(source: str, out: str, classes: list[str], identity: dict) -> ShardLabels:
    """The accounting of a shard an earlier run labelled, after checking it used the same teacher."""
    target = storage.join(out, PROBS_DIR, _name(source))
    meta = storage.read_metadata(target)
    kv = meta.metadata or {}
    earlier = json.loads(kv.get(META_TEACHER, b"{}"))
    same = ({k: v for k, v in earlier.items() if k not in IDENTITY_FREE}
            == {k: v for k, v in identity.items() if k not in IDENTITY_FREE})
    if json.loads(kv.get(META_CLASSES, b"[]")) != list(classes) or not same:
        raise StageError(f"{target} was labelled by another teacher or for other classes "
                         f"({earlier}, {kv.get(META_CLASSES)}); delete {storage.join(out, PROBS_DIR)} or label "
                         "into another folder")
    quarantine = storage.join(out, QUARANTINE, _name(source))
    found = storage.is_file(quarantine)
    rows_quarantined = storage.read_metadata(quarantine).num_rows if found else 0
    truncated = pc.sum(storage.read_table(target, columns=[TRUNCATED])[TRUNCATED]).as_py() or 0
    return ShardLabels(source, target, quarantine if found else None, storage.read_metadata(source).num_rows,
                       meta.num_rows, rows_quarantined, truncated, skipped=True)


def _remove_leftovers(out: str, targets: list[str]) -> None:
    """Deletes temporary files that runs which died left for the shards about to be labelled (a local output;
    an object store keeps no half-written objects)."""
    if storage.is_uri(out):
        return
    for target in targets:
        name = _name(target)
        for folder in (Path(out) / PROBS_DIR, Path(out) / QUARANTINE):
            for tmp in folder.glob(f".{name}.*"):  # .NAME.tmp-XXXX (and .NAME.XXXX.tmp of older runs)
                tmp.unlink(missing_ok=True)


def _check_accounting(result: LabelRun) -> None:
    for shard in result.shards:
        try:
            shard.rows.check(shard.input)
        except StageError as err:
            raise StageError(f"{err}; delete {shard.output} and label again") from None
