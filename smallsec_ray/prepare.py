"""The prepare stage: read every input shard, validate it (bad rows -> quarantine), split by group.

Each input shard becomes one Parquet shard of canonical rows under `prepare/<part>/` (parts: labelled,
noisy, unlabelled, test), with a `split` column, and one quarantine shard holding the rows set aside,
each with its reason. Per-row data stays in the tasks: the driver holds a few counts per shard and object
references, however many rows there are. Three rounds of Ray tasks:

1. read, one task per input shard: validate, write the good rows with the split each row takes from
   what it holds (data/splits.py row_splits: a hash of its group and the seed, unless the row is in the
   test part, gives a split or has no label), and hand on the shard's keys: its distinct groups with
   what decides their split, and the ids the data gave (not the '<file>:<row>' default).
2. settle, one task per hash bucket of the keys (data/buckets.py): each group's split from every shard
   holding it (data/splits.py settle_groups; a group given two splits is an error naming it and the
   shards), and the ids that an earlier shard already holds (parts in order labelled, noisy, unlabelled,
   test; files in order).
3. finish, one task per shard: rows whose group settled on another split take it (whole groups stay in
   one split); rows whose id an earlier shard holds move to quarantine/<part>/duplicate-ids-<shard>, the
   first one kept. A shard with nothing to change is not written again. Every finish task reads the
   overrides and repeated ids of all buckets (from the object store): few rows, unless many groups mix
   labelled and unlabelled rows or many ids repeat across shards.

Until issue 12 the driver gathered every row's group, label and id, assigned splits stratified by label
and sent the whole map to every task; data/splits.py says what the hash assignment keeps and what not.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from smallsec_ray import storage
from smallsec_ray.data import schema
from smallsec_ray.data.accounting import RowCounts
from smallsec_ray.data.buckets import bucket_count, in_bucket, with_key_hash
from smallsec_ray.data.io import expand_paths, is_default_id, read_shard, write_parquet_atomic
from smallsec_ray.data.splits import SHARD, group_keys, row_splits, settle_groups, with_splits
from smallsec_ray.errors import DataError
from smallsec_ray.spec import DataSpec, SplitSpec
from smallsec_ray.stages import StageContext

PARTS = ("labelled", "noisy", "unlabelled", "test")
FIRST = "first_shard"  # of a repeated id: the number of the shard holding it first


@dataclass(frozen=True)
class _Shard:
    """One input shard and where prepare writes it."""

    part: str
    input: str
    output: str
    quarantine: str  # rows the reader set aside
    duplicates: str  # rows whose id an earlier shard holds


@ray.remote(num_cpus=0.5, num_returns=2)
def _read_and_validate(shard: _Shard, number: int, data: DataSpec,
                       classes: list[str]) -> tuple[dict, tuple[pa.Table, pa.Table] | None]:
    """Reads, validates and writes one shard; returns its counts, and its group keys and id keys as one
    object: the settle tasks read it from the object store, it never reaches the driver (Ray keeps return
    values under 100 KB in the caller's memory: one object of both keys is above that more often)."""
    try:
        read = read_shard(shard.input, data.columns, data.format, data.max_rows_per_shard, classes,
                          data.max_text_bytes)
    except DataError as err:
        if data.on_bad_file == "skip":
            return {"skipped": str(err)}, None
        raise
    test_part = shard.part == "test"
    splits = row_splits(read.good, data.split.validation, data.split.test, data.split.seed, test_part)
    write_parquet_atomic(with_splits(read.good, splits), shard.output)
    if read.quarantined.num_rows:
        write_parquet_atomic(read.quarantined, shard.quarantine)
    groups = with_key_hash(group_keys(read.good, splits, test_part, number), schema.GROUP)
    ids = read.good[schema.ID]
    given = pa.array([not is_default_id(i, shard.input) for i in ids.to_pylist()], pa.bool_())
    ids = with_key_hash(pa.table({schema.ID: ids, SHARD: pa.array([number] * len(ids), pa.int32())}).filter(given),
                        schema.ID)
    labels = {str(c["values"]): c["counts"] for c in pc.value_counts(read.good[schema.LABEL]).to_pylist()}
    return ({"rows": read.rows, "reasons": _reason_counts(read.quarantined), "labels": labels,
             "quarantined": read.quarantined.num_rows > 0}, (groups, ids))


@ray.remote(num_cpus=0.5, num_returns=3)
def _settle(bucket: int, buckets: int, split: SplitSpec, inputs: list[str],
            *keys: tuple[pa.Table, pa.Table]) -> tuple[dict[str, int], pa.Table, pa.Table]:
    """One bucket of the keys of all shards ((group keys, id keys) of each): the groups per split, the
    overrides of settle_groups, and the repeated ids (id, shard, first shard)."""
    groups = pa.concat_tables([in_bucket(g, bucket, buckets) for g, _ in keys])
    counts, overrides = settle_groups(groups, split.validation, split.test, split.seed, inputs)
    return counts, overrides, _repeated_ids(pa.concat_tables([in_bucket(i, bucket, buckets) for _, i in keys]))


def _repeated_ids(ids: pa.Table) -> pa.Table:
    """(id, shard, first shard) of every id held by a shard after the first one holding it (a shard holds an
    id once: validate_table quarantines repeats within a shard)."""
    first = ids.group_by(schema.ID).aggregate([(SHARD, "min")]).rename_columns([schema.ID, FIRST])
    joined = ids.join(first, schema.ID)
    return joined.filter(pc.greater(joined[SHARD], joined[FIRST]))


@ray.remote(num_cpus=0.5)
def _finish(shard: _Shard, number: int, inputs: list[str], buckets: int, *settled: pa.Table) -> dict:
    """Gives a shard's rows their group's settled split and moves its rows whose id an earlier shard holds to
    a quarantine shard of their own (`settled`: the overrides of each bucket, then the repeated ids);
    returns the rows per split and the rows moved."""
    overrides = pa.concat_tables(settled[:buckets])
    repeats = pa.concat_tables(settled[buckets:])
    repeats = repeats.filter(pc.equal(repeats[SHARD], number))
    table = storage.read_table(shard.output, columns=[schema.GROUP, schema.SPLIT])
    regroup = overrides.num_rows and pc.any(pc.is_in(table[schema.GROUP],
                                                     value_set=overrides[schema.GROUP].combine_chunks())).as_py()
    if not regroup and not repeats.num_rows:
        return {"splits": _counts(table[schema.SPLIT]), "moved": 0}
    table = storage.read_table(shard.output)
    table = with_splits(table, table[schema.SPLIT], overrides)
    moved = 0
    if repeats.num_rows:
        repeated = repeats[schema.ID].combine_chunks()
        again = pc.is_in(table[schema.ID], value_set=repeated)
        duplicates = table.filter(again)
        first = pc.take(repeats[FIRST], pc.index_in(duplicates[schema.ID], value_set=repeated))
        reasons = [f"id {i!r} is also in {inputs[f]} (the first is kept); ids must be unique across shards"
                   for i, f in zip(duplicates[schema.ID].to_pylist(), first.to_pylist(), strict=True)]
        write_parquet_atomic(duplicates.drop_columns([schema.SPLIT]).append_column(
            schema.REASON, pa.array(reasons, pa.string())), shard.duplicates)
        table, moved = table.filter(pc.invert(again)), duplicates.num_rows
    write_parquet_atomic(table, shard.output)
    return {"splits": _counts(table[schema.SPLIT]), "moved": moved}


def _counts(values: pa.ChunkedArray) -> dict[str, int]:
    return {c["values"]: c["counts"] for c in pc.value_counts(values).to_pylist()}


def _reason_counts(quarantined: pa.Table) -> dict[str, int]:
    if quarantined.num_rows == 0:
        return {}
    return dict(Counter(_reason_kind(r) for r in quarantined.column(schema.REASON).to_pylist()))


def _reason_kind(reason: str) -> str:
    """A reason without its row specifics, for counting: "line 3: text is 5,242,880 bytes, over ..." ->
    "text is N bytes, over ...", "label 'x' is not one of [...]" -> "label '…' is not one of"."""
    kind = re.sub(r"^(line|row) \d+: ", "", reason)
    kind = re.sub(r"'[^']*'", "'…'", kind)
    kind = re.sub(r"(?<![\w-])\d[\d,]*", "N", kind)
    return re.split(r" \(| \[", kind)[0]


@dataclass
class PreparedPart:
    """One part of the input (labelled, noisy, unlabelled, test) after prepare."""

    shards: list[str]  # prepared Parquet shards, relative to the run folder
    quarantine: list[str]  # quarantine shards (rows set aside, each with its reason)
    rows: RowCounts
    by_split: dict[str, int]
    by_label: dict[str, int]
    quarantine_reasons: dict[str, int]  # reason kind -> rows


@dataclass
class SkippedFile:
    file: str
    reason: str


@dataclass
class PreparedData:
    """The prepare stage's result: canonical Parquet shards with a split column, per part."""

    parts: dict[str, PreparedPart]
    rows: RowCounts
    groups: dict[str, int]  # groups per split
    files_skipped: list[SkippedFile] = field(default_factory=list)

    def shards(self, *parts: str) -> list[str]:
        return [shard for part in parts for shard in self.parts[part].shards]


def run_prepare(ctx: StageContext) -> PreparedData:
    spec, data = ctx.spec, ctx.spec.data
    shards = []
    for part in PARTS:
        for i, path in enumerate(expand_paths(getattr(data, part))):
            name = f"{part}-{i:05d}-{_stem(path)}.parquet"  # unique across parts: later stages pool them
            # Tasks write where every node reads: the stage's folder in the output.
            shards.append(_Shard(part, path, storage.join(ctx.store_dir, part, name),
                                 storage.join(ctx.store_dir, "quarantine", part, name),
                                 storage.join(ctx.store_dir, "quarantine", part, "duplicate-ids-" + name)))
    # num_returns=2: each is a pair of refs, which Ray's typing (one ref per call) does not model.
    reads: list[Any] = [_read_and_validate.remote(s, number, data, spec.classes) for number, s in enumerate(shards)]
    summaries = ray.get([r[0] for r in reads])
    read = [n for n, s in enumerate(summaries) if "skipped" not in s]
    inputs = ray.put([s.input for s in shards])  # once in the object store, not in every task's arguments

    groups: Counter[str] = Counter()
    finished = {}
    if read:
        buckets = bucket_count(sum(summaries[n]["rows"].rows_out for n in read))
        keys = [reads[n][1] for n in read]
        settled = [_settle.remote(b, buckets, data.split, inputs, *keys) for b in range(buckets)]
        for counts in ray.get([s[0] for s in settled]):
            groups.update(counts)
        del reads, keys  # the settle tasks are done with the keys: Ray may free them
        results = [s[1] for s in settled] + [s[2] for s in settled]
        finished = dict(zip(read, ray.get([_finish.remote(shards[n], n, inputs, buckets, *results) for n in read]),
                            strict=True))

    parts = {}
    for part in PARTS:
        mine = [n for n in read if shards[n].part == part]
        rows = RowCounts()
        reasons: Counter[str] = Counter()
        by_split: Counter[str] = Counter()
        by_label: Counter[str] = Counter()
        quarantine: list[str] = []
        for n in mine:
            summary, moved = summaries[n], finished[n]["moved"]
            rows += RowCounts(summary["rows"].rows_in, summary["rows"].rows_out - moved,
                              summary["rows"].rows_quarantined + moved)
            reasons.update(summary["reasons"])
            if moved:
                reasons["id '…' is also in another shard"] += moved
            by_split.update(finished[n]["splits"])
            by_label.update(summary["labels"])
            quarantine += [ctx.relative(q) for q, kept in ((shards[n].quarantine, summary["quarantined"]),
                                                           (shards[n].duplicates, moved)) if kept]
        parts[part] = PreparedPart(shards=[ctx.relative(shards[n].output) for n in mine], quarantine=quarantine,
                                   rows=rows, by_split=dict(by_split), by_label=dict(by_label),
                                   quarantine_reasons=dict(reasons))
    skipped = [SkippedFile(shards[n].input, s["skipped"]) for n, s in enumerate(summaries) if "skipped" in s]
    return PreparedData(parts=parts, rows=sum((p.rows for p in parts.values()), RowCounts()),
                        groups=dict(groups), files_skipped=skipped)


def _stem(path: str) -> str:
    name = Path(path.split("://")[-1]).name
    for ext in (".gz", ".parquet", ".jsonl", ".json", ".csv"):
        name = name.removesuffix(ext)
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60]


