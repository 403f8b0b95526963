"""Label noise for experiments: how much does a teacher recover from wrong labels?

Three models of noise (the first two with a rate per class, `data.noise.flip_rates`):
* rows: each labelled row of class c gets another class with probability rate[c], independently. Easy
  to average out: a model trained on such labels barely loses ranking quality.
* groups: whole groups (a technique, a binary, a host) are mislabelled throughout, as signatures miss
  whole families and flag whole families of admin tools: groups whose majority class is c, holding a
  share rate[c] of class c's rows, get another class on every row.
* column: the labels of another column of the noisy rows, e.g. what a signature labeller said.

Decisions hang on a hash of the row id (rows) or the group name (groups) and the seed, so a row or a
group flips the same way whatever else is in the table. The label before noise is kept in `true_label`.
Noise is applied where labels are read for training and auditing, not when data is prepared, so a
sweep over noise levels reuses the prepared shards and the teacher's labels.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from smallsec_ray.data.schema import GROUP, ID, LABEL, TRUE_LABEL
from smallsec_ray.errors import DataError, SpecError


@dataclass(frozen=True)
class NoisePlan:
    """What to flip: per-row draws (mode rows), or the groups to mislabel and their new class (groups)."""

    mode: str
    flip_rates: dict[str, float]
    classes: list[str]
    seed: int
    flipped_groups: dict[str, str] = field(default_factory=dict)  # group -> the class all its rows get
    column: str | None = None  # mode column: where the noisy labels are

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns besides id and label that applying the plan reads."""
        by_mode: dict[str, tuple[str, ...]] = {"rows": (), "groups": (GROUP,),
                                               "column": (self.column,) if self.column else ()}
        return by_mode[self.mode]


def plan_noise(mode: str, flip_rates: Mapping[str, float], classes: Sequence[str], seed: int,
               groups: Sequence[str] = (), labels: Sequence[str | None] = (), column: str | None = None) -> NoisePlan:
    """A plan for `apply_noise`. Mode groups needs every row's group and label (of the rows the noise
    applies to) to choose whole groups whose rows make up each class's share."""
    _check_rates(flip_rates, classes)
    if mode == "rows":
        return NoisePlan(mode, dict(flip_rates), list(classes), seed)
    if mode == "column":
        if not column:
            raise SpecError("data.noise.column: mode column needs the name of the column holding the labels")
        return NoisePlan(mode, {}, list(classes), seed, column=column)
    if mode != "groups":
        raise SpecError(f"data.noise.mode: {mode!r} is not one of rows, groups, column")
    return NoisePlan(mode, dict(flip_rates), list(classes), seed,
                     _flipped_groups(groups, labels, flip_rates, classes, seed))


def _flipped_groups(groups: Sequence[str], labels: Sequence[str | None], flip_rates: Mapping[str, float],
                    classes: Sequence[str], seed: int) -> dict[str, str]:
    """Groups of majority class c, in seeded hash order, each taken if it brings the flipped rows of c
    closer to rate[c] x (rows of c): a share is never overshot by more than one group's half."""
    per_group: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for group, label in zip(groups, labels, strict=True):
        if label is not None:
            per_group[group][label] += 1
    rows_of = Counter(label for label in labels if label is not None)
    flipped: dict[str, str] = {}
    for cls in classes:
        target = flip_rates.get(cls, 0.0) * rows_of[cls]
        members = [g for g, counts in per_group.items() if max(sorted(counts), key=counts.__getitem__) == cls]
        done = 0
        for group in sorted(members, key=lambda g: (_uniforms(g, seed)[0], g)):
            size = per_group[group][cls]
            if abs(done + size - target) < abs(done - target):
                flipped[group] = _other_class(cls, classes, _uniforms(group, seed)[1])
                done += size
    return flipped


def apply_noise(table: pa.Table, plan: NoisePlan) -> pa.Table:
    """The table with noisy labels in `label` and the labels before noise in `true_label` (a table
    that has `true_label` already keeps it: it always holds the label before any injected noise)."""
    for column in (ID, LABEL, *plan.columns):
        if column not in table.column_names:
            raise DataError(f"the table has no {column!r} column (columns: {table.column_names}); label noise "
                            f"({plan.mode}) needs it")
    labels = table[LABEL].to_pylist()
    if plan.mode == "rows":
        noisy = [_row_flip(row_id, label, plan) for row_id, label in zip(table[ID].to_pylist(), labels, strict=True)]
    elif plan.mode == "column":
        noisy = [other if label is not None and other in plan.classes else label
                 for label, other in zip(labels, table[plan.column].to_pylist(), strict=True)]
    else:
        noisy = [plan.flipped_groups.get(group, label) if label is not None else None
                 for group, label in zip(table[GROUP].to_pylist(), labels, strict=True)]
    if TRUE_LABEL not in table.column_names:
        table = table.append_column(TRUE_LABEL, pa.array(labels, pa.string()))
    return table.set_column(table.schema.get_field_index(LABEL), LABEL, pa.array(noisy, pa.string()))


def inject_label_noise(table: pa.Table, flip_rates: Mapping[str, float], classes: Sequence[str],
                       seed: int) -> pa.Table:
    """Row-level noise in one call (mode rows): each labelled row of class c flips with probability
    flip_rates[c] to another class (uniformly among the others)."""
    return apply_noise(table, plan_noise("rows", flip_rates, classes, seed))


def _check_rates(flip_rates: Mapping[str, float], classes: Sequence[str]) -> None:
    for name, rate in flip_rates.items():
        if name not in classes:
            raise SpecError(f"data.noise.flip_rates.{name}: {name!r} is not one of the classes {list(classes)}")
        if not 0.0 <= rate <= 1.0:
            raise SpecError(f"data.noise.flip_rates.{name} is {rate}; a flip rate is a share in [0, 1]")
    if len(classes) < 2:
        raise SpecError(f"label noise needs at least two classes to flip between, got {list(classes)}")


def _row_flip(row_id: str | None, label: str | None, plan: NoisePlan) -> str | None:
    if label is None:
        return None
    if row_id is None:
        raise DataError(f"a row labelled {label!r} has a null id; label noise is keyed by row id")
    if label not in plan.classes:
        raise DataError(f"row {row_id!r} has label {label!r}, which is not one of the classes {plan.classes}; "
                        "fix the label or add the class to the spec's classes")
    draw, pick = _uniforms(row_id, plan.seed)
    return label if draw >= plan.flip_rates.get(label, 0.0) else _other_class(label, plan.classes, pick)


def _other_class(label: str, classes: Sequence[str], pick: float) -> str:
    others = [c for c in classes if c != label]
    return others[int(pick * len(others))]


def _uniforms(key: str, seed: int) -> tuple[float, float]:
    """Two independent uniforms in [0, 1) from a key and the seed: one decides the flip, one the class."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "big") / 2**64, int.from_bytes(digest[8:], "big") / 2**64
