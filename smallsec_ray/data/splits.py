"""Group-disjoint, stratified, deterministic train/validation/test splits.

Whole groups (a host, a binary, a technique, a page family) go to one split, so near-duplicates never
sit on both sides of an evaluation. Groups are stratified by their majority label, and the assignment
depends only on the set of (group, label) rows and the seed, not on the row order.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from smallsec_ray.data.schema import GROUP, SPLIT, SPLITS
from smallsec_ray.errors import DataError, SpecError

TRAIN, VALIDATION, TEST = SPLITS


def assign_splits(groups: Sequence[str], labels: Sequence[str | None], validation: float, test: float,
                  seed: int, sources: Sequence[str | None] | None = None) -> dict[str, str]:
    """Maps every group to "train", "validation" or "test".

    Groups are bucketed by their majority label (ties go to the alphabetically first label; groups with
    no labelled row at all go to train: unlabelled rows cannot be validated or tested on), and with
    `sources` (one per row) also by their majority
    source, so that every source gets its share of each split. Within a stratum, groups are taken in the
    order of a seeded hash of their name and fill test, then validation, each up to its share of the
    stratum's rows; the rest go to train. A group joins test or validation only if that brings the
    split's row count closer to its target, so a split never gets more than twice its share of a
    stratum: a group bigger than that (e.g. the one group of a stratum) stays in train rather than
    swallowing the split.
    """
    _check_shares(validation, test)
    if len(groups) != len(labels):
        raise DataError(f"assign_splits got {len(groups)} groups but {len(labels)} labels; pass one of each "
                        "per row")
    if sources is not None and len(sources) != len(groups):
        raise DataError(f"assign_splits got {len(groups)} groups but {len(sources)} sources")
    rows_per_group: Counter[str] = Counter()
    labels_per_group: defaultdict[str, Counter[str]] = defaultdict(Counter)
    sources_per_group: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for row, (group, label) in enumerate(zip(groups, labels, strict=True)):
        if group is None:
            raise DataError(f"row {row} has a null group; give every row a group (the reader defaults it to "
                            "the row id)")
        rows_per_group[group] += 1
        if label is not None:
            labels_per_group[group][label] += 1
        if sources is not None and sources[row] is not None:
            sources_per_group[group][sources[row]] += 1

    strata: defaultdict[tuple[str | None, str | None], list[str]] = defaultdict(list)
    for group in rows_per_group:
        strata[_majority_label(labels_per_group[group]), _majority_label(sources_per_group[group])].append(group)

    assignment: dict[str, str] = {}
    for (label, _), members in strata.items():
        if label is None:  # no row of these groups has a label: nothing to validate or test them on
            assignment.update(dict.fromkeys(members, TRAIN))
            continue
        assignment.update(_fill_stratum(members, rows_per_group, {TEST: test, VALIDATION: validation}, seed))
    return assignment


def split_table(table: pa.Table, assignment: Mapping[str, str]) -> pa.Table:
    """Returns the table with a `split` column looked up from its `group` column (replacing any old one)."""
    if GROUP not in table.column_names:
        raise DataError(f"the table has no {GROUP!r} column (columns: {table.column_names}); read it "
                        "through the shard reader, which fills the group")
    keys = pa.array(list(assignment.keys()), pa.string())
    splits = pa.array(list(assignment.values()), pa.string())
    index = pc.index_in(table[GROUP], value_set=keys)
    if index.null_count:
        missing = table[GROUP].filter(pc.is_null(index))[0].as_py()
        raise DataError(f"group {missing!r} has no split in the assignment; compute the assignment with "
                        "assign_splits over the same rows")
    if SPLIT in table.column_names:
        table = table.drop_columns([SPLIT])
    return table.append_column(SPLIT, pc.take(splits, index))


def _check_shares(validation: float, test: float) -> None:
    for key, share in (("validation", validation), ("test", test)):
        if not 0.0 <= share < 1.0:
            raise SpecError(f"split.{key} is {share}; it must be a share of rows in [0, 1)")
    if validation + test >= 1.0:
        raise SpecError(f"split.validation + split.test is {validation + test}; keep it below 1.0 so that "
                        "rows are left for training")


def _majority_label(counts: Counter[str]) -> str | None:
    if not counts:
        return None
    return max(sorted(counts), key=counts.__getitem__)


def _fill_stratum(members: list[str], rows_per_group: Mapping[str, int], shares: Mapping[str, float],
                  seed: int) -> dict[str, str]:
    total = sum(rows_per_group[g] for g in members)
    targets = {split: share * total for split, share in shares.items()}
    filled = dict.fromkeys(shares, 0)
    assignment = {}
    for group in sorted(members, key=lambda g: (_seeded_hash(g, seed), g)):
        size = rows_per_group[group]
        assignment[group] = TRAIN
        for split in shares:  # test first, then validation
            if abs(filled[split] + size - targets[split]) < abs(filled[split] - targets[split]):
                assignment[group] = split
                filled[split] += size
                break
    return assignment


def _seeded_hash(group: str, seed: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x1f{group}".encode(), digest_size=8).digest(), "big")
