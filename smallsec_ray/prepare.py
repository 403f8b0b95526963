"""The prepare stage: read every input shard, validate it (bad rows -> quarantine), split by group.

Each input shard becomes one Parquet shard of canonical rows under `prepare/<part>/` (parts: labelled,
noisy, unlabelled, test), with a `split` column, and one quarantine shard holding the rows set aside,
each with its reason. Shards are read in parallel Ray tasks; only (group, label) pairs come back to the
driver, which assigns whole groups to train/validation/test.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from smallsec_ray.data import schema
from smallsec_ray.data.io import expand_paths, read_shard, write_parquet_atomic
from smallsec_ray.data.noise import inject_label_noise
from smallsec_ray.data.splits import assign_splits, split_table
from smallsec_ray.errors import DataError
from smallsec_ray.spec import DataSpec
from smallsec_ray.stages import StageContext, StageOutput

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
        "rows_in": shard.rows_in,
        "rows_out": shard.rows_out,
        "rows_quarantined": shard.rows_quarantined,
        "reasons": _reason_counts(shard.quarantined),
        "groups": shard.good.column(schema.GROUP).to_pylist(),
        "labels": shard.good.column(schema.LABEL).to_pylist(),
    }


@ray.remote(num_cpus=0.5)
def _add_split(path: str, assignment: dict[str, str], forced_split: str | None, noise: dict | None,
               classes: list[str]) -> dict[str, int]:
    table = pq.read_table(path)
    if forced_split:
        table = table.append_column(schema.SPLIT, pa.array([forced_split] * table.num_rows, pa.string()))
    else:
        table = split_table(table, assignment)
    if noise:
        table = inject_label_noise(table, noise["flip_rates"], classes, noise["seed"])
    write_parquet_atomic(table, path)
    return dict(Counter(table.column(schema.SPLIT).to_pylist()))


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


def run_prepare(ctx: StageContext) -> StageOutput:
    spec, data = ctx.spec, ctx.spec.data
    jobs: dict[str, list] = {part: [] for part in PARTS}
    for part in PARTS:
        for i, path in enumerate(expand_paths(getattr(data, part))):
            name = f"{part}-{i:05d}-{_stem(path)}.parquet"  # unique across parts: later stages pool them
            out = ctx.stage_dir / part / name
            quarantine = ctx.stage_dir / "quarantine" / part / name
            jobs[part].append(_read_and_validate.remote(path, str(out), str(quarantine), data, spec.classes))
    shards = {part: ray.get(refs) for part, refs in jobs.items()}

    skipped = [s for part in PARTS for s in shards[part] if "skipped" in s]
    read = {part: [s for s in shards[part] if "skipped" not in s] for part in PARTS}

    # Whole groups go to one split; groups of an explicit test set are test everywhere.
    groups, labels = [], []
    for part in ("labelled", "noisy", "unlabelled"):
        for s in read[part]:
            groups += s["groups"]
            labels += s["labels"]
    assignment = assign_splits(groups, labels, data.split.validation, data.split.test, data.split.seed)
    for s in read["test"]:
        assignment.update(dict.fromkeys(s["groups"], "test"))

    noise = data.noise.model_dump() if data.noise and data.noise.flip_rates else None
    split_refs = {
        part: [_add_split.remote(s["output"], assignment, "test" if part == "test" else None,
                                 noise if part == "noisy" else None, spec.classes) for s in read[part]]
        for part in PARTS
    }
    split_counts = {part: ray.get(refs) for part, refs in split_refs.items()}

    counts: dict[str, Any] = {"rows_in": 0, "rows_out": 0, "rows_quarantined": 0}
    outputs: dict[str, Any] = {"quarantine": []}
    for part in PARTS:
        block = {k: sum(s[k] for s in read[part]) for k in ("rows_in", "rows_out", "rows_quarantined")}
        block["by_split"] = dict(sum((Counter(c) for c in split_counts[part]), Counter()))
        block["by_label"] = dict(Counter(str(lbl) for s in read[part] for lbl in s["labels"]))
        block["quarantine_reasons"] = dict(sum((Counter(s["reasons"]) for s in read[part]), Counter()))
        block["shards"] = len(read[part])
        counts[part] = block
        for k in ("rows_in", "rows_out", "rows_quarantined"):
            counts[k] += block[k]
        outputs[part] = [_rel(s["output"], ctx.run_dir) for s in read[part]]
        outputs["quarantine"] += [_rel(s["quarantine"], ctx.run_dir) for s in read[part] if s["quarantine"]]
    counts["files_skipped"] = [{"file": s["input"], "reason": s["skipped"]} for s in skipped]
    counts["groups"] = {split: n for split, n in Counter(assignment.values()).items()}
    return StageOutput(counts=counts, outputs=outputs)


def prepared_paths(ctx: StageContext, part: str) -> list[str]:
    """Absolute paths of the prepared shards of one part (labelled, noisy, unlabelled, test)."""
    return [str(ctx.run_dir / p) for p in ctx.outputs_of("prepare")[part]]


def read_prepared(ctx: StageContext, parts: tuple[str, ...], split: str | None = None) -> pa.Table:
    """The prepared rows of some parts, optionally one split, as one table (for small driver-side work)."""
    tables = [pq.read_table(p) for part in parts for p in prepared_paths(ctx, part)]
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in (*schema.CANONICAL, schema.SPLIT)})
    table = pa.concat_tables(tables, promote_options="permissive")
    if split is not None:
        table = table.filter(pc.equal(table.column(schema.SPLIT), split))
    return table


def _stem(path: str) -> str:
    name = Path(path.split("://")[-1]).name
    for ext in (".gz", ".parquet", ".jsonl", ".json", ".csv"):
        name = name.removesuffix(ext)
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60]


def _rel(path: str, run_dir: Path) -> str:
    return str(Path(path).relative_to(run_dir))
