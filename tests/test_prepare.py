"""The prepare stage: a split given in the data is kept for the whole group, the rest is split by a hash of
the group, whole groups stay in one split across shards and parts, ids repeated across shards are kept
once, and an input column named like one of the tool's own columns does not collide with it."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from smallsec_ray.data import buckets
from smallsec_ray.data.splits import hash_splits
from smallsec_ray.errors import DataError
from smallsec_ray.prepare import run_prepare
from smallsec_ray.spec import parse_spec
from smallsec_ray.stages import Stage, run_stages


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def prepare(tmp_path: Path, labelled: str | list[str], noisy: str, split: dict | None = None, **parts):
    spec = parse_spec({"name": "p", "workload": "distill", "artifact": "cmdline",
                       "data": {"labelled": labelled if isinstance(labelled, list) else [labelled],
                                "noisy": [noisy], "columns": {"split": ["fixed_split"]},
                                "split": split or {"validation": 0.0, "test": 0.0}, **parts},
                       "output": str(tmp_path / "run")})
    results = run_stages(spec, [Stage("prepare", run_prepare, reads=("data",))], tmp_path / "run",
                         echo=lambda _: None)
    data = results["prepare"]
    tables = [pq.read_table(tmp_path / "run" / s) for s in data.shards(*data.parts)]
    return data, pa.concat_tables(tables, promote_options="permissive")


def test_a_given_split_holds_for_its_whole_group_and_tool_columns_do_not_collide(ray_local, tmp_path):
    labelled = write_jsonl(tmp_path / "clean.jsonl", [
        {"text": "whoami /all", "label": "malicious", "group": "g1", "fixed_split": "validation", "probs": "x"},
        {"text": "whoami /priv", "label": "malicious", "group": "g1", "probs": "y"},  # its group's split
        {"text": "ls -la", "label": "benign", "group": "g2", "fixed_split": "train", "probs": "z"},
        {"text": "cat notes", "label": "benign", "group": "g3", "fixed_split": "later", "reason": "r",
         "split": "test"},  # not a split; the user's own reason and split columns
    ])
    noisy = write_jsonl(tmp_path / "noisy.jsonl", [{"text": f"echo {i}", "label": "benign", "group": f"n{i}"}
                                                   for i in range(5)])
    data, rows = prepare(tmp_path, labelled, noisy)
    split_of = dict(zip(rows["text"].to_pylist(), rows["split"].to_pylist(), strict=True))
    assert split_of["whoami /all"] == split_of["whoami /priv"] == "validation"
    assert split_of["ls -la"] == "train" and all(split_of[f"echo {i}"] == "train" for i in range(5))
    assert data.parts["labelled"].quarantine_reasons == {"split '…' is not one of": 1}
    assert data.parts["labelled"].rows.rows_quarantined == 1
    # The user's own "probs" column is kept, renamed: it must not pass for the teacher's probabilities.
    assert "probs" not in rows.column_names
    assert pc.count(rows["input_probs"]).as_py() == 3
    # So are "reason" and "split": the quarantined row keeps both beside the tool's own.
    quarantine = pq.read_table(tmp_path / "run" / data.parts["labelled"].quarantine[0])
    assert quarantine["input_reason"].to_pylist() == ["r"] and quarantine["input_split"].to_pylist() == ["test"]
    assert quarantine["reason"].to_pylist()[0].startswith("split 'later' is not one of")


def test_a_group_given_two_splits_is_an_error_naming_it(ray_local, tmp_path):
    labelled = write_jsonl(tmp_path / "clean.jsonl", [
        {"text": "a", "label": "benign", "group": "g1", "fixed_split": "train"},
        {"text": "b", "label": "benign", "group": "g1", "fixed_split": "validation"}])
    noisy = write_jsonl(tmp_path / "noisy.jsonl", [{"text": "c", "label": "benign"}])
    with pytest.raises(Exception, match="group 'g1' has rows in split 'train' and in split 'validation' "
                                        r"\(data.columns.split; in .*clean.jsonl\)") as err:
        prepare(tmp_path, labelled, noisy)
    assert isinstance(err.value, DataError) or isinstance(getattr(err.value, "cause", None), DataError)


def test_a_truncated_parquet_stops_the_run_with_one_line_naming_it(ray_local, tmp_path, capsys):
    from smallsec_ray.cli import main

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": ["ls"] * 500, "label": ["benign"] * 500}), good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:200])
    spec = tmp_path / "job.yaml"
    spec.write_text(json.dumps({"name": "t", "workload": "distill", "artifact": "cmdline",
                                "data": {"labelled": [str(good), str(cut)], "on_bad_file": "error"},
                                "output": str(tmp_path / "run")}))
    assert main(["run", str(spec), "--until", "prepare"]) == 2
    err = capsys.readouterr().err
    [line] = [x for x in err.splitlines() if x.startswith("error:")]
    assert f"error: {cut}: cannot read it as parquet" in line and "on_bad_file: skip" in line
    assert "\x1b[" not in err and "Traceback" not in err and "ray::" not in err


def test_an_id_given_in_two_shards_is_kept_once_and_the_repeat_quarantined(ray_local, tmp_path):
    labelled = write_jsonl(tmp_path / "clean.jsonl", [
        {"id": "a", "text": "ls", "label": "benign"}, {"id": "b", "text": "whoami", "label": "malicious"}])
    noisy = write_jsonl(tmp_path / "noisy.jsonl", [
        {"id": "b", "text": "whoami /all", "label": "benign"}, {"id": "c", "text": "pwd", "label": "benign"},
        {"text": "echo no id"}])
    data, rows = prepare(tmp_path, labelled, noisy)
    assert sorted(rows["id"].to_pylist()) == ["a", "b", "c", "noisy.jsonl:3"]
    assert rows.filter(pc.equal(rows["id"], "b"))["text"].to_pylist() == ["whoami"]  # the first one kept
    noisy_part = data.parts["noisy"]
    assert (noisy_part.rows.rows_in, noisy_part.rows.rows_out, noisy_part.rows.rows_quarantined) == (3, 2, 1)
    assert noisy_part.quarantine_reasons == {"id '…' is also in another shard": 1}
    [moved] = [pq.read_table(tmp_path / "run" / q) for q in noisy_part.quarantine]
    assert moved["id"].to_pylist() == ["b"]
    assert moved["reason"].to_pylist() == [f"id 'b' is also in {labelled} (the first is kept); ids must be unique "
                                           "across shards"]
    assert data.rows.rows_in == data.rows.rows_out + data.rows.rows_quarantined == 5


def test_whole_groups_share_one_split_across_shards_parts_and_buckets(ray_local, tmp_path, monkeypatch):
    monkeypatch.setattr(buckets, "BUCKET_ROWS", 50)  # several settle tasks, as at scale
    n = 80
    labelled = [write_jsonl(tmp_path / f"clean-{k}.jsonl", [
        {"id": f"c{k}-{i}", "text": f"whoami {i}", "label": "benign", "group": f"g{i}"} for i in range(k, n, 2)])
        for k in range(2)]
    noisy = write_jsonl(tmp_path / "noisy.jsonl", [
        {"id": f"n{i}", "text": f"id {i}", "label": "malicious", "group": f"g{i}"} for i in range(n)])
    unlabelled = write_jsonl(tmp_path / "pool.jsonl", [{"id": f"p{i}", "text": f"ls {i}", "group": f"g{i}"}
                                                       for i in range(n)]
                             + [{"id": f"u{i}", "text": f"pwd {i}", "group": f"u{i}"} for i in range(n)]
                             + [{"id": "n7", "text": "again", "group": "g7"}])  # an id of the noisy shard
    test = write_jsonl(tmp_path / "held-out.jsonl", [{"id": "t5", "text": "nc -l", "label": "malicious",
                                                      "group": "g5"}])
    data, rows = prepare(tmp_path, labelled, noisy, {"validation": 0.25, "test": 0.25, "seed": 3},
                         unlabelled=[unlabelled], test=[test])
    split_of: dict[str, set] = {}
    for group, split in zip(rows["group"].to_pylist(), rows["split"].to_pylist(), strict=True):
        split_of.setdefault(group, set()).add(split)
    assert all(len(splits) == 1 for splits in split_of.values())
    assert split_of["g5"] == {"test"}  # a group of the explicit test set is test in every part
    assert all(split_of[f"u{i}"] == {"train"} for i in range(n))  # no labelled row: train
    # The other groups by the hash of their name and the seed, unlabelled rows with their group.
    free = [f"g{i}" for i in range(n) if i != 5]
    assert [split_of[g].pop() for g in free] == hash_splits(pa.array(free), 0.25, 0.25, 3).to_pylist()
    assert data.groups["train"] + data.groups["validation"] + data.groups["test"] == 2 * n
    assert data.rows.rows_in == data.rows.rows_out + 1 == rows.num_rows + 1 == 4 * n + 2
    [moved] = [pq.read_table(tmp_path / "run" / q) for q in data.parts["unlabelled"].quarantine]
    assert moved["id"].to_pylist() == ["n7"] and noisy in moved["reason"][0].as_py()
