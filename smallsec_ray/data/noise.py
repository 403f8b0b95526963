"""Class-conditional label noise for experiments: how much does a teacher recover from noisy labels?

Each row's flip is decided by a hash of its id and the seed, so a row flips the same way whatever else
is in the table: adding rows, reordering or resharding does not change the other rows' labels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import pyarrow as pa

from smallsec_ray.data.schema import ID, LABEL, TRUE_LABEL
from smallsec_ray.errors import DataError, SpecError


def inject_label_noise(table: pa.Table, flip_rates: Mapping[str, float], classes: Sequence[str],
                       seed: int) -> pa.Table:
    """Flips each labelled row of class c with probability flip_rates[c] to another class (uniformly among
    the others) and keeps the label it had in `true_label`.

    Unlabelled rows are untouched. A table that already has `true_label` (noise injected before) keeps
    those values, so `true_label` always holds the label before any injected noise.
    """
    _check_rates(flip_rates, classes)
    for column in (ID, LABEL):
        if column not in table.column_names:
            raise DataError(f"the table has no {column!r} column (columns: {table.column_names}); label noise "
                            "needs row ids and labels")
    labels = table[LABEL].to_pylist()
    noisy = [_noisy_label(row_id, label, flip_rates, classes, seed)
             for row_id, label in zip(table[ID].to_pylist(), labels, strict=True)]
    if TRUE_LABEL not in table.column_names:
        table = table.append_column(TRUE_LABEL, pa.array(labels, pa.string()))
    return table.set_column(table.schema.get_field_index(LABEL), LABEL, pa.array(noisy, pa.string()))


def _check_rates(flip_rates: Mapping[str, float], classes: Sequence[str]) -> None:
    for name, rate in flip_rates.items():
        if name not in classes:
            raise SpecError(f"data.noise.flip_rates.{name}: {name!r} is not one of the classes {list(classes)}")
        if not 0.0 <= rate <= 1.0:
            raise SpecError(f"data.noise.flip_rates.{name} is {rate}; a flip rate is a probability in [0, 1]")
    if len(classes) < 2:
        raise SpecError(f"label noise needs at least two classes to flip between, got {list(classes)}")


def _noisy_label(row_id: str | None, label: str | None, flip_rates: Mapping[str, float],
                 classes: Sequence[str], seed: int) -> str | None:
    if label is None:
        return None
    if row_id is None:
        raise DataError(f"a row labelled {label!r} has a null id; label noise is keyed by row id")
    if label not in classes:
        raise DataError(f"row {row_id!r} has label {label!r}, which is not one of the classes {list(classes)}; "
                        "fix the label or add the class to the spec's classes")
    draw, pick = _uniforms(row_id, seed)
    if draw >= flip_rates.get(label, 0.0):
        return label
    others = [c for c in classes if c != label]
    return others[int(pick * len(others))]


def _uniforms(row_id: str, seed: int) -> tuple[float, float]:
    """Two independent uniforms in [0, 1) from the row id and the seed: one decides the flip, one the class."""
    digest = hashlib.blake2b(f"{seed}\x1f{row_id}".encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "big") / 2**64, int.from_bytes(digest[8:], "big") / 2**64
