"""The prepare stage: read every input shard, validate it (bad rows -> quarantine), split by group.

Each input shard becomes one Parquet shard of canonical rows under `prepare/<part>/` (parts: labelled,
noisy, unlabelled, test), with a `split` column, and one quarantine shard holding the rows set aside,
each with its reason. Shards are read in parallel Ray tasks; only (group, label) pairs and the ids the
data gives come back to the driver, which assigns whole groups to train/validation/test. A row whose id an
earlier shard already holds (parts in order labelled, noisy, unlabelled, test; files in order) is moved to
quarantine/<part>/duplicate-ids-<shard>, the first one kept.
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
from smallsec_ray.data.io import expand_paths, is_default_id, read_shard, write_parquet_atomic
from smallsec_ray.data.splits import assign_splits, split_table
from smallsec_ray.errors import DataError
from smallsec_ray.spec import DataSpec
from smallsec_ray.stages import StageContext

PARTS = ("labelled", "noisy", "unlabelled", "test")


@ray.remote(num_cpus=0.5)
def _read_and_validate(path: str, out_path: str, quarantine_path: str, data: DataSpec,
                       classes: list[str]) -> dict[str, Any]:
    try:
        shard = read_shard(path, data.columns, data.format, data.max_rows_per_shard, classes, data.max_text_bytes)
    except DataError as err:
        if data.on_bad_file == "skip":
            return {"input": path, "skipped": str(err)}
        raise
    write_parquet_atomic(shard.good, out_path)
    if shard.quarantined.num_rows:
        write_parquet_atomic(shard.quarantined, quarantine_path)
    return {
        "input": path,
        "output": out_path,
        "quarantine": quarantine_path if shard.quarantined.num_rows else None,
        "rows": shard.rows,
        "reasons": _reason_counts(shard.quarantined),
        "groups": shard.good.column(schema.GROUP).to_pylist(),
        "labels": shard.good.column(schema.LABEL).to_pylist(),
        "sources": shard.good.column(schema.SOURCE).to_pylist() if data.split.by_source else None,
        "given": _given_splits(shard.good),
        # Ids the data gave (not the '<file>:<row>' default), to find the same id in two shards.
        "ids": [i for i in shard.good.column(schema.ID).to_pylist() if not is_default_id(i, path)],
    }


@ray.remote(num_cpus=0.5)
def _add_split(path: str, assignment: dict[str, str], seen_in: dict[str, str], quarantine_path: str) -> dict:
    """Adds the split column; rows whose id an earlier shard holds (`seen_in`: id -> that shard's input) are
    moved to a quarantine shard of their own."""
    table = split_table(storage.read_table(path), assignment)
    moved = 0
    if seen_in:
        again = pc.is_in(table.column(schema.ID), value_set=pa.array(list(seen_in), pa.string()))
        duplicates = table.filter(again)
        reasons = [f"id {i!r} is also in {seen_in[i]} (the first is kept); ids must be unique across shards"
                   for i in duplicates.column(schema.ID).to_pylist()]
        write_parquet_atomic(duplicates.drop_columns([schema.SPLIT]).append_column(
            schema.REASON, pa.array(reasons, pa.string())), quarantine_path)
        table, moved = table.filter(pc.invert(again)), duplicates.num_rows
    write_parquet_atomic(table, path)
    return {"splits": dict(Counter(table.column(schema.SPLIT).to_pylist())), "moved": moved}


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
    jobs: dict[str, list] = {part: [] for part in PARTS}
    for part in PARTS:
        for i, path in enumerate(expand_paths(getattr(data, part))):
            name = f"{part}-{i:05d}-{_stem(path)}.parquet"  # unique across parts: later stages pool them
            out = storage.join(ctx.store_dir, part, name)  # tasks write where every node can read
            quarantine = storage.join(ctx.store_dir, "quarantine", part, name)
            jobs[part].append(_read_and_validate.remote(path, out, quarantine, data, spec.classes))
    shards = {part: ray.get(refs) for part, refs in jobs.items()}

    skipped = [SkippedFile(s["input"], s["skipped"]) for part in PARTS for s in shards[part] if "skipped" in s]
    read = {part: [s for s in shards[part] if "skipped" not in s] for part in PARTS}

    groups, labels, sources = [], [], []
    for part in ("labelled", "noisy", "unlabelled"):
        for s in read[part]:
            groups += s["groups"]
            labels += s["labels"]
            sources += s["sources"] or []
    # Whole groups go to one split: the split some rows give (data.columns.split), else by the shares;
    # groups of an explicit test set are test everywhere.
    given = _groups_with_given_splits(read)
    free = [i for i, g in enumerate(groups) if g not in given]
    assignment = assign_splits([groups[i] for i in free], [labels[i] for i in free], data.split.validation,
                               data.split.test, data.split.seed,
                               [sources[i] for i in free] if data.split.by_source else None)
    assignment.update(given)
    for s in read["test"]:
        assignment.update(dict.fromkeys(s["groups"], "test"))

    first_shard: dict[str, str] = {}  # id -> the input holding it first (in part and file order)
    repeated: dict[str, dict[str, str]] = {}  # output shard -> {id: the input holding it first}
    for part in PARTS:
        for s in read[part]:
            repeated[s["output"]] = {i: first_shard[i] for i in s["ids"] if i in first_shard}
            first_shard.update({i: s["input"] for i in s["ids"] if i not in first_shard})
    dup_path = {s["output"]: storage.join(ctx.store_dir, "quarantine", part, "duplicate-ids-" + Path(s["output"]).name)
                for part in PARTS for s in read[part]}
    split_refs = {part: [_add_split.remote(s["output"], assignment, repeated[s["output"]], dup_path[s["output"]])
                         for s in read[part]] for part in PARTS}
    split_counts = {part: ray.get(refs) for part, refs in split_refs.items()}
    for part in PARTS:
        for s, counts in zip(read[part], split_counts[part], strict=True):
            if counts["moved"]:
                s["rows"] = RowCounts(s["rows"].rows_in, s["rows"].rows_out - counts["moved"],
                                      s["rows"].rows_quarantined + counts["moved"])
                s["reasons"] = {**s["reasons"], "id '…' is also in another shard": counts["moved"]}
                s["duplicates"] = dup_path[s["output"]]

    parts = {}
    for part in PARTS:
        parts[part] = PreparedPart(
            shards=[ctx.relative(s["output"]) for s in read[part]],
            quarantine=[ctx.relative(q) for s in read[part] for q in (s["quarantine"], s.get("duplicates")) if q],
            rows=sum((s["rows"] for s in read[part]), RowCounts()),
            by_split=dict(sum((Counter(c["splits"]) for c in split_counts[part]), Counter())),
            by_label=dict(Counter(str(label) for s in read[part] for label in s["labels"])),
            quarantine_reasons=dict(sum((Counter(s["reasons"]) for s in read[part]), Counter())))
    return PreparedData(parts=parts, rows=sum((p.rows for p in parts.values()), RowCounts()),
                        groups=dict(Counter(assignment.values())), files_skipped=skipped)


def _given_splits(table: pa.Table) -> dict[str, str]:
    """group -> the split its rows give (data.columns.split); raises DataError if they give two."""
    if schema.SPLIT not in table.column_names:
        return {}
    given: dict[str, str] = {}
    for group, split in zip(table[schema.GROUP].to_pylist(), table[schema.SPLIT].to_pylist(), strict=True):
        if split is not None and given.setdefault(group, split) != split:
            raise DataError(f"group {group!r} has rows in split {given[group]!r} and in split {split!r} "
                            "(data.columns.split); a group's rows must share one split")
    return given


def _groups_with_given_splits(read: dict[str, list[dict]]) -> dict[str, str]:
    given: dict[str, str] = {}
    for shards in read.values():
        for shard in shards:
            for group, split in shard["given"].items():
                if given.setdefault(group, split) != split:
                    raise DataError(f"group {group!r} has rows in split {given[group]!r} and in split {split!r} "
                                    f"(data.columns.split; one of them in {shard['input']}); a group's rows must "
                                    "share one split")
    return given


def _stem(path: str) -> str:
    name = Path(path.split("://")[-1]).name
    for ext in (".gz", ".parquet", ".jsonl", ".json", ".csv"):
        name = name.removesuffix(ext)
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60]


