"""Group-disjoint, deterministic train/validation/test splits.

Whole groups (a host, a binary, a technique, a page family) go to one split, so near-duplicates never
sit on both sides of an evaluation. Two ways to assign them:

* By hash (the prepare stage): a group's split is a seeded hash of its name measured against the shares
  (`hash_splits`), so it depends only on the group, the seed and the shares, and is computed where the
  rows are, shard by shard, with no map of all groups in any one process. What a group's rows say about
  it takes precedence (`settle_groups`): a row of the explicit test set (data.test) makes its group test;
  a split given in the data (data.columns.split) holds for its whole group; a group none of whose rows
  has a label goes to train (unlabelled rows cannot be validated or tested on). Shares hold in
  expectation over groups: close with many groups, loose with a few big ones (a group holding 40% of
  the rows lands in one split whole). Not stratified by label: until issue 12 prepare filled each split
  to its share of every majority-label stratum, which needed every group's label counts in one process;
  with many groups each label still gets its share up to sampling noise.
* Stratified (`assign_splits`): the fill by majority label and seeded hash order, for row sets that fit
  one process (the demo's fixed test set, the quality benchmarks' data).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from smallsec_ray.data.schema import GROUP, LABEL, SPLIT, SPLITS
from smallsec_ray.errors import DataError, SpecError

TRAIN, VALIDATION, TEST = SPLITS

# Columns of the group keys (group_keys -> settle_groups), besides GROUP.
GIVEN = "given_split"  # the split the rows give (data.columns.split), null when none
LABELLED = "labelled"  # some of the rows have a label
ROW_SPLIT = "row_split"  # the split row_splits gave the rows
TEST_PART = "test_part"  # the rows are in the explicit test set (data.test)
SHARD = "shard"  # the shard's number, to name it in errors


def hash_splits(groups: pa.Array | pa.ChunkedArray, validation: float, test: float, seed: int) -> pa.Array:
    """The split of each group by a seeded hash of its name, read as a share in [0, 1): below `test` test,
    below test + validation validation, else train. Each distinct group is hashed once."""
    _check_shares(validation, test)
    groups = _one_chunk(groups)
    if groups.null_count:
        row = int(np.flatnonzero(pc.is_null(groups).to_numpy(zero_copy_only=False))[0])
        raise DataError(f"row {row} has a null group; give every row a group (the reader defaults it to the "
                        "row id)")
    encoded = pc.dictionary_encode(groups)
    names = [_split_of_share(_seeded_hash(g, seed) / 2**64, validation, test)
             for g in encoded.dictionary.to_pylist()]
    return pc.take(pa.array(names, pa.string()), encoded.indices)


def row_splits(table: pa.Table, validation: float, test: float, seed: int, test_part: bool = False) -> pa.Array:
    """The split each row takes from what it holds itself: every row of the explicit test set test; a
    given split (the `split` column, data.columns.split) itself; an unlabelled row train; any other row its
    group's hash split. `settle_groups` then finds the groups whose rows disagree."""
    if test_part:
        return pa.array([TEST] * table.num_rows, pa.string())
    split = pc.if_else(pc.is_null(table[LABEL]), TRAIN, hash_splits(table[GROUP], validation, test, seed))
    if SPLIT in table.column_names:
        split = pc.coalesce(table[SPLIT], split)
    return _one_chunk(split)


def group_keys(table: pa.Table, splits: pa.Array, test_part: bool, shard: int) -> pa.Table:
    """What `settle_groups` needs of one shard: its distinct (group, given split, labelled, row split)."""
    n = table.num_rows
    given = table[SPLIT] if SPLIT in table.column_names else pa.nulls(n, pa.string())
    keys = pa.table({GROUP: table[GROUP], GIVEN: given, LABELLED: pc.is_valid(table[LABEL]), ROW_SPLIT: splits})
    keys = keys.group_by([GROUP, GIVEN, LABELLED, ROW_SPLIT]).aggregate([])
    return keys.append_column(TEST_PART, pa.array([test_part] * keys.num_rows, pa.bool_())).append_column(
        SHARD, pa.array([shard] * keys.num_rows, pa.int32()))


def settle_groups(keys: pa.Table, validation: float, test: float, seed: int,
                  shards: Sequence[str]) -> tuple[dict[str, int], pa.Table]:
    """Each group's split from the keys of every shard holding it (`group_keys`, concatenated): test when
    a row is in the explicit test set, else the split its rows give, else train when none of its rows has a
    label, else its hash split. Returns the number of groups per split, and the overrides: a table
    (group, split) of the groups some of whose rows took another split by `row_splits`, with the split
    all their rows must take (usually few: groups given a split on some rows only, test-set groups met in
    other parts, groups mixing labelled and unlabelled rows that hash to validation or test).

    Raises DataError naming a group whose rows give two splits, and the shards (`shards[n]`) giving them."""
    per_group = keys.group_by(GROUP).aggregate([(GIVEN, "min"), (GIVEN, "max"), (LABELLED, "any"),
                                                (TEST_PART, "any"), (ROW_SPLIT, "min"), (ROW_SPLIT, "max")])
    _check_given(keys, per_group, shards)
    group = per_group[GROUP]
    split = pc.if_else(per_group[f"{LABELLED}_any"], hash_splits(group, validation, test, seed), TRAIN)
    split = pc.coalesce(per_group[f"{GIVEN}_min"], split)
    split = pc.if_else(per_group[f"{TEST_PART}_any"], TEST, split)
    differs = pc.or_(pc.not_equal(per_group[f"{ROW_SPLIT}_min"], split),
                     pc.not_equal(per_group[f"{ROW_SPLIT}_max"], split))
    counts = {c["values"]: c["counts"] for c in pc.value_counts(split).to_pylist()}
    return counts, pa.table({GROUP: group, SPLIT: split}).filter(differs)


def with_splits(table: pa.Table, splits: pa.Array | pa.ChunkedArray, overrides: pa.Table | None = None) -> pa.Table:
    """The table with a `split` column (replacing any old one): each row's split from `row_splits`, or, for a
    group in `overrides` (from `settle_groups`), the group's split."""
    split = _one_chunk(splits)
    if overrides is not None and overrides.num_rows:
        index = pc.index_in(table[GROUP], value_set=_one_chunk(overrides[GROUP]))
        split = pc.coalesce(_one_chunk(pc.take(_one_chunk(overrides[SPLIT]), index)), split)
    if SPLIT in table.column_names:
        table = table.drop_columns([SPLIT])
    return table.append_column(SPLIT, split)


def _check_given(keys: pa.Table, per_group: pa.Table, shards: Sequence[str]) -> None:
    low, high = per_group[f"{GIVEN}_min"], per_group[f"{GIVEN}_max"]
    conflict = pc.fill_null(pc.not_equal(low, high), False)
    if not pc.any(conflict).as_py():
        return
    first = per_group.filter(conflict).sort_by(GROUP).slice(0, 1).to_pylist()[0]
    group, one, other = first[GROUP], first[f"{GIVEN}_min"], first[f"{GIVEN}_max"]

    def giving(split: str) -> str:
        rows = keys.filter(pc.and_(pc.equal(keys[GROUP], group), pc.equal(keys[GIVEN], split)))
        return shards[pc.min(rows[SHARD]).as_py()]

    where = sorted({giving(one), giving(other)})
    raise DataError(f"group {group!r} has rows in split {one!r} and in split {other!r} (data.columns.split; in "
                    f"{' and '.join(where)}); a group's rows must share one split: correct the split column")


def _split_of_share(share: float, validation: float, test: float) -> str:
    return TEST if share < test else VALIDATION if share < test + validation else TRAIN


def _one_chunk(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def assign_splits(groups: Sequence[str], labels: Sequence[str | None], validation: float, test: float,
                  seed: int) -> dict[str, str]:
    """Maps every group to "train", "validation" or "test", stratified (rows held in this process).

    Groups are bucketed by their majority label (ties go to the alphabetically first label; groups with
    no labelled row at all go to train: unlabelled rows cannot be validated or tested on). Within a
    stratum, groups are taken in the order of a seeded hash of their name and fill test, then validation,
    each up to its share of the stratum's rows; the rest go to train. A group joins test or validation
    only if that brings the split's row count closer to its target, so a split never gets more than twice
    its share of a stratum: a group bigger than that (e.g. the one group of a stratum) stays in train
    rather than swallowing the split.
    """
    _check_shares(validation, test)
    if len(groups) != len(labels):
        raise DataError(f"assign_splits got {len(groups)} groups but {len(labels)} labels; pass one of each "
                        "per row")
    rows_per_group: Counter[str] = Counter()
    labels_per_group: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for row, (group, label) in enumerate(zip(groups, labels, strict=True)):
        if group is None:
            raise DataError(f"row {row} has a null group; give every row a group (the reader defaults it to "
                            "the row id)")
        rows_per_group[group] += 1
        if label is not None:
            labels_per_group[group][label] += 1

    strata: defaultdict[str | None, list[str]] = defaultdict(list)
    for group in rows_per_group:
        strata[_majority_label(labels_per_group[group])].append(group)

    assignment: dict[str, str] = {}
    for label, members in strata.items():
        if label is None:  # no row of these groups has a label: nothing to validate or test them on
            assignment.update(dict.fromkeys(members, TRAIN))
            continue
        assignment.update(_fill_stratum(members, rows_per_group, {TEST: test, VALIDATION: validation}, seed))
    return assignment


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
