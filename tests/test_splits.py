"""Group-disjoint splits (on real command lines): by hash of the group, as prepare assigns them, and
stratified for in-memory sets; and class-conditional label noise."""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter, defaultdict

import pyarrow as pa
import pytest

from smallsec_ray.data.noise import inject_label_noise
from smallsec_ray.data.schema import GROUP, ID, LABEL, SPLIT, SPLITS, TRUE_LABEL
from smallsec_ray.data.splits import (
    assign_splits,
    group_keys,
    hash_splits,
    row_splits,
    settle_groups,
    with_splits,
)
from smallsec_ray.errors import DataError, SpecError

CMDLINE_FILES = ("atomic_red_team.jsonl", "gtfobins.jsonl", "powershell_docs.jsonl", "tldr.jsonl.gz")


@pytest.fixture(scope="module")
def cmdlines(shared_data) -> pa.Table:
    """Real command lines, grouped by Atomic technique, GTFOBins binary, tldr command or PowerShell cmdlet."""
    rows = []
    for name in CMDLINE_FILES:
        path = shared_data / "cmdline" / name
        with (gzip.open(path, "rt") if name.endswith(".gz") else open(path)) as f:
            for i, line in enumerate(f):
                record = json.loads(line)
                group = record.get("technique_id") or record.get("binary") or record.get("command") \
                    or record.get("cmdlet")
                rows.append({ID: f"{name}:{i}", LABEL: record["label"], GROUP: f"{record['source']}:{group}"})
    return pa.Table.from_pylist(rows)


def _splits_of(table: pa.Table, validation: float = 0.1, test: float = 0.2, seed: int = 0) -> pa.Table:
    return table.append_column(SPLIT, hash_splits(table[GROUP], validation, test, seed))


def test_every_group_lies_in_exactly_one_split(cmdlines):
    table = _splits_of(cmdlines)
    splits_per_group = defaultdict(set)
    for group, split in zip(table[GROUP].to_pylist(), table[SPLIT].to_pylist(), strict=True):
        splits_per_group[group].add(split)
    assert all(len(s) == 1 for s in splits_per_group.values())
    assert set(table[SPLIT].to_pylist()) == set(SPLITS)
    assert table.num_rows == cmdlines.num_rows


def test_hash_splits_give_each_split_its_share_of_groups_and_rows_up_to_sampling_noise(cmdlines):
    table = _splits_of(cmdlines, validation=0.1, test=0.2)
    per_group = dict(zip(table[GROUP].to_pylist(), table[SPLIT].to_pylist(), strict=True))
    shares = Counter(per_group.values())
    assert shares["test"] / len(per_group) == pytest.approx(0.2, abs=0.02)
    assert shares["validation"] / len(per_group) == pytest.approx(0.1, abs=0.02)
    # Rows per label: not stratified any more, but with thousands of groups each label gets near its share.
    per_label = Counter(zip(table[LABEL].to_pylist(), table[SPLIT].to_pylist(), strict=True))
    for label in ("benign", "malicious"):
        total = sum(n for (lab, _), n in per_label.items() if lab == label)
        assert per_label[label, "test"] / total == pytest.approx(0.2, abs=0.06), label
        assert per_label[label, "validation"] / total == pytest.approx(0.1, abs=0.06), label


def test_a_groups_hash_split_depends_on_the_group_seed_and_shares_only(cmdlines):
    groups = cmdlines[GROUP]
    alone = {g: hash_splits(pa.array([g]), 0.1, 0.2, seed=3)[0].as_py() for g in groups.to_pylist()[:300]}
    together = dict(zip(groups.to_pylist(), hash_splits(groups, 0.1, 0.2, seed=3).to_pylist(), strict=True))
    assert all(together[g] == split for g, split in alone.items())
    other_seed = dict(zip(groups.to_pylist(), hash_splits(groups, 0.1, 0.2, seed=4).to_pylist(), strict=True))
    assert sum(together[g] != other_seed[g] for g in together) > len(together) * 0.1
    # A larger test share keeps every test group in test: the hash is a fixed share, the bounds move.
    wider = dict(zip(groups.to_pylist(), hash_splits(groups, 0.1, 0.3, seed=3).to_pylist(), strict=True))
    assert all(wider[g] == "test" for g in together if together[g] == "test")


def _keys(table: pa.Table, shard: int, test_part: bool = False, validation: float = 0.2, test: float = 0.3):
    splits = row_splits(table, validation, test, 0, test_part)
    return splits, group_keys(table, splits, test_part, shard)


def _settle(*shards: tuple[pa.Table, bool]) -> tuple[dict, list[pa.Table]]:
    """Prepare's split rounds on in-memory shards: row splits, settled groups, each shard's final splits."""
    keyed = [_keys(table, n, test_part) for n, (table, test_part) in enumerate(shards)]
    counts, overrides = settle_groups(pa.concat_tables([k for _, k in keyed]), 0.2, 0.3, 0,
                                      [f"shard-{n}" for n in range(len(shards))])
    return counts, [with_splits(table, splits, overrides) for (table, _), (splits, _) in zip(shards, keyed,
                                                                                             strict=True)]


def test_settled_groups_keep_whole_groups_together_with_given_test_and_unlabelled_rows():
    n = 400
    labelled = pa.table({GROUP: [f"g{i}" for i in range(n)], LABEL: ["benign"] * n,
                         SPLIT: ["validation"] + [None] * (n - 1)})
    # g0: a given split on one row holds for its other rows; g1: an explicit test set's group is test
    # everywhere; u*: groups without a labelled row are train; g2..: unlabelled rows follow their group.
    unlabelled = pa.table({GROUP: ["g0", "g1"] + [f"u{i}" for i in range(n)] + [f"g{i}" for i in range(2, n)],
                           LABEL: pa.nulls(2 * n, pa.string())})
    test = pa.table({GROUP: ["g1"], LABEL: ["malicious"]})
    counts, (lab, unl, tst) = _settle((labelled, False), (unlabelled, False), (test, True))
    split_of = defaultdict(set)
    for table in (lab, unl, tst):
        for group, split in zip(table[GROUP].to_pylist(), table[SPLIT].to_pylist(), strict=True):
            split_of[group].add(split)
    assert all(len(s) == 1 for s in split_of.values())
    assert split_of["g0"] == {"validation"} and split_of["g1"] == {"test"}
    assert all(split_of[f"u{i}"] == {"train"} for i in range(n))
    hashed = Counter(next(iter(split_of[f"g{i}"])) for i in range(2, n))
    assert hashed["test"] > 0.2 * n and hashed["validation"] > 0.1 * n  # unlabelled rows went with them
    assert sum(counts.values()) == len(split_of) and counts["train"] >= n


def test_a_group_given_two_splits_in_two_shards_is_named_with_both_shards():
    first = pa.table({GROUP: ["a", "g"], LABEL: ["benign"] * 2, SPLIT: [None, "train"]})
    second = pa.table({GROUP: ["g"], LABEL: ["benign"], SPLIT: ["test"]})
    with pytest.raises(DataError, match="group 'g' has rows in split 'test' and in split 'train' .*"
                                        "in shard-0 and shard-1"):
        _settle((first, False), (second, False))


# Stratified, for sets held in memory (assign_splits) --------------------------------------------------

def test_assignment_does_not_depend_on_row_order(cmdlines):
    groups, labels = cmdlines[GROUP].to_pylist(), cmdlines[LABEL].to_pylist()
    order = list(range(len(groups)))
    random.Random(7).shuffle(order)
    shuffled = assign_splits([groups[i] for i in order], [labels[i] for i in order], 0.1, 0.2, seed=3)
    assert shuffled == assign_splits(groups, labels, 0.1, 0.2, seed=3)


def test_another_seed_gives_another_split(cmdlines):
    groups, labels = cmdlines[GROUP].to_pylist(), cmdlines[LABEL].to_pylist()
    first, second = (assign_splits(groups, labels, 0.1, 0.2, seed) for seed in (0, 1))
    moved = sum(first[g] != second[g] for g in first)
    assert moved > len(first) * 0.1


def test_a_group_too_big_for_test_stays_in_train_and_small_groups_fill_test():
    groups = ["huge"] * 1000 + [f"small-{i}" for i in range(100) for _ in range(5)]
    assignment = assign_splits(groups, ["benign"] * len(groups), validation=0.0, test=0.2, seed=0)
    assert assignment["huge"] == "train"
    test_rows = sum(groups.count(g) for g, split in assignment.items() if split == "test")
    assert 0.5 * 300 <= test_rows <= 2 * 300  # target: 20% of 1,500 rows


def test_groups_without_a_labelled_row_all_train_and_leave_the_labelled_shares_alone():
    groups = [f"g{i}" for i in range(200)] + ["g0"]  # g0 also has a labelled row: it is split as labelled
    labels = [None] * 100 + ["benign"] * 100 + ["benign"]
    assignment = assign_splits(groups, labels, validation=0.1, test=0.3, seed=5)
    assert all(assignment[f"g{i}"] == "train" for i in range(1, 100))
    labelled = [assignment[f"g{i}"] for i in [0, *range(100, 200)]]
    assert 29 <= labelled.count("test") <= 32 and 8 <= labelled.count("validation") <= 11  # of 102 rows


def test_shares_that_leave_no_training_rows_are_refused():
    with pytest.raises(SpecError, match="below 1.0"):
        assign_splits(["a"], ["benign"], validation=0.5, test=0.5, seed=0)
    with pytest.raises(SpecError, match="below 1.0"):
        hash_splits(pa.array(["a"]), validation=0.5, test=0.5, seed=0)


# Label noise ----------------------------------------------------------------------------------------

def _labelled_rows(n: int, classes: list[str], offset: int = 0) -> pa.Table:
    return pa.table({ID: [f"row-{offset + i}" for i in range(n)], LABEL: [classes[i % len(classes)] for i in range(n)]})


def test_flip_rates_match_the_rates_asked_per_class():
    table = _labelled_rows(6000, ["benign", "malicious"])
    noisy = inject_label_noise(table, {"malicious": 0.3, "benign": 0.05}, ["benign", "malicious"], seed=1)
    pairs = Counter(zip(noisy[TRUE_LABEL].to_pylist(), noisy[LABEL].to_pylist(), strict=True))
    assert pairs["malicious", "benign"] / 3000 == pytest.approx(0.3, abs=0.03)
    assert pairs["benign", "malicious"] / 3000 == pytest.approx(0.05, abs=0.015)


def test_flips_among_several_classes_go_uniformly_to_the_others():
    classes = ["benign", "phishing", "malware"]
    noisy = inject_label_noise(_labelled_rows(9000, classes), {"benign": 0.4}, classes, seed=2)
    pairs = Counter(zip(noisy[TRUE_LABEL].to_pylist(), noisy[LABEL].to_pylist(), strict=True))
    assert pairs["benign", "phishing"] / 3000 == pytest.approx(0.2, abs=0.03)
    assert pairs["benign", "malware"] / 3000 == pytest.approx(0.2, abs=0.03)
    assert pairs["phishing", "phishing"] == pairs["malware", "malware"] == 3000


def test_true_label_keeps_the_original_and_unlabelled_rows_are_untouched():
    table = pa.table({ID: ["a", "b", "c", "d"], LABEL: ["malicious", None, "benign", "malicious"]})
    noisy = inject_label_noise(table, {"malicious": 1.0, "benign": 1.0}, ["benign", "malicious"], seed=0)
    assert noisy[TRUE_LABEL].to_pylist() == ["malicious", None, "benign", "malicious"]
    assert noisy[LABEL].to_pylist() == ["benign", None, "malicious", "benign"]


def test_flips_depend_on_row_id_and_seed_only():
    classes = ["benign", "malicious"]
    rates = {"malicious": 0.3, "benign": 0.1}
    table = _labelled_rows(2000, classes)
    once = inject_label_noise(table, rates, classes, seed=4)[LABEL].to_pylist()
    grown = pa.concat_tables([_labelled_rows(500, classes, offset=5000), table.slice(1000), table.slice(0, 1000)])
    again = dict(zip(grown[ID].to_pylist(), inject_label_noise(grown, rates, classes, seed=4)[LABEL].to_pylist(),
                     strict=True))
    assert [again[i] for i in table[ID].to_pylist()] == once
    assert inject_label_noise(table, rates, classes, seed=5)[LABEL].to_pylist() != once


def test_a_label_outside_the_classes_is_named():
    table = pa.table({ID: ["r1"], LABEL: ["phish"]})
    with pytest.raises(DataError, match="'r1'.*'phish'"):
        inject_label_noise(table, {"benign": 0.1}, ["benign", "malicious"], seed=0)


def test_a_flip_rate_outside_zero_one_is_refused():
    with pytest.raises(SpecError, match="flip_rates.benign"):
        inject_label_noise(_labelled_rows(2, ["benign"]), {"benign": 1.5}, ["benign", "malicious"], seed=0)


def test_group_noise_mislabels_whole_groups_holding_the_share_asked(cmdlines):
    from smallsec_ray.data.noise import apply_noise, plan_noise

    classes = ["benign", "malicious"]
    groups, labels = cmdlines[GROUP].to_pylist(), cmdlines[LABEL].to_pylist()
    plan = plan_noise("groups", {"malicious": 0.3, "benign": 0.1}, classes, 7, groups, labels)
    noisy = apply_noise(cmdlines, plan)
    pairs = Counter(zip(noisy[TRUE_LABEL].to_pylist(), noisy[LABEL].to_pylist(), strict=True))
    rows_of = Counter(labels)
    # Whole groups: a share close to the one asked, never more than one group off.
    biggest = max(Counter(groups).values())
    assert abs(pairs["malicious", "benign"] - 0.3 * rows_of["malicious"]) <= biggest
    assert abs(pairs["benign", "malicious"] - 0.1 * rows_of["benign"]) <= biggest
    assert pairs["malicious", "benign"] / rows_of["malicious"] == pytest.approx(0.3, abs=0.03)
    # ... and every row of a flipped group carries the same new label, every other row its own.
    by_group = defaultdict(set)
    for group, label, true in zip(groups, noisy[LABEL].to_pylist(), labels, strict=True):
        by_group[group].add((label, group in plan.flipped_groups))
        if group not in plan.flipped_groups:
            assert label == true
    assert all(len(v) == 1 for g, v in by_group.items() if g in plan.flipped_groups)
    # The choice depends on the groups and the seed only, not on row order.
    shuffled = cmdlines.take(pa.array(random.Random(0).sample(range(cmdlines.num_rows), cmdlines.num_rows)))
    again = plan_noise("groups", {"malicious": 0.3, "benign": 0.1}, classes, 7, shuffled[GROUP].to_pylist(),
                       shuffled[LABEL].to_pylist())
    assert again.flipped_groups == plan.flipped_groups


def test_column_noise_takes_another_columns_labels():
    from smallsec_ray.data.noise import apply_noise, plan_noise

    table = pa.table({ID: ["a", "b", "c"], LABEL: ["malicious", "benign", None],
                      "rule_label": ["benign", "malicious", "malicious"]})
    noisy = apply_noise(table, plan_noise("column", {}, ["benign", "malicious"], 0, column="rule_label"))
    assert noisy[LABEL].to_pylist() == ["benign", "malicious", None]  # unlabelled rows stay unlabelled
    assert noisy[TRUE_LABEL].to_pylist() == ["malicious", "benign", None]
