"""Shard IO: find shards (paths, globs, folders, URIs), read Parquet/JSONL/CSV into the canonical schema with
bad rows quarantined, and write Parquet atomically.

A bad row (undecodable, malformed, invalid by `validate_table`) is set aside with a reason; a bad file
(corrupt, empty, no text column) raises DataError, and the caller decides per data.on_bad_file to skip it.
"""

from __future__ import annotations

import csv
import fnmatch
import glob
import io
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from smallsec_ray import storage
from smallsec_ray.data.accounting import RowCounts
from smallsec_ray.data.schema import GROUP, ID, LABEL, REASON, RESERVED, SOURCE, SPLIT, TEXT
from smallsec_ray.data.validate import validate_table
from smallsec_ray.errors import DataError
from smallsec_ray.spec import URI, Columns

# Longest suffixes first, so that "x.jsonl.gz" is not taken for ".gz" of something else.
SHARD_SUFFIXES = {
    ".jsonl.gz": "jsonl", ".json.gz": "jsonl", ".csv.gz": "csv",
    ".parquet": "parquet", ".jsonl": "jsonl", ".csv": "csv",
}
FORMATS = ("parquet", "jsonl", "csv")

_GLOB_CHARS = re.compile(r"[*?\[]")
_JSON_KIND = {int: "number", float: "number", bool: "boolean", dict: "JSON object", list: "JSON list"}
_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class ShardRead:
    """One shard read into the canonical schema; every row read is either good or quarantined."""

    path: str
    format: str
    good: pa.Table
    quarantined: pa.Table
    rows_in: int

    def __post_init__(self) -> None:
        self.rows.check(self.path)

    @property
    def rows(self) -> RowCounts:
        return RowCounts(self.rows_in, self.good.num_rows, self.quarantined.num_rows)


def expand_paths(entries: list[str]) -> list[str]:
    """Shard paths/URIs of entries (local paths, globs, folders searched recursively, file://, s3://, gs://
    URIs), sorted and de-duplicated; raises FileNotFoundError naming an entry that matches nothing or whose
    store cannot be listed."""
    found: set[str] = set()
    for entry in entries:
        try:
            matches = _expand_uri(entry) if URI.match(entry) else _expand_local(entry)
        except (OSError, pa.ArrowException) as err:  # unknown scheme, no credentials, store unreachable
            raise FileNotFoundError(f"entry {entry!r} could not be listed: {err}") from None
        if not matches:
            raise FileNotFoundError(f"entry {entry!r} matched no file (give a shard path, a glob, a folder "
                                    f"of {', '.join(SHARD_SUFFIXES)} files, or a URI)")
        found.update(matches)
    return sorted(found)


def _is_shard_name(name: str) -> bool:
    # Hidden and underscore files are temporaries and markers (.x.tmp-*, _SUCCESS), never shards.
    return not name.startswith((".", "_")) and name.lower().endswith(tuple(SHARD_SUFFIXES))


def _expand_local(entry: str) -> list[str]:
    path = os.path.expanduser(entry)
    candidates = sorted(glob.glob(path, recursive=True)) if _GLOB_CHARS.search(path) else [path]
    matches = []
    for candidate in candidates:
        if os.path.isdir(candidate):
            for root, dirs, files in os.walk(candidate):
                dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
                matches += [os.path.join(root, f) for f in files if _is_shard_name(f)]
        elif os.path.isfile(candidate):
            matches.append(candidate)
    return [os.path.normpath(m) for m in matches]


def _expand_uri(entry: str) -> list[str]:
    scheme = entry.split("://", 1)[0]
    query = "?" + entry.split("?", 1)[1] if "?" in entry else ""
    fs, path = pafs.FileSystem.from_uri(entry)
    if _GLOB_CHARS.search(path):
        pattern = path.split("/")
        base = "/".join(_prefix_before_glob(pattern))
        listing = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        paths = [i.path for i in listing if i.is_file and _match_segments(pattern, i.path.split("/"))]
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            paths = [path]
        elif info.type == pafs.FileType.Directory:
            listing = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            paths = [i.path for i in listing if i.is_file and _is_shard_name(i.base_name)
                     and not _in_hidden_folder(i.path[len(path):])]
        else:
            paths = []
    return [f"{scheme}://{p}{query}" for p in paths]


def _prefix_before_glob(segments: list[str]) -> list[str]:
    prefix = []
    for segment in segments:
        if _GLOB_CHARS.search(segment):
            break
        prefix.append(segment)
    return prefix


def _match_segments(pattern: list[str], parts: list[str]) -> bool:
    """Glob match by path segment: * and ? stay within a folder, ** spans any number of folders."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match_segments(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return (bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0])
            and _match_segments(pattern[1:], parts[1:]))


def _in_hidden_folder(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.strip("/").split("/")[:-1])


def shard_format(path: str, fmt: str = "auto") -> str:
    """The shard's format: fmt when forced, else by extension (.parquet, .jsonl[.gz], .json.gz, .csv[.gz])."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise DataError(f"{path}: unknown format {fmt!r}; data.format must be auto or one of "
                            f"{list(FORMATS)}")
        return fmt
    name = _file_name(path).lower()
    for suffix, found in SHARD_SUFFIXES.items():
        if name.endswith(suffix):
            return found
    raise DataError(f"{path}: cannot tell the format from the file name; name it with one of "
                    f"{', '.join(SHARD_SUFFIXES)} or set data.format in the spec")


def _file_name(path: str) -> str:
    return PurePosixPath(path.split("?", 1)[0] if URI.match(path) else path).name


def is_default_id(row_id: str, path: str) -> bool:
    """Whether a row's id is the one read_shard makes when the data gives none ('<file name>:<row>')."""
    name, _, row = row_id.rpartition(":")
    return row.isdigit() and name == _file_name(path)


def _file_stem(path: str) -> str:
    name = _file_name(path)
    for suffix in SHARD_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return PurePosixPath(name).stem


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if URI.match(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def _check_readable(fs: pafs.FileSystem, fs_path: str, path: str) -> None:
    info = fs.get_file_info(fs_path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{path}: no such file; check the data paths in the spec")
    if info.type != pafs.FileType.File:
        raise DataError(f"{path}: not a file; give shard files, a glob or a folder of shards")
    if info.size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); remove it or write it again")


def _open_stream(fs: pafs.FileSystem, fs_path: str, path: str) -> IO[bytes]:
    """A buffered binary stream of the file's content, gunzipped when the name ends in .gz."""
    compression = "gzip" if _file_name(path).lower().endswith(".gz") else None
    return io.BufferedReader(fs.open_input_stream(fs_path, compression=compression))


_Failure = tuple[int, str, str | None]  # (row number, reason, raw text)


@dataclass
class _Parsed:
    """What a format reader got: good records as a table, their row numbers, and rows it could not parse."""

    table: pa.Table
    row_numbers: list[int]
    failures: list[_Failure]


def read_shard(path: str, columns: Columns, fmt: str = "auto", max_rows: int | None = None,
               classes: list[str] | None = None, max_text_bytes: int = 100_000) -> ShardRead:
    """Reads one shard into the canonical columns (id, text, label, source, group as strings, other input
    columns carried through); bad rows go to `quarantined` with a reason. Raises DataError for a bad file.

    A row's default id is '<file name>:<line>' for JSONL and CSV, '<file name>:<row>' for Parquet (from 1)."""
    fmt = shard_format(path, fmt)
    fs, fs_path = _filesystem(path)
    _check_readable(fs, fs_path, path)
    reader = {"parquet": _read_parquet, "jsonl": _read_jsonl, "csv": _read_csv}[fmt]
    try:
        parsed = reader(fs, fs_path, path, max_rows, columns.text)
    except (pa.ArrowException, OSError, EOFError, zlib.error, csv.Error) as err:
        raise DataError(f"{path}: cannot read it as {fmt} ({type(err).__name__}: {err}); the file is corrupt "
                        "or truncated: write it again, or set data.on_bad_file: skip to skip it") from None
    if parsed.table.num_columns and not any(c in parsed.table.column_names for c in columns.text):
        raise DataError(f"{path}: no text column; looked for {columns.text}, found "
                        f"{parsed.table.column_names[:20]}; set data.columns.text in the spec")
    text_column = next((c for c in columns.text if c in parsed.table.column_names), None)
    kind = parsed.table.schema.field(text_column).type if text_column else pa.string()
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
            or pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_null(kind)):
        raise DataError(f"{path}: the text column {text_column!r} holds {kind} values, not text; set "
                        "data.columns.text to the column holding the artifact")
    table = to_canonical(parsed.table, columns, path, parsed.row_numbers)
    good, quarantined = validate_table(table, classes, max_text_bytes)
    if parsed.failures:
        quarantined = pa.concat_tables([quarantined, _failures_table(parsed.failures, path)],
                                       promote_options="default")
    return ShardRead(path=path, format=fmt, good=good, quarantined=quarantined,
                       rows_in=len(parsed.row_numbers) + len(parsed.failures))


def _read_parquet(fs: pafs.FileSystem, fs_path: str, path: str, max_rows: int | None, _text: list[str]) -> _Parsed:
    with fs.open_input_file(fs_path) as f:
        pf = pq.ParquetFile(f)
        if max_rows is None:
            table = pf.read()
        else:
            batches, n = [], 0
            for batch in pf.iter_batches(batch_size=min(max_rows, 65_536)):
                batches.append(batch)
                n += batch.num_rows
                if n >= max_rows:
                    break
            table = pa.Table.from_batches(batches, schema=pf.schema_arrow).slice(0, max_rows)
    return _Parsed(table, list(range(1, table.num_rows + 1)), [])


def _read_jsonl(fs: pafs.FileSystem, fs_path: str, path: str, max_rows: int | None, text: list[str]) -> _Parsed:
    records: list[dict] = []
    row_numbers: list[int] = []
    failures: list[_Failure] = []
    with _open_stream(fs, fs_path, path) as stream:
        for line_no, line in _numbered_lines(stream):
            if max_rows is not None and len(records) + len(failures) >= max_rows:
                break
            record, reason = _parse_json_line(line)
            value = None if record is None else next((record[c] for c in text if record.get(c) is not None), None)
            if value is not None and not isinstance(value, str):
                reason = f"the text is a {_JSON_KIND.get(type(value), type(value).__name__)}, not a string"
            if record is not None and reason is None:
                records.append(record)
                row_numbers.append(line_no)
            else:
                failures.append((line_no, f"line {line_no}: {reason}", _raw_text(line)))
    return _Parsed(_records_table(records), row_numbers, failures)


def _numbered_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based line numbers; a UTF-8 byte order mark at the start is dropped."""
    for line_no, line in enumerate(stream, start=1):
        if line_no == 1 and line.startswith(_UTF8_BOM):
            line = line[len(_UTF8_BOM):]
        if line.strip():
            yield line_no, line


def _parse_json_line(line: bytes) -> tuple[dict | None, str | None]:
    try:
        text = line.rstrip(b"\r\n").decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"invalid UTF-8 at byte {err.start}"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg} at column {err.colno})"
    if not isinstance(record, dict):
        return None, f"not a JSON object (got a JSON {type(record).__name__})"
    return record, None


def _raw_text(line: bytes) -> str:
    return line.rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")


def _read_csv(fs: pafs.FileSystem, fs_path: str, path: str, max_rows: int | None, _text: list[str]) -> _Parsed:
    # The csv module's default field limit (128 KiB) would fail the whole file on one long field; long texts
    # are instead quarantined row by row by validate_table.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    # surrogateescape keeps undecodable bytes inside the fields, so one bad row is found and set aside.
    with io.TextIOWrapper(_open_stream(fs, fs_path, path), encoding="utf-8-sig",
                          errors="surrogateescape", newline="") as text:
        lines = _RecordedLines(text)
        # strict: a quote that never closes is an error, not a field that swallows every line after it.
        reader = csv.reader(lines, strict=True)
        header = _check_csv_header(next((row for row in reader if row), None), path)
        rows: list[list[str]] = []
        row_numbers: list[int] = []
        failures: list[_Failure] = []
        line_no = reader.line_num
        while max_rows is None or len(rows) + len(failures) < max_rows:
            lines.current = []
            start = line_no + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as err:  # the row's lines are read again one by one; the first is set aside
                first, *rest = lines.current or [""]
                failures.append((start, f"line {start}: a quote opened here does not close properly ({err}); the "
                                 "lines after it are read on their own", _raw_text(first.encode("utf-8",
                                                                                                 "surrogateescape"))))
                for number, line in enumerate(rest, start + 1):
                    _add_csv_row(next(csv.reader([line]), []), number, header, rows, row_numbers, failures)
                line_no = reader.line_num
                continue
            line_no = reader.line_num
            _add_csv_row(row, start, header, rows, row_numbers, failures)
    # An empty CSV field means "no value" (an unlabelled row, an absent id), as in pandas and pyarrow.
    table = pa.table({name: pa.array([row[i] or None for row in rows], pa.string())
                      for i, name in enumerate(header)})
    return _Parsed(table, row_numbers, failures)


class _RecordedLines:
    """The lines of a text stream, the ones of the current CSV record kept in `current`."""

    def __init__(self, text: IO[str]):
        self.text = text
        self.current: list[str] = []

    def __iter__(self) -> _RecordedLines:
        return self

    def __next__(self) -> str:
        line = next(self.text)
        self.current.append(line)
        return line


def _add_csv_row(row: list[str], line: int, header: list[str], rows: list[list[str]], row_numbers: list[int],
                 failures: list[_Failure]) -> None:
    if not row:
        return
    reason = _csv_row_problem(row, header)
    if reason is None:
        rows.append(row)
        row_numbers.append(line)
    else:
        raw = ",".join(row).encode("utf-8", errors="surrogateescape")
        failures.append((line, f"line {line}: {reason}", _raw_text(raw)))


def _check_csv_header(header: list[str] | None, path: str) -> list[str]:
    """The header, if it names each column once in UTF-8."""
    if header is None:
        raise DataError(f"{path}: no CSV header row; the first line must name the columns")
    if _csv_row_problem(header, header) is not None:
        raise DataError(f"{path}: the CSV header has invalid UTF-8; write the column names in UTF-8")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: the CSV header repeats the column(s) {repeated}; give each column its own name")
    return header


def _csv_row_problem(row: list[str], header: list[str]) -> str | None:
    if len(row) != len(header):
        return f"{len(row)} fields, the header has {len(header)}"
    for name, field in zip(header, row, strict=True):
        try:
            field.encode("utf-8")
        except UnicodeEncodeError:
            try:
                field.encode("utf-8", errors="surrogateescape").decode("utf-8")
            except UnicodeDecodeError as err:
                return f"invalid UTF-8 in column {name!r} at byte {err.start}"
    return None


def _records_table(records: list[dict]) -> pa.Table:
    names = list(dict.fromkeys(key for record in records for key in record))
    return pa.table({name: _infer_array([r.get(name) for r in records]) for name in names})


def _infer_array(values: list) -> pa.Array:
    """Arrow's own type for a JSON column; mixed types (1 in one row, "a" in another) become JSON text."""
    try:
        array = pa.array(values)
        if not (pa.types.is_struct(array.type) and array.type.num_fields == 0):
            return array  # else all values are {}: Parquet cannot store a struct without fields
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string())


def to_canonical(table: pa.Table, columns: Columns, path: str, row_numbers: list[int]) -> pa.Table:
    """The canonical columns from the first present, non-null candidate column of each (defaults: id
    '<file name>:<row number>', source the file stem, group the id; a given split only when
    data.columns.split names columns), then the other input columns.

    An input column named like one of the tool's own columns (canonical ones, split, probs, reason, ...)
    but not mapped to it is kept as 'input_<name>'."""
    n = table.num_rows
    file_name = _file_name(path)
    default_id = pa.array([f"{file_name}:{row}" for row in row_numbers], pa.string())
    canonical = {ID: _coalesce(table, columns.id, default_id)}
    canonical[TEXT] = _coalesce(table, columns.text, pa.nulls(n, pa.string()))
    canonical[LABEL] = _coalesce(table, columns.label, pa.nulls(n, pa.string()))
    canonical[SOURCE] = _coalesce(table, columns.source, pa.array([_file_stem(path)] * n, pa.string()))
    canonical[GROUP] = _coalesce(table, columns.group, canonical[ID])
    if columns.split:
        canonical[SPLIT] = _coalesce(table, columns.split, pa.nulls(n, pa.string()))
    mapped = {c for candidates in (columns.id, columns.text, columns.label, columns.source, columns.group,
                                   columns.split) for c in candidates}
    carried = {}
    for name in table.column_names:
        if name not in RESERVED:
            carried[name] = table.column(name)
        elif name not in mapped:
            carried[f"input_{name}"] = table.column(name)  # the tool's own columns never take a user's
    return pa.table({**canonical, **carried})


def _coalesce(table: pa.Table, candidates: list[str], default: pa.Array) -> pa.Array:
    arrays = [_as_text(table.column(c).combine_chunks()) for c in candidates if c in table.column_names]
    arrays.append(default)
    # Left undecoded: validate_table quarantines the rows with invalid UTF-8.
    if any(pa.types.is_binary(a.type) for a in arrays):
        arrays = [pc.cast(a, pa.binary()) for a in arrays]
    return pc.coalesce(*arrays)


def _as_text(column: pa.Array) -> pa.Array:
    """A column as string (binary stays binary); numbers and booleans are cast, nested values become JSON."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        return _as_text(column.dictionary_decode())
    if pa.types.is_string(kind) or pa.types.is_binary(kind):
        return column
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pc.cast(column, pa.string())
    if pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind) or pa.types.is_fixed_size_binary(kind):
        return pc.cast(column, pa.binary())
    if (pa.types.is_null(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind)
            or pa.types.is_boolean(kind) or pa.types.is_decimal(kind) or pa.types.is_temporal(kind)):
        return pc.cast(column, pa.string())
    return pa.array([None if v is None else json.dumps(v, default=str) for v in column.to_pylist()],
                    pa.string())


def _failures_table(failures: list[tuple[int, str, str | None]], path: str) -> pa.Table:
    name = _file_name(path)
    ids = [f"{name}:{row}" for row, _, _ in failures]
    return pa.table({
        ID: pa.array(ids, pa.string()),
        TEXT: pa.array([raw for _, _, raw in failures], pa.string()),
        LABEL: pa.nulls(len(failures), pa.string()),
        SOURCE: pa.array([_file_stem(path)] * len(failures), pa.string()),
        GROUP: pa.array(ids, pa.string()),
        REASON: pa.array([reason for _, reason, _ in failures], pa.string()),
    })


def write_parquet_atomic(table: pa.Table, path: str, metadata: dict[bytes, bytes] | None = None) -> None:
    """Writes a Parquet shard (a local path or a URI) so that readers and resumed runs never see half of it
    (storage.open_output); metadata is merged into the schema metadata."""
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    storage.write_parquet(table, path)


def read_parquet_meta(path: str) -> dict[bytes, bytes]:
    """The schema metadata of a Parquet file (local path or URI); raises DataError if it is not readable."""
    fs, fs_path = _filesystem(path)
    _check_readable(fs, fs_path, path)
    try:
        with fs.open_input_file(fs_path) as f:
            return dict(pq.read_schema(f).metadata or {})
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: cannot read its Parquet footer ({err}); the file is corrupt or truncated: "
                        "write it again") from None
