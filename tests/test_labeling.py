"""Labelling on Ray Data: one output row per valid input row, resumable shard by shard, rows accounted."""

from __future__ import annotations

import gzip
import json
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY_CLASSES

from smallsec_ray.data.schema import (
    GROUP,
    ID,
    LABEL,
    META_CLASSES,
    META_TEACHER,
    PROBS,
    REASON,
    SOURCE,
    SPLIT,
    TEXT,
    TRUNCATED,
)
from smallsec_ray.errors import StageError
from smallsec_ray.labeling import label_shard, label_shards
from smallsec_ray.teachers.backends import DEFAULT_TEMPLATE, make_teacher

MAX_LENGTH = 64
ROWS_PER_SHARD = 30


def _jsonl_rows(path: Path, n: int) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in islice(f, n)]


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory) -> list[str]:
    """Four prepared shards of real command lines (Atomic Red Team and tldr), with an extra column, some
    rows over MAX_LENGTH tokens and one row without text."""
    rows = (_jsonl_rows(shared_data / "cmdline" / "atomic_red_team.jsonl", 2 * ROWS_PER_SHARD)
            + _jsonl_rows(shared_data / "cmdline" / "tldr.jsonl.gz", 2 * ROWS_PER_SHARD))
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    folder = tmp_path_factory.mktemp("prepared")
    paths = []
    for s in range(4):
        part = rows[s * ROWS_PER_SHARD:(s + 1) * ROWS_PER_SHARD]
        texts = [r["text"] for r in part]
        if s == 1:
            texts[5] = None
        table = pa.table({ID: [f"{s}-{i}" for i in range(len(part))], TEXT: texts,
                          LABEL: [r["label"] for r in part], SOURCE: [r["source"] for r in part],
                          GROUP: [f"g{s}-{i}" for i in range(len(part))], SPLIT: ["train"] * len(part),
                          "platform": [r["platform"] for r in part]})
        paths.append(str(folder / f"part-{s:05d}.parquet"))
        pq.write_table(table, paths[-1])
    return paths


def _read_all(paths: list[str]) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in paths])


def _teacher_cfg(model: Path, backend: str) -> dict:
    # The job spec's teacher keys, as the label stage passes them.
    return {"kind": "classifier", "backend": backend, "model": str(model), "max_length": MAX_LENGTH,
            "dtype": "float32", "artifact": "cmdline", "prompt_template": DEFAULT_TEMPLATE, "verbalizers": {}}


@pytest.mark.timeout(600)
def test_rerun_after_a_crash_labels_each_row_once(ray_local, shards, tiny_classifier, tmp_path):
    out = tmp_path / "labels"
    # A first run that died after two shards (HF backend, one replica) ...
    first = label_shards(shards[:2], str(out), _teacher_cfg(tiny_classifier, "hf"), TINY_CLASSES, replicas=1,
                         cpus_per_replica=0.5, batch_size=16, on_too_long="quarantine")
    assert first.rows.rows_in == 2 * ROWS_PER_SHARD
    # ... and was killed while writing the third: its temporary files and quarantine shard are left over.
    leftover_tmp = out / "probs" / ".part-00002.parquet.dead0001.tmp"
    leftover_tmp.write_bytes(b"partial")
    stale_quarantine = out / "quarantine" / "part-00002.parquet"
    stale_quarantine.write_bytes(Path(first.shards[0].quarantine).read_bytes())

    result = label_shards(shards, str(out), _teacher_cfg(tiny_classifier, "vllm"), TINY_CLASSES,
                          replicas=(1, 2), cpus_per_replica=0.5, batch_size=16, on_too_long="quarantine")

    assert [s.skipped for s in result.shards] == [True, True, False, False]
    inputs = _read_all(shards)
    labelled = _read_all([s.output for s in result.shards])
    quarantined = _read_all([s.quarantine for s in result.shards if s.quarantine])
    ids = labelled[ID].to_pylist() + quarantined[ID].to_pylist()
    assert sorted(ids) == sorted(inputs[ID].to_pylist())  # every row once: none lost, none twice
    assert result.rows.rows_in == len(inputs) == result.rows.rows_out + result.rows.rows_quarantined
    for shard in result.shards:
        assert shard.rows_in == shard.rows_labelled + shard.rows_quarantined
    assert not list(out.rglob("*.tmp*"))

    # Quarantined: the row without text and exactly the rows over max_length.
    hf = make_teacher("classifier", "hf", str(tiny_classifier), TINY_CLASSES, max_length=MAX_LENGTH)
    texts = inputs[TEXT].to_pylist()
    too_long = {i for i, t in zip(inputs[ID].to_pylist(), texts, strict=True)
                if t is not None and hf.token_lengths([t])[0] > MAX_LENGTH}
    assert too_long and set(quarantined[ID].to_pylist()) == too_long | {"1-5"}
    assert set(quarantined[REASON].to_pylist()) == {
        "text is missing", f"text is over the teacher's max_length of {MAX_LENGTH} tokens "
        "(labeling.on_too_long: quarantine)"}
    assert not any(labelled[TRUNCATED].to_pylist())

    # Input columns kept; probabilities by class name, equal to the teacher's own on each row.
    assert labelled.column_names == inputs.column_names + [PROBS, TRUNCATED]
    assert labelled.schema.field(PROBS).type == pa.list_(pa.float32())
    probs = np.array(labelled[PROBS].to_pylist(), np.float32)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, hf.probs(labelled[TEXT].to_pylist()), atol=1e-4)
    for path in [s.output for s in result.shards]:
        meta = pq.read_schema(path).metadata
        assert json.loads(meta[META_CLASSES]) == TINY_CLASSES
        teacher = json.loads(meta[META_TEACHER])
        assert teacher["fingerprint"] == result.teacher["fingerprint"] and teacher["kind"] == "classifier"


@pytest.mark.parametrize("kind", ["classifier", "generative"])
def test_truncate_mode_labels_long_rows_and_flags_them(kind, shards, tiny_classifier, tiny_causal_lm, tmp_path):
    model = tiny_classifier if kind == "classifier" else tiny_causal_lm
    teacher = make_teacher(kind, "hf", str(model), TINY_CLASSES, max_length=MAX_LENGTH)
    result = label_shard(teacher, shards[1], tmp_path, batch_size=8, on_too_long="truncate")
    assert (result.rows_in, result.rows_labelled, result.rows_quarantined) == (ROWS_PER_SHARD, ROWS_PER_SHARD - 1, 1)
    labelled = pq.read_table(result.output)
    texts = labelled[TEXT].to_pylist()
    flags = [n > MAX_LENGTH for n in teacher.token_lengths(texts)]
    assert labelled[TRUNCATED].to_pylist() == flags and any(flags)
    assert result.rows_truncated == sum(flags)
    np.testing.assert_allclose(np.array(labelled[PROBS].to_pylist()), teacher.probs(texts), atol=1e-6)
    assert pq.read_table(result.quarantine)[REASON].to_pylist() == ["text is missing"]


def test_rerun_with_other_classes_is_refused(shards, tiny_classifier, tmp_path):
    teacher = make_teacher("classifier", "hf", str(tiny_classifier), TINY_CLASSES, max_length=MAX_LENGTH)
    label_shard(teacher, shards[0], tmp_path)
    with pytest.raises(StageError, match="other classes"):
        label_shards(shards[:1], str(tmp_path), _teacher_cfg(tiny_classifier, "hf"), TINY_CLASSES[::-1])
