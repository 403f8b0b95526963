"""The synthetic demo data set: files, parts, determinism, group-disjoint test part, realistic noise."""

from __future__ import annotations

import csv
import gzip
import json
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from smallsec_ray.data.demo import ARTIFACTS, CLASSES, FLIP_RATES, LAYOUT, PARTS, TEXT_COLUMN, write_demo_data
from smallsec_ray.data.schema import GROUP, ID, LABEL, SOURCE, TRUE_LABEL
from smallsec_ray.errors import SmallsecError


def read_rows(path: Path) -> list[dict]:
    """Reads one shard with the plain library for its format (independent of the project's readers)."""
    name = path.name
    if name.endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        if ".jsonl" in name:
            return [json.loads(line) for line in f]
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict[str, list[Path]], float]:
    out = tmp_path_factory.mktemp("demo")
    start = time.perf_counter()
    written = write_demo_data(out, seed=0)
    return out, written, time.perf_counter() - start


@pytest.fixture(scope="module")
def rows(demo) -> dict[str, list[dict]]:
    _, written, _ = demo
    return {key: [row for path in paths for row in read_rows(path)] for key, paths in written.items()}


def test_every_part_is_written_in_its_format_as_several_shards(demo, rows):
    out, written, _ = demo
    assert set(written) == {f"{a}/{p}" for a in ARTIFACTS for p in PARTS}
    for artifact in ARTIFACTS:
        for part in PARTS:
            paths = written[f"{artifact}/{part}"]
            layout = LAYOUT[artifact][part]
            assert 2 <= len(paths) <= 4
            assert all(p.is_file() and p.name.endswith("." + layout.fmt) and p.parent == out / artifact / part
                       for p in paths)
            columns = set(rows[f"{artifact}/{part}"][0])
            assert {ID, TEXT_COLUMN[artifact], LABEL, SOURCE, GROUP} <= columns
    formats = {layout.fmt.removesuffix(".gz") for parts in LAYOUT.values() for layout in parts.values()}
    assert formats == {"parquet", "jsonl", "csv"}
    assert "synthetic" in (out / "README.txt").read_text().lower()


def test_sizes_are_as_promised_and_writing_is_quick(demo, rows):
    _, _, seconds = demo
    assert len(rows["cmdline/labelled"]) == 800
    assert len(rows["cmdline/noisy"]) == 4000
    assert 700 <= len(rows["cmdline/unlabelled"]) <= 1300
    assert 600 <= len(rows["cmdline/test"]) <= 1000
    for artifact in ("url", "html"):
        assert len(rows[f"{artifact}/noisy"]) < len(rows["cmdline/noisy"])
    assert seconds < 20  # about a second on an idle laptop; the bound leaves room for a busy CI machine


def test_ids_are_unique_across_the_parts_of_an_artifact(rows):
    for artifact in ARTIFACTS:
        ids = [row[ID] for part in PARTS for row in rows[f"{artifact}/{part}"]]
        assert len(ids) == len(set(ids))


def test_labels_are_sane_per_part(rows):
    for artifact in ARTIFACTS:
        benign, positive = CLASSES[artifact]
        assert all(row[LABEL] is None for row in rows[f"{artifact}/unlabelled"])
        assert {row["true_label"] for row in rows[f"{artifact}/unlabelled"]} == {benign, positive}
        for part in ("labelled", "noisy", "test"):
            labels = Counter(row[LABEL] for row in rows[f"{artifact}/{part}"])
            assert set(labels) == {benign, positive}, (artifact, part)
            assert 0.15 <= labels[positive] / labels.total() <= 0.6, (artifact, part, labels)


def test_test_groups_appear_in_no_other_part(rows):
    for artifact in ARTIFACTS:
        test_groups = {row[GROUP] for row in rows[f"{artifact}/test"]}
        assert len(test_groups) >= 3, artifact
        for part in ("labelled", "noisy", "unlabelled"):
            assert not test_groups & {row[GROUP] for row in rows[f"{artifact}/{part}"]}, (artifact, part)


def test_noisy_part_has_the_noise_it_claims(rows):
    """Signature-style noise: whole groups mislabelled, holding about the share of each class claimed."""
    for artifact in ARTIFACTS:
        noisy = rows[f"{artifact}/noisy"]
        pairs = Counter((row[TRUE_LABEL], row[LABEL]) for row in noisy)
        for true_class, rate in FLIP_RATES[artifact].items():
            total = sum(n for (t, _), n in pairs.items() if t == true_class)
            flipped = total - pairs[true_class, true_class]
            assert flipped / total == pytest.approx(rate, abs=0.08), (artifact, true_class)
        flipped_in_group = {}
        for row in noisy:
            flipped_in_group.setdefault(row[GROUP], set()).add(row[TRUE_LABEL] != row[LABEL])
        mixed = [g for g, kinds in flipped_in_group.items() if len(kinds) > 1]
        # A group mixes flipped and kept rows only where it holds rows of both classes.
        for group in mixed:
            assert len({row[TRUE_LABEL] for row in noisy if row[GROUP] == group}) > 1, (artifact, group)
        for part in ("labelled", "test"):
            assert TRUE_LABEL not in rows[f"{artifact}/{part}"][0]


def test_no_single_token_separates_the_classes(rows):
    """Hard negatives (benign certutil, curl | sh installers, real login pages) keep the task from being trivial."""
    for artifact in ARTIFACTS:
        positive = CLASSES[artifact][1]
        test = rows[f"{artifact}/test"] + rows[f"{artifact}/labelled"]
        is_positive = [row[LABEL] == positive for row in test]
        with_token = Counter()  # token -> (rows with it that are positive, rows with it)
        for row, pos in zip(test, is_positive, strict=True):
            for token in set(row[TEXT_COLUMN[artifact]].split()):
                with_token[token, pos] += 1
        n, n_pos = len(test), sum(is_positive)
        best = max(max(hits + (n - n_pos) - misses, misses + n_pos - hits) / n
                   for token in {t for t, _ in with_token}
                   for hits, misses in [(with_token[token, True], with_token[token, False])])
        assert best < 0.95, artifact


def test_the_same_seed_writes_the_same_files_and_another_seed_other_rows(tmp_path):
    first = write_demo_data(tmp_path / "a", seed=1, scale=0.1)
    second = write_demo_data(tmp_path / "b", seed=1, scale=0.1)
    other = write_demo_data(tmp_path / "c", seed=2, scale=0.1)
    for key, paths in first.items():
        assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in second[key]], key
    texts = [row["text"] for row in read_rows(first["cmdline/labelled"][0])]
    assert texts != [row["text"] for row in read_rows(other["cmdline/labelled"][0])]


def test_a_scale_that_is_not_positive_is_refused(tmp_path):
    with pytest.raises(SmallsecError, match="scale"):
        write_demo_data(tmp_path, scale=0)
