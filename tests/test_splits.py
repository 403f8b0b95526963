"""Group-disjoint stratified splits (on real command lines) and class-conditional label noise."""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter, defaultdict

import pyarrow as pa
import pytest

from smallsec_ray.data.noise import inject_label_noise
from smallsec_ray.data.schema import GROUP, ID, LABEL, SPLIT, SPLITS, TRUE_LABEL
from smallsec_ray.data.splits import assign_splits, split_table
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
    groups, labels = table[GROUP].to_pylist(), table[LABEL].to_pylist()
    return split_table(table, assign_splits(groups, labels, validation, test, seed))


def test_every_group_lies_in_exactly_one_split(cmdlines):
    table = _splits_of(cmdlines)
    splits_per_group = defaultdict(set)
    for group, split in zip(table[GROUP].to_pylist(), table[SPLIT].to_pylist(), strict=True):
        splits_per_group[group].add(split)
    assert all(len(s) == 1 for s in splits_per_group.values())
    assert set(table[SPLIT].to_pylist()) == set(SPLITS)
    assert table.num_rows == cmdlines.num_rows


def test_each_label_gets_its_share_of_rows_in_each_split(cmdlines):
    table = _splits_of(cmdlines, validation=0.1, test=0.2)
    per_label = Counter(zip(table[LABEL].to_pylist(), table[SPLIT].to_pylist(), strict=True))
    for label in ("benign", "malicious"):
        total = sum(n for (lab, _), n in per_label.items() if lab == label)
        assert per_label[label, "test"] / total == pytest.approx(0.2, abs=0.03), label
        assert per_label[label, "validation"] / total == pytest.approx(0.1, abs=0.03), label


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


def test_split_table_names_a_group_missing_from_the_assignment():
    table = pa.table({GROUP: ["a", "b"]})
    with pytest.raises(DataError, match="'b'"):
        split_table(table, {"a": "train"})


def test_shares_that_leave_no_training_rows_are_refused():
    with pytest.raises(SpecError, match="below 1.0"):
        assign_splits(["a"], ["benign"], validation=0.5, test=0.5, seed=0)


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


def test_stratifying_by_source_gives_every_source_its_share(cmdlines):
    sources = [g.split(":")[0] for g in cmdlines[GROUP].to_pylist()]
    assignment = assign_splits(cmdlines[GROUP].to_pylist(), cmdlines[LABEL].to_pylist(), 0.15, 0.0, 0, sources)
    per_source = defaultdict(Counter)
    for group, source in zip(cmdlines[GROUP].to_pylist(), sources, strict=True):
        per_source[source][assignment[group]] += 1
    for source, counts in per_source.items():
        share = counts["validation"] / sum(counts.values())
        assert 0.08 <= share <= 0.25, (source, counts)


def test_column_noise_takes_another_columns_labels():
    from smallsec_ray.data.noise import apply_noise, plan_noise

    table = pa.table({ID: ["a", "b", "c"], LABEL: ["malicious", "benign", None],
                      "rule_label": ["benign", "malicious", "malicious"]})
    noisy = apply_noise(table, plan_noise("column", {}, ["benign", "malicious"], 0, column="rule_label"))
    assert noisy[LABEL].to_pylist() == ["benign", "malicious", None]  # unlabelled rows stay unlabelled
    assert noisy[TRUE_LABEL].to_pylist() == ["malicious", "benign", None]
