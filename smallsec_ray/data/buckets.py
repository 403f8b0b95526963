"""Hash partitioning of keys (group names, row ids) into buckets, the same key in the same bucket in every
process, so that a question over every row's key (which split a group takes, which shard holds an id
first) is answered bucket by bucket in parallel tasks, none of them (nor the driver) holding all keys.

A shard's keys carry a 32-bit hash (`with_key_hash`); the number of buckets is chosen once all shards are
read (`bucket_count`, from the row total), and a bucket task keeps the keys of its bucket (`in_bucket`).
"""

from __future__ import annotations

import math
import zlib

import pyarrow as pa
import pyarrow.compute as pc

KEY_HASH = "key_hash"
BUCKET_ROWS = 250_000  # keys per bucket task, about: tens of MB of Arrow data


def with_key_hash(keys: pa.Table, column: str) -> pa.Table:
    """`keys` with a KEY_HASH column: CRC-32 of each value of `column` (UTF-8), each distinct value hashed
    once. CRC-32, not Python's hash(), which differs from process to process."""
    values = keys[column].combine_chunks()
    encoded = pc.dictionary_encode(values)
    hashes = pa.array([zlib.crc32(v.encode()) for v in encoded.dictionary.to_pylist()], pa.uint32())
    return keys.append_column(KEY_HASH, pc.take(hashes, encoded.indices))


def bucket_count(rows: int) -> int:
    return max(1, math.ceil(rows / BUCKET_ROWS))


def in_bucket(keys: pa.Table, bucket: int, buckets: int) -> pa.Table:
    """The rows of `keys` (which has a KEY_HASH column) that fall in `bucket` of `buckets`."""
    hashes = keys[KEY_HASH].to_numpy()
    return keys.filter(pa.array(hashes % buckets == bucket)).drop_columns([KEY_HASH])
