"""Where a run's files live: a local folder, a shared mount, or an object store (s3://, gs://, file://).

Every location is a string: an absolute local path, or a URI that `pyarrow.fs` opens (credentials and
endpoints come from the usual environment: AWS_* variables, GOOGLE_APPLICATION_CREDENTIALS, instance
roles). All reads and writes of run outputs go through pyarrow.fs, so one code path serves every store.

Writes are atomic on every store: on a local filesystem a file is written under a temporary name and
renamed into place; an object store has no rename, but an object only appears once its upload completes,
so it is written under its own name. A stage's files are written first and its manifest, which names
them, last: a reader that trusts only manifests never sees half a stage.

Reads retry transient errors (a throttled or briefly unreachable store) a few times before giving up.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
READ_ATTEMPTS = 4
T = TypeVar("T")


def is_uri(location: str | Path) -> bool:
    return isinstance(location, str) and bool(URI.match(location))


def is_remote(location: str | Path) -> bool:
    """Whether the location is in an object store (not this machine's filesystem)."""
    return is_uri(location) and not str(location).startswith("file://")


def resolve(location: str | Path) -> str:
    """A location in its canonical form: an absolute local path (file:// URIs too), or the URI without a
    trailing slash."""
    if str(location).startswith("file://"):
        return str(Path(pafs.FileSystem.from_uri(str(location))[1]).resolve())
    if is_uri(location):
        return str(location).rstrip("/")
    return str(Path(location).expanduser().resolve())


def join(location: str | Path, *parts: str) -> str:
    """location/part/...; parts are relative (a run's file names)."""
    if is_uri(location):
        return "/".join([str(location).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(location).joinpath(*parts))


def normalise(location: str) -> str:
    """A location with its "." and ".." parts resolved: "s3://b/runs/a/../base/x" -> "s3://b/runs/base/x"."""
    if not is_uri(location):
        return os.path.normpath(location)
    scheme, _, rest = location.partition("://")
    return f"{scheme}://{posixpath.normpath(rest)}"


def relative_to(location: str | Path, root: str | Path) -> str:
    """The part of `location` under `root` ("a/b.parquet"); raises ValueError if it is not under it."""
    location, root = str(location), str(root).rstrip("/")
    if is_uri(root) != is_uri(location):
        raise ValueError(f"{location} is not under {root}")
    if is_uri(root):
        if not location.startswith(root + "/"):
            raise ValueError(f"{location} is not under {root}")
        return location[len(root) + 1:]
    return str(Path(location).resolve().relative_to(Path(root).resolve()))


def filesystem(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a location and the path inside it."""
    if is_uri(location):
        return pafs.FileSystem.from_uri(str(location))
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(str(location)))


def with_retries(what: str, call: Callable[[], T]) -> T:
    """call(), again after a pause when it fails with an I/O error other than a missing file."""
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            return call()
        except FileNotFoundError:
            raise
        except OSError as err:
            if attempt == READ_ATTEMPTS:
                raise OSError(f"{what}: failed {READ_ATTEMPTS} times, last with: {err}") from err
            time.sleep(0.5 * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def info(location: str | Path) -> pafs.FileInfo:
    fs, path = filesystem(location)
    return with_retries(f"looking up {location}", lambda: fs.get_file_info(path))


def is_file(location: str | Path) -> bool:
    return info(location).type == pafs.FileType.File


def exists(location: str | Path) -> bool:
    return info(location).type != pafs.FileType.NotFound


def read_bytes(location: str | Path) -> bytes:
    fs, path = filesystem(location)

    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    return with_retries(f"reading {location}", read)


def read_text(location: str | Path) -> str:
    return read_bytes(location).decode("utf-8")


def write_bytes(location: str | Path, data: bytes) -> None:
    with open_output(location) as f:
        f.write(data)


def write_text(location: str | Path, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


@contextmanager
def open_output(location: str | Path) -> Iterator[IO[bytes]]:
    """A binary stream whose content appears at `location` whole, or not at all if the block raises."""
    fs, path = filesystem(location)
    if isinstance(fs, pafs.LocalFileSystem):
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                yield f
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    # An object store has no rename, and a stream that is dropped, even after an error, completes its upload:
    # the content goes to a hidden temporary object, copied to its name (server-side) once whole.
    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
    stream = fs.open_output_stream(tmp)
    try:
        yield stream
        stream.close()
        fs.copy_file(tmp, path)
    finally:
        if not stream.closed:
            stream.close()
        try:
            fs.delete_file(tmp)
        except FileNotFoundError:
            pass


def write_parquet(table: pa.Table, location: str | Path) -> None:
    """Writes a whole Parquet file atomically (see open_output)."""
    with open_output(location) as f:
        pq.write_table(table, f)


@contextmanager
def parquet_writer(location: str | Path, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A Parquet writer whose file appears at `location` when the block ends without error."""
    with open_output(location) as f:
        writer = pq.ParquetWriter(f, schema)
        try:
            yield writer
        finally:
            writer.close()


def read_table(location: str | Path, columns: list[str] | None = None) -> pa.Table:
    fs, path = filesystem(location)
    return with_retries(f"reading {location}", lambda: pq.read_table(path, columns=columns, filesystem=fs))


def read_metadata(location: str | Path) -> pq.FileMetaData:
    fs, path = filesystem(location)

    def read() -> pq.FileMetaData:
        with fs.open_input_file(path) as f:
            return pq.read_metadata(f)

    return with_retries(f"reading the Parquet footer of {location}", read)


def read_schema(location: str | Path) -> pa.Schema:
    return read_metadata(location).schema.to_arrow_schema()


def parquet_file(location: str | Path) -> pq.ParquetFile:
    """An open Parquet file for reading in batches (the caller closes it with .close())."""
    fs, path = filesystem(location)
    return with_retries(f"opening {location}", lambda: pq.ParquetFile(fs.open_input_file(path)))


def delete_file(location: str | Path) -> None:
    fs, path = filesystem(location)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def delete_dir(location: str | Path) -> None:
    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def list_files(location: str | Path) -> list[pafs.FileInfo]:
    """Every file under a folder (recursively; none when it does not exist), with sizes and times."""
    fs, path = filesystem(location)
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    return [i for i in with_retries(f"listing {location}", lambda: fs.get_file_info(selector)) if i.is_file]


def upload(local: str | Path, location: str | Path) -> None:
    """Copies one local file to `location` (atomically, see open_output)."""
    with open(local, "rb") as src, open_output(location) as dst:
        shutil.copyfileobj(src, dst, length=8 << 20)


def download(location: str | Path, local: str | Path) -> None:
    """Copies a file or a whole folder from a store to a local path, each file written atomically."""
    fs, path = filesystem(location)
    kind = info(location).type
    if kind == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{location}: no such file or folder in the run's storage")
    files = [(path, Path(local))] if kind == pafs.FileType.File else [
        (i.path, Path(local) / i.path[len(path):].lstrip("/")) for i in list_files(location)]
    for source, target in files:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")

        def copy(source: str = source, tmp: Path = tmp) -> None:
            with fs.open_input_stream(source) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, length=8 << 20)

        try:
            with_retries(f"downloading {source}", copy)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def cache_root() -> Path:
    """Local copies of remote run folders and models: $SMALLSEC_CACHE, else ~/.cache/smallsec."""
    return Path(os.environ.get("SMALLSEC_CACHE") or Path.home() / ".cache" / "smallsec").expanduser()


def local_folder(location: str) -> Path:
    """The local folder that mirrors a remote location (stable across runs on this machine)."""
    digest = hashlib.sha256(location.encode()).hexdigest()[:12]
    name = re.sub(r"[^\w.-]", "_", location.rstrip("/").rsplit("/", 1)[-1])[:40]
    return cache_root() / "remote" / f"{name}-{digest}"


def local_copy(location: str | Path) -> Path:
    """A local path holding the file or folder at `location`: itself when local, else a copy in the
    cache, downloaded once (a model folder that a teacher replica or a trainer loads by path)."""
    if not is_remote(location):
        return Path(filesystem(location)[1])
    from filelock import FileLock  # replicas on one node share the copy

    target = local_folder(str(location))
    done = target.with_name(target.name + ".complete")
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)
            download(location, target)
            done.touch()
    return target
