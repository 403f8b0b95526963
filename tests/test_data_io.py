"""Shard IO on real files: finding shards, reading all three formats into the canonical columns, quarantining bad
rows with their reasons, refusing bad files with messages that name them, and writing Parquet atomically. The
bad-input corpus (tests/bad_inputs, test_bad_inputs.py) holds one file per kind of bad file and bad row."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from smallsec_ray.data.io import expand_paths, read_parquet_meta, read_shard, write_parquet_atomic
from smallsec_ray.errors import DataError
from smallsec_ray.spec import Columns

CLASSES = ["benign", "malicious"]
CMDLINE_COLUMNS = Columns(group=["technique_id", "binary", "command"])


def _json_lines(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _reasons(result) -> dict[str, str]:
    q = result.quarantined
    return dict(zip(q.column("id").to_pylist(), q.column("reason").to_pylist(), strict=True))


def _accounted(result) -> bool:
    return result.rows_in == result.rows.rows_out + result.rows.rows_quarantined == \
        result.good.num_rows + result.quarantined.num_rows


# ------------------------------------------------------------------------------------------------ expand_paths

def test_expand_paths_takes_folders_globs_and_uris_sorted_without_duplicates(shared_data, tmp_path):
    cmdline = shared_data / "cmdline"
    from_folder = expand_paths([str(cmdline)])
    assert from_folder == sorted(str(p) for p in cmdline.iterdir())
    assert expand_paths([str(cmdline / "*.jsonl"), str(cmdline / "gtfobins.jsonl")]) == \
        [p for p in from_folder if p.endswith(".jsonl")]
    assert expand_paths([f"file://{shared_data}/url/*.csv"]) == \
        sorted(f"file://{p}" for p in (shared_data / "url").glob("*.csv"))

    nested = tmp_path / "shards" / "day=1"
    nested.mkdir(parents=True)
    for name in ("b.parquet", "a.jsonl.gz", ".b.parquet.tmp-1", "_SUCCESS", "notes.txt"):
        (nested / name).write_bytes(b"x")
    expected = [str(nested / "a.jsonl.gz"), str(nested / "b.parquet")]
    assert expand_paths([str(tmp_path / "shards")]) == expected
    assert expand_paths([f"file://{tmp_path}/shards"]) == [f"file://{p}" for p in expected]
    assert expand_paths([f"file://{tmp_path}/**/*.parquet"]) == [f"file://{nested}/b.parquet"]


def test_expand_paths_names_the_entry_that_matches_nothing(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"x")
    entry = str(tmp_path / "x" / "*.parquet")
    with pytest.raises(FileNotFoundError, match=re.escape(f"entry '{entry}' matched no file")):
        expand_paths([str(tmp_path), entry])
    with pytest.raises(FileNotFoundError, match="matched no file"):
        expand_paths([f"file://{tmp_path}/missing.jsonl"])
    with pytest.raises(FileNotFoundError, match="entry 'nosuchfs://bucket/a.parquet' could not be listed"):
        expand_paths(["nosuchfs://bucket/a.parquet"])


# ------------------------------------------------------------------------------------------ real files, 3 formats

@pytest.mark.parametrize("name", ["gtfobins.jsonl", "tldr.jsonl.gz"])
def test_reads_real_jsonl_into_canonical_columns(shared_data, name):
    path = shared_data / "cmdline" / name
    records = _json_lines(path)
    result = read_shard(str(path), CMDLINE_COLUMNS, classes=CLASSES)

    assert result.rows_in == result.rows.rows_out == len(records) and result.rows.rows_quarantined == 0
    good = result.good
    assert good.column_names[:5] == ["id", "text", "label", "source", "group"]
    assert good.column("text").to_pylist() == [r["text"] for r in records]
    assert good.column("label").to_pylist() == [r["label"] for r in records]
    assert good.column("source").to_pylist() == [r["source"] for r in records]
    assert good.column("id")[0].as_py() == f"{name}:1"
    assert good.column("platform").to_pylist() == [r["platform"] for r in records]  # carried through


@pytest.mark.parametrize(("name", "group_column"), [
    ("atomic_red_team.jsonl", "technique_id"), ("gtfobins.jsonl", "binary"), ("tldr.jsonl.gz", "command")])
def test_group_comes_from_the_first_candidate_column_present(shared_data, name, group_column):
    path = shared_data / "cmdline" / name
    result = read_shard(str(path), CMDLINE_COLUMNS, classes=CLASSES, max_rows=300)
    assert result.good.column("group").to_pylist() == \
        [r[group_column] for r in _json_lines(path)[:300]]


def test_group_defaults_to_the_row_id_when_no_candidate_exists(shared_data):
    result = read_shard(str(shared_data / "cmdline" / "nl2bash.jsonl"), CMDLINE_COLUMNS, max_rows=50)
    assert result.good.column("group").to_pylist() == result.good.column("id").to_pylist()
    assert len(set(result.good.column("group").to_pylist())) == 50


def test_reads_real_csv_with_url_mapped_to_text(shared_data):
    path = shared_data / "url" / "tldr_doc_links.csv"
    result = read_shard(str(path), Columns(text=["url"]), classes=CLASSES)
    expected = pacsv.read_csv(path)

    assert result.rows_in == result.rows.rows_out == expected.num_rows == 6410
    assert result.good.column("text").to_pylist() == expected.column("url").to_pylist()
    assert set(result.good.column("label").to_pylist()) == {"benign"}
    assert result.good.column("source")[0].as_py() == "tldr_doc_links"  # the file stem: no source column
    assert result.good.column("id")[0].as_py() == "tldr_doc_links.csv:2"  # line 1 is the header
    assert result.good.column("command").to_pylist() == expected.column("command").to_pylist()


def test_parquet_round_trip_keeps_rows_columns_and_metadata(shared_data, tmp_path):
    source = read_shard(str(shared_data / "cmdline" / "atomic_red_team.jsonl"), CMDLINE_COLUMNS, classes=CLASSES)
    out = tmp_path / "out" / "atomic.parquet"
    meta = {b"smallsec.classes": json.dumps(CLASSES).encode()}
    write_parquet_atomic(source.good, str(out), metadata=meta)

    assert [p.name for p in out.parent.iterdir()] == ["atomic.parquet"]  # no temporary left behind
    assert read_parquet_meta(str(out))[b"smallsec.classes"] == meta[b"smallsec.classes"]
    again = read_shard(str(out), CMDLINE_COLUMNS, classes=CLASSES)
    assert again.format == "parquet" and again.rows.rows_quarantined == 0
    assert again.good.select(["id", "text", "label", "group", "technique_id", "placeholders"]).equals(
        source.good.select(["id", "text", "label", "group", "technique_id", "placeholders"]))


def test_parquet_with_integer_ids_and_labels_reads_them_as_strings(tmp_path):
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"id": [7, 8], "text": ["a", "b"], "label": [1, None]}), path)
    result = read_shard(str(path), Columns(), classes=["0", "1"])
    assert result.good.column("id").to_pylist() == ["7", "8"]
    assert result.good.column("label").to_pylist() == ["1", None]


def test_file_uri_reads_like_the_local_path(shared_data):
    path = shared_data / "cmdline" / "tldr.jsonl.gz"
    by_uri = read_shard(f"file://{path}", CMDLINE_COLUMNS, max_rows=100)
    by_path = read_shard(str(path), CMDLINE_COLUMNS, max_rows=100)
    assert by_uri.rows_in == 100
    assert by_uri.good.equals(by_path.good)


def test_canonical_named_column_not_chosen_is_kept_as_input_column(shared_data):
    result = read_shard(str(shared_data / "html" / "zphisher_pages.jsonl.gz"), Columns(text=["html"]),
                        classes=["benign", "phishing"], max_rows=5)
    assert result.good.column("text")[0].as_py().lstrip().lower().startswith("<")
    assert "input_text" in result.good.column_names and "html" in result.good.column_names


def test_forced_format_reads_any_file_name(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text('{"text": "ls"}\n')
    assert read_shard(str(path), Columns(), fmt="jsonl").rows.rows_out == 1
    with pytest.raises(DataError, match=f"{re.escape(str(path))}: cannot tell the format .* set data.format"):
        read_shard(str(path), Columns())


# -------------------------------------------------------------------------------------------- bad rows and files

def test_jsonl_bad_lines_are_quarantined_with_line_numbers(tmp_path):
    lines = [
        b'{"id": 1, "text": "ls -la", "label": "benign"}',
        b'{"id": 2, "text": "caf\xe9", "label": "benign"}',  # latin-1, not UTF-8
        b'{"id": 3, "text": "whoami"',
        b'["a", "list"]',
        b"",  # a blank line is no row
        b'{"id": 5, "text": null, "label": "benign"}',
        b'{"id": 6, "url": "http://x.test/", "label": "malware"}',
        b'{"id": 7, "text": "' + b"A" * 5_242_880 + b'", "label": "malicious"}',
        b'{"id": 1, "text": "ls -la again", "label": "benign"}',
        b'{"id": 9, "text": "   ", "label": "benign"}',
        b'{"text": "no id", "label": null}',
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = read_shard(str(path), Columns(), classes=CLASSES)

    assert result.rows_in == 10 and _accounted(result)
    assert result.good.column("id").to_pylist() == ["1", "mixed.jsonl:11"]
    assert _reasons(result) == {
        "mixed.jsonl:2": "line 2: invalid UTF-8 at byte 22",
        "mixed.jsonl:3": "line 3: not valid JSON (Expecting ',' delimiter at column 27)",
        "mixed.jsonl:4": "line 4: not a JSON object (got a JSON list)",
        "5": "text is null (no text column has a value in this row)",
        "6": "label 'malware' is not one of ['benign', 'malicious']",
        "7": "text is 5,242,880 bytes, over data.max_text_bytes=100000",
        "1": "duplicate id '1' within the shard; its first row was kept",
        "9": "text is whitespace only",
    }
    raw = dict(zip(result.quarantined.column("id").to_pylist(), result.quarantined.column("text").to_pylist(),
                   strict=True))
    assert raw["mixed.jsonl:2"] == '{"id": 2, "text": "caf\\xe9", "label": "benign"}'  # raw line kept


def test_csv_bad_rows_are_quarantined_and_the_rest_read(tmp_path):
    path = tmp_path / "urls.csv.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"url,label,note\n"
                b"https://a.test/,benign,\n"
                b"https://b.test/\xff\xfe,malicious,x\n"
                b"https://c.test/,benign\n"
                b'"https://d.test/\n",malicious,"multi-line field"\n'
                b"https://e.test/,,unlabelled\n")
    result = read_shard(str(path), Columns(text=["url"]), classes=CLASSES)

    assert result.rows_in == 5 and _accounted(result)
    assert result.good.column("text").to_pylist() == ["https://a.test/", "https://d.test/\n", "https://e.test/"]
    assert result.good.column("label").to_pylist() == ["benign", "malicious", None]
    assert result.good.column("id").to_pylist() == ["urls.csv.gz:2", "urls.csv.gz:5", "urls.csv.gz:7"]
    assert _reasons(result) == {
        "urls.csv.gz:3": "line 3: invalid UTF-8 in column 'url' at byte 15",
        "urls.csv.gz:4": "line 4: 2 fields, the header has 3",
    }


@pytest.mark.parametrize("closing", [False, True])
def test_csv_an_unclosed_quote_does_not_swallow_the_lines_after_it(tmp_path, closing):
    """The quote on line 3 never closes (or closes on line 5 inside another field): the rows after it are
    read on their own, and every line is counted."""
    path = tmp_path / "urls.csv"
    last = 'https://e.test/,"malicious"\n' if closing else "https://e.test/,malicious\n"
    path.write_text('url,label\nhttps://a.test/,benign\n"https://b.test/,benign\nhttps://c.test/,benign\n'
                    "https://d.test/,malicious\n" + last)
    result = read_shard(str(path), Columns(text=["url"]), classes=CLASSES)

    assert result.rows_in == 5 and _accounted(result)
    assert result.good.column("text").to_pylist() == ["https://a.test/", "https://c.test/", "https://d.test/",
                                                       "https://e.test/"]
    assert result.good.column("id").to_pylist() == ["urls.csv:2", "urls.csv:4", "urls.csv:5", "urls.csv:6"]
    [(row_id, reason)] = _reasons(result).items()
    assert row_id == "urls.csv:3" and reason.startswith("line 3: a quote opened here does not close properly")


def test_max_rows_counts_bad_rows_too(tmp_path):
    path = tmp_path / "few.jsonl"
    path.write_bytes(b'{"text": "a"}\nnot json\n{"text": "b"}\n{"text": "c"}\n')
    result = read_shard(str(path), Columns(), max_rows=3)
    assert (result.rows_in, result.rows.rows_out, result.rows.rows_quarantined) == (3, 2, 1)


def test_missing_file_and_unreadable_metadata_name_the_file(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}/gone.parquet: no such file")):
        read_shard(str(tmp_path / "gone.parquet"), Columns())
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match=re.escape(f"{bad}: cannot read its Parquet footer")):
        read_parquet_meta(str(bad))
