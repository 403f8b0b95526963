"""A small synthetic telemetry set for the embedded default demo, written by our own generators.

Command lines, URLs and HTML pages are made from templates filled with random parts (users, hosts,
paths, IPs, brands). Hard negatives are there on purpose (benign certutil, encoded PowerShell from a
management agent, `curl | sh` installers, real login pages), so that no single token separates the
classes. Each artifact gets four parts in mixed formats, split into shards:

* labelled:   clean, analyst-labelled rows of the groups analysts know, enriched in detections;
* noisy:      a larger set with label noise applied (`true_label` keeps the clean label);
* unlabelled: label null;
* test:       clean, and group-disjoint from the other three parts.

Here: the layout (parts, formats, sizes, shares) and the writers. fill.py holds the template machinery the artifacts
share (random parts, words, `fill`); cmdline.py, url.py and html.py each hold one artifact's templates and its
row maker, `row(rng, label)`.

`python -c "from smallsec_ray.data.demo import write_demo_data; write_demo_data('demo-data')"` writes it.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from smallsec_ray.data.demo import cmdline, html, url
from smallsec_ray.data.noise import apply_noise, plan_noise
from smallsec_ray.data.schema import GROUP, ID, LABEL, SOURCE, TRUE_LABEL
from smallsec_ray.data.splits import TEST, assign_splits
from smallsec_ray.errors import SmallsecError

ARTIFACTS = ("cmdline", "url", "html")
PARTS = ("labelled", "noisy", "unlabelled", "test")
CLASSES = {"cmdline": ("benign", "malicious"), "url": ("benign", "malicious"), "html": ("benign", "phishing")}
TEXT_COLUMN = {"cmdline": "text", "url": "url", "html": "html"}
POSITIVE_SHARE = {"cmdline": 0.3, "url": 0.4, "html": 0.35}
LABELLED_POSITIVE_SHARE = 0.45
# Signature-style noise, by whole groups: the families (binaries, kits, hosts) holding 30% of the detections
# are missed throughout, and the families holding 10% of the benign rows are flagged throughout.
FLIP_RATES = {artifact: {classes[1]: 0.3, classes[0]: 0.1} for artifact, classes in CLASSES.items()}
NOVEL_SHARE = 0.15  # share of the non-test rows whose groups analysts never labelled (noisy/unlabelled only)
MIN_ROWS = 20


@dataclass(frozen=True)
class Part:
    fmt: str  # parquet, jsonl, jsonl.gz, csv or csv.gz
    shards: int
    rows: int  # at scale 1.0


LAYOUT = {
    "cmdline": {"labelled": Part("parquet", 2, 800), "noisy": Part("jsonl.gz", 4, 4000),
                "unlabelled": Part("jsonl", 2, 1000), "test": Part("csv", 2, 800)},
    "url": {"labelled": Part("csv", 2, 500), "noisy": Part("parquet", 3, 2500),
            "unlabelled": Part("jsonl.gz", 2, 3000), "test": Part("jsonl", 2, 500)},
    "html": {"labelled": Part("jsonl.gz", 2, 300), "noisy": Part("parquet", 3, 1200),
             "unlabelled": Part("jsonl", 2, 400), "test": Part("csv.gz", 2, 300)},
}

README = """Synthetic demo data for smallsec-ray
====================================

Everything here was made up by smallsec_ray/data/demo/ (seed {seed}, scale {scale}) from templates
and random parts; no row comes from real telemetry. It exists so that the embedded default jobs run on
a machine without real data. Do not draw conclusions about real detection quality from it.

Artifacts: cmdline (column `text`), url (column `url`), html (column `html`); every file also has
`id`, `label`, `source` and `group`; cmdline also `platform` and `family` (the benign tool set or the
attack technique; `group` is the binary). Classes: {classes}.

Parts of each artifact (each split into shards, in mixed formats on purpose):
* labelled/    clean, analyst-style labels
* noisy/       labels with signature-style noise by whole groups: per class, the groups holding this share
               of its rows carry another label throughout ({flip_rates}); `true_label` holds the clean label
* unlabelled/  label is null; `true_label` holds the label (for scoring pseudo-labels, never for training)
* test/        clean labels; its groups appear in no other part
"""


# Each artifact's row maker (in cmdline.py, url.py, html.py): row(rng, label) -> dict with "text", label, group,
# source and, for command lines, platform and family.
ROW_MAKERS: dict[str, Callable[[random.Random, str], dict[str, str]]] = {
    "cmdline": cmdline.row, "url": url.row, "html": html.row}


# ---------------------------------------------------------------------------------------------------
# Parts and files.

def write_demo_data(out_dir: str | Path, seed: int = 0, scale: float = 1.0) -> dict[str, list[Path]]:
    """Writes the demo data set under out_dir and returns the shard paths, keyed "<artifact>/<part>".

    The same seed and scale write the same rows; out_dir/README.txt says what the data is.
    """
    if not scale > 0:
        raise SmallsecError(f"demo data scale must be positive, got {scale}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    for artifact in ARTIFACTS:
        rng = random.Random(f"smallsec-demo:{seed}:{artifact}")
        parts = _make_parts(artifact, rng, seed, scale)
        for part, table in parts.items():
            layout = LAYOUT[artifact][part]
            written[f"{artifact}/{part}"] = _write_shards(table, out / artifact / part, layout.fmt, layout.shards)
    (out / "README.txt").write_text(README.format(seed=seed, scale=scale, classes=CLASSES, flip_rates=FLIP_RATES))
    return written


def _make_parts(artifact: str, rng: random.Random, seed: int, scale: float) -> dict[str, pa.Table]:
    sizes = {part: max(MIN_ROWS, round(layout.rows * scale)) for part, layout in LAYOUT[artifact].items()}
    positive = CLASSES[artifact][1]
    pool = [ROW_MAKERS[artifact](rng, positive if rng.random() < POSITIVE_SHARE[artifact] else "benign")
            for _ in range(sum(sizes.values()))]

    # Test takes whole groups; analysts never labelled some further groups (seen only in noisy/unlabelled).
    test_share = sizes["test"] / len(pool)
    in_test = _groups_in_split(pool, test_share, seed)
    rest = [row for row in pool if row[GROUP] not in in_test]
    novel = _groups_in_split(rest, NOVEL_SHARE, seed + 1)
    known = {label: [r for r in rest if r[GROUP] not in novel and r[LABEL] == label] for label in CLASSES[artifact]}
    # Analysts label detections more often than their base rate: the labelled part is enriched in positives.
    n_positive = round(sizes["labelled"] * LABELLED_POSITIVE_SHARE)
    n_benign = sizes["labelled"] - n_positive
    labelled = known[positive][:n_positive] + known["benign"][:n_benign]
    others = known[positive][n_positive:] + known["benign"][n_benign:] + [r for r in rest if r[GROUP] in novel]
    rng.shuffle(labelled)
    rng.shuffle(others)

    tables = {
        "labelled": _table(artifact, "labelled", labelled),
        "noisy": _table(artifact, "noisy", others[:sizes["noisy"]]),
        "unlabelled": _table(artifact, "unlabelled", others[sizes["noisy"]:]),
        "test": _table(artifact, "test", [row for row in pool if row[GROUP] in in_test]),
    }
    noisy = tables["noisy"]
    plan = plan_noise("groups", FLIP_RATES[artifact], CLASSES[artifact], seed, noisy[GROUP].to_pylist(),
                      noisy[LABEL].to_pylist())
    tables["noisy"] = apply_noise(noisy, plan)
    unlabelled = tables["unlabelled"]
    unlabelled = unlabelled.append_column(TRUE_LABEL, unlabelled[LABEL])
    tables["unlabelled"] = unlabelled.set_column(unlabelled.schema.get_field_index(LABEL), LABEL,
                                                 pa.nulls(unlabelled.num_rows, pa.string()))
    return tables


def _groups_in_split(rows: list[dict[str, str]], share: float, seed: int) -> set[str]:
    assignment = assign_splits([r[GROUP] for r in rows], [r[LABEL] for r in rows], 0.0, share, seed)
    return {group for group, split in assignment.items() if split == TEST}


def _table(artifact: str, part: str, rows: list[dict[str, str]]) -> pa.Table:
    columns = {ID: [f"{artifact}-{part}-{i:05d}" for i in range(len(rows))],
               TEXT_COLUMN[artifact]: [r["text"] for r in rows]}
    for name in (LABEL, SOURCE, GROUP, "platform", "family"):
        if rows and name in rows[0]:
            columns[name] = [r[name] for r in rows]
    return pa.table({name: pa.array(values, pa.string()) for name, values in columns.items()})


def _write_shards(table: pa.Table, directory: Path, fmt: str, shards: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    count = max(1, min(shards, table.num_rows))
    bounds = [round(i * table.num_rows / count) for i in range(count + 1)]
    paths = []
    for k in range(count):
        path = directory / f"part-{k:02d}.{fmt}"
        _write_shard(table.slice(bounds[k], bounds[k + 1] - bounds[k]), path, fmt)
        paths.append(path)
    return paths


def _write_shard(table: pa.Table, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(table, path)
        return
    with _open_text(path, compressed=fmt.endswith(".gz")) as f:
        if fmt.startswith("jsonl"):
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in table.to_pylist())
        else:
            writer = csv.DictWriter(f, fieldnames=table.column_names)
            writer.writeheader()
            writer.writerows(table.to_pylist())


def _open_text(path: Path, compressed: bool) -> IO[str]:
    if compressed:  # mtime=0: the same rows give the same bytes
        return io.TextIOWrapper(gzip.GzipFile(path, "wb", mtime=0), encoding="utf-8", newline="")
    return open(path, "w", encoding="utf-8", newline="")

