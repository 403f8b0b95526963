"""Row accounting: every row read is either passed on or quarantined with a reason, never dropped."""

from __future__ import annotations

from dataclasses import dataclass

from smallsec_ray.errors import StageError


@dataclass
class RowCounts:
    """rows_in = rows_out + rows_quarantined, for a shard, a part of the data or a whole stage."""

    rows_in: int = 0
    rows_out: int = 0
    rows_quarantined: int = 0

    def __add__(self, other: RowCounts) -> RowCounts:
        return RowCounts(self.rows_in + other.rows_in, self.rows_out + other.rows_out,
                         self.rows_quarantined + other.rows_quarantined)

    def check(self, where: str) -> None:
        """Raises StageError naming `where` when rows went missing (or appeared from nowhere)."""
        if self.rows_in != self.rows_out + self.rows_quarantined:
            raise StageError(f"{where}: rows_in={self.rows_in:,} but rows_out={self.rows_out:,} + "
                             f"rows_quarantined={self.rows_quarantined:,}: rows were lost; this is a bug")

    def summary(self) -> str:
        return f"rows in {self.rows_in:,}, out {self.rows_out:,}, quarantined {self.rows_quarantined:,}"
