"""Row validation: split a shard's rows into good and quarantined, each quarantined row with its reason.

Checks in order (the first that fails gives the reason): invalid UTF-8 in a binary canonical column, null id,
null text, empty or whitespace-only text, text over max_text_bytes, label not one of the classes (a null label
is fine: the row is unlabelled), and a duplicate id within the shard (its first good row is kept).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from smallsec_ray.data.schema import CANONICAL, ID, LABEL, REASON, SPLIT, SPLITS, TEXT

Reasons = dict[int, str]  # row index -> why the row is quarantined


def validate_table(table: pa.Table, classes: list[str] | None,
                   max_text_bytes: int) -> tuple[pa.Table, pa.Table]:
    """(good, quarantined) rows of a table holding the canonical columns; binary canonical columns are decoded
    to strings, and `quarantined` has a `reason` column. classes=None accepts any label."""
    table, reasons = _decode_binary_columns(table)
    checks: list[Callable[[pa.Table], Reasons]] = [
        _null_ids, _null_texts, _blank_texts, lambda t: _long_texts(t, max_text_bytes),
    ]
    if classes is not None:
        checks.append(lambda t: _unknown_labels(t, classes))
    if SPLIT in table.column_names:
        checks.append(_unknown_splits)
    for check in checks:
        for row, reason in check(table).items():
            reasons.setdefault(row, reason)
    reasons.update(_duplicate_ids(table, reasons))
    bad = np.zeros(table.num_rows, dtype=bool)
    bad[list(reasons)] = True
    rows = sorted(reasons)
    quarantined = table.take(pa.array(rows, pa.int64())).append_column(
        REASON, pa.array([reasons[r] for r in rows], pa.string()))
    return table.filter(pa.array(~bad)), quarantined


def _decode_binary_columns(table: pa.Table) -> tuple[pa.Table, Reasons]:
    """Binary canonical columns as strings; undecodable values are quarantined, kept backslash-escaped."""
    reasons: Reasons = {}
    for name in CANONICAL:
        if name not in table.column_names or not pa.types.is_binary(table.schema.field(name).type):
            continue
        values: list[str | None] = []
        for row, value in enumerate(table.column(name).to_pylist()):
            if value is None:
                values.append(None)
                continue
            try:
                values.append(value.decode("utf-8"))
            except UnicodeDecodeError as err:
                reasons.setdefault(row, f"invalid UTF-8 in {name} at byte {err.start}")
                values.append(value.decode("utf-8", errors="backslashreplace"))
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.string()))
    return table, reasons


def _flagged(mask: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Row indices where a boolean mask is true (null counts as false)."""
    return np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))


def _null_ids(table: pa.Table) -> Reasons:
    return {int(row): "id is null" for row in _flagged(pc.is_null(table.column(ID)))}


def _null_texts(table: pa.Table) -> Reasons:
    return {int(row): "text is null (no text column has a value in this row)"
            for row in _flagged(pc.is_null(table.column(TEXT)))}


def _blank_texts(table: pa.Table) -> Reasons:
    text = table.column(TEXT)
    blank = pc.equal(pc.binary_length(pc.utf8_trim_whitespace(text)), 0)
    lengths = pc.binary_length(text)
    return {int(row): "text is empty" if lengths[row].as_py() == 0 else "text is whitespace only"
            for row in _flagged(blank)}


def _long_texts(table: pa.Table, max_text_bytes: int) -> Reasons:
    lengths = pc.binary_length(table.column(TEXT))
    return {int(row): f"text is {lengths[row].as_py():,} bytes, over data.max_text_bytes={max_text_bytes}"
            for row in _flagged(pc.greater(lengths, max_text_bytes))}


def _unknown_labels(table: pa.Table, classes: list[str]) -> Reasons:
    labels = table.column(LABEL)
    unknown = pc.invert(pc.is_in(labels, value_set=pa.array(classes, pa.string())))
    return {int(row): f"label {labels[row].as_py()!r} is not one of {classes}"
            for row in _flagged(pc.and_(pc.is_valid(labels), unknown))}


def _unknown_splits(table: pa.Table) -> Reasons:
    splits = table.column(SPLIT)
    unknown = pc.invert(pc.is_in(splits, value_set=pa.array(SPLITS, pa.string())))
    return {int(row): f"split {splits[row].as_py()!r} is not one of {list(SPLITS)} (data.columns.split)"
            for row in _flagged(pc.and_(pc.is_valid(splits), unknown))}


def _duplicate_ids(table: pa.Table, reasons: Reasons) -> Reasons:
    """Second and later rows with an id seen earlier, among rows not already quarantined."""
    keep = np.setdiff1d(np.arange(table.num_rows), np.fromiter(reasons, dtype=np.int64, count=len(reasons)))
    ids = table.column(ID).take(pa.array(keep, pa.int64())).combine_chunks()
    # dictionary_encode numbers values in order of first appearance, so np.unique finds each id's first row.
    codes = pc.dictionary_encode(ids).indices.to_numpy(zero_copy_only=False)
    duplicate = np.ones(len(codes), dtype=bool)
    duplicate[np.unique(codes, return_index=True)[1]] = False
    return {int(keep[i]): f"duplicate id {ids[i].as_py()!r} within the shard; its first row was kept"
            for i in np.flatnonzero(duplicate)}
