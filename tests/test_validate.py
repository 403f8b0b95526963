"""Row validation: each bad row is quarantined with the reason a user needs, good rows pass untouched."""

from __future__ import annotations

import pyarrow as pa

from smallsec_ray.data.validate import validate_table

CLASSES = ["benign", "malicious"]


def _table(rows: list[dict], text_type: pa.DataType | None = None) -> pa.Table:
    return pa.table({
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "text": pa.array([r.get("text") for r in rows], text_type or pa.string()),
        "label": pa.array([r.get("label") for r in rows], pa.string()),
        "source": pa.array(["s"] * len(rows), pa.string()),
        "group": pa.array([r["id"] for r in rows], pa.string()),
        "platform": pa.array(["linux"] * len(rows), pa.string()),
    })


def _reasons(quarantined: pa.Table) -> dict[str, str]:
    return dict(zip(quarantined.column("id").to_pylist(), quarantined.column("reason").to_pylist(), strict=True))


def test_each_bad_row_gets_its_reason_and_good_rows_pass():
    table = _table([
        {"id": "ok", "text": "ls -la", "label": "benign"},
        {"id": "unlabelled", "text": "whoami"},
        {"id": "null", "text": None, "label": "benign"},
        {"id": "empty", "text": "", "label": "benign"},
        {"id": "blank", "text": " \t\n", "label": "benign"},
        {"id": "long", "text": "a" * 5_242_880, "label": "malicious"},
        {"id": "class", "text": "evil.exe", "label": "malware"},
    ])
    good, quarantined = validate_table(table, CLASSES, max_text_bytes=100_000)

    assert good.column("id").to_pylist() == ["ok", "unlabelled"]
    assert good.column("label").to_pylist() == ["benign", None]
    assert _reasons(quarantined) == {
        "null": "text is null (no text column has a value in this row)",
        "empty": "text is empty",
        "blank": "text is whitespace only",
        "long": "text is 5,242,880 bytes, over data.max_text_bytes=100000",
        "class": "label 'malware' is not one of ['benign', 'malicious']",
    }
    assert good.num_rows + quarantined.num_rows == table.num_rows
    assert quarantined.column_names == [*table.column_names, "reason"]
    assert quarantined.column("platform").to_pylist() == ["linux"] * 5


def test_text_limit_counts_utf8_bytes_not_characters():
    table = _table([{"id": "a", "text": "é" * 6}, {"id": "b", "text": "e" * 6}])  # 12 bytes vs 6 bytes
    good, quarantined = validate_table(table, CLASSES, max_text_bytes=10)
    assert good.column("id").to_pylist() == ["b"]
    assert _reasons(quarantined) == {"a": "text is 12 bytes, over data.max_text_bytes=10"}


def test_duplicate_id_keeps_the_first_good_row():
    table = _table([
        {"id": "x", "text": ""},  # quarantined for its text: the later good "x" is the one kept
        {"id": "x", "text": "first good"},
        {"id": "y", "text": "y1"},
        {"id": "x", "text": "second good"},
        {"id": "y", "text": "y2"},
    ])
    good, quarantined = validate_table(table, None, max_text_bytes=100)
    assert good.column("text").to_pylist() == ["first good", "y1"]
    assert quarantined.column("reason").to_pylist() == [
        "text is empty",
        "duplicate id 'x' within the shard; its first row was kept",
        "duplicate id 'y' within the shard; its first row was kept",
    ]


def test_no_classes_accepts_any_label():
    table = _table([{"id": "a", "text": "t", "label": "phishing"}])
    good, quarantined = validate_table(table, None, max_text_bytes=100)
    assert good.num_rows == 1 and quarantined.num_rows == 0


def test_binary_text_is_decoded_and_invalid_utf8_quarantined_with_raw_bytes_kept():
    table = _table([{"id": "ok", "text": "héllo".encode()}, {"id": "bad", "text": b"abc\xffdef"}],
                   text_type=pa.binary())
    good, quarantined = validate_table(table, CLASSES, max_text_bytes=100)
    assert good.schema.field("text").type == pa.string()
    assert good.column("text").to_pylist() == ["héllo"]
    assert _reasons(quarantined) == {"bad": "invalid UTF-8 in text at byte 3"}
    assert quarantined.column("text").to_pylist() == ["abc\\xffdef"]
