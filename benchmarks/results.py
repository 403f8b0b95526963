"""What every benchmark and experiment writes, in one shape: a results file (JSON) that records what made it
(commit, command, machine, date, wall time) beside the figures, its tables as Markdown, and its plots; plus the
statistics a verdict over repeats rests on, and the tiny models that smoke modes run.

    from results import Results
    out = Results("cmdline_distill", smoke=args.smoke)   # benchmarks/quality/cmdline_distill.json (smoke: a temp dir)
    ... run ...
    out.write({"configs": rows}, markdown=tables(rows), figure=fig)

`benchmarks/tables.py` regenerates RESULTS.md's experiment tables from these files (CI checks they match).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
SHARED = ROOT.parent / "shared" / "data"


@dataclass
class Provenance:
    """What made a results file: enough to rerun it and to tell whether it is still current."""

    commit: str  # git commit of the code that ran ("unknown" outside a checkout)
    dirty: bool  # uncommitted changes to tracked files when it ran
    command: str
    machine: str  # host, architecture, cores
    started: str  # ISO time, UTC
    wall_s: float

    @property
    def date(self) -> str:
        return self.started[:10]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


class Results:
    """One benchmark's results: `write` puts NAME.json (figures + provenance), NAME.md and NAME.png in `folder`
    (default: beside the script that made them). A smoke run writes into a temporary folder instead, so that CI's
    smoke runs never touch the committed figures."""

    def __init__(self, name: str, folder: Path | None = None, smoke: bool = False):
        self.name = name
        self.folder = Path(tempfile.mkdtemp(prefix=f"smoke-{name}-")) if smoke else (folder or BENCHMARKS)
        self.started = time.time()
        self.command = "python " + " ".join(shlex.quote(a) for a in [_script(), *sys.argv[1:]])

    def provenance(self) -> Provenance:
        return Provenance(commit=_git("rev-parse", "HEAD") or "unknown",
                          dirty=bool(_git("status", "--porcelain", "--untracked-files=no")),
                          command=self.command,
                          machine=f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
                          started=datetime.fromtimestamp(self.started, UTC).isoformat(timespec="seconds"),
                          wall_s=round(time.time() - self.started, 1))

    def path(self, suffix: str) -> Path:
        return self.folder / f"{self.name}{suffix}"

    def write(self, results: Any, markdown: str | None = None, figure: Any = None) -> Path:
        """Writes the figures with their provenance (and the tables and plot, when given); returns the JSON's
        path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        prov = self.provenance()
        self.path(".json").write_text(json.dumps({"provenance": asdict(prov), "results": results}, indent=1,
                                                 default=_plain) + "\n")
        if markdown is not None:
            self.path(".md").write_text(provenance_lines(prov) + "\n" + markdown)
        if figure is not None:
            figure.savefig(self.path(".png"), dpi=110)
        return self.path(".json")


def _script() -> str:
    script = Path(sys.argv[0]).resolve()
    return str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else str(script)


def _plain(value: Any) -> Any:
    """JSON for what json cannot write itself: dataclasses, numpy numbers and arrays, paths."""
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def jsonable(value: Any) -> Any:
    """`value` as its results file will hold it: dataclasses as dicts, numpy values as numbers and lists."""
    return json.loads(json.dumps(value, default=_plain))


def read(path: Path) -> tuple[Provenance, Any]:
    """A results file: (provenance, figures)."""
    blob = json.loads(Path(path).read_text())
    return Provenance(**blob["provenance"]), blob["results"]


def provenance_lines(prov: Provenance) -> str:
    """The lines that open a results table: how it was made."""
    state = " (with uncommitted changes)" if prov.dirty else ""
    return (f"Command: `{prov.command}`  \nCommit: `{prov.commit[:12]}`{state}; machine {prov.machine}; started "
            f"{prov.started.replace('T', ' ').replace('+00:00', ' UTC')}; wall time {prov.wall_s / 60:.1f} min.\n")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A Markdown table; the columns in `right` are right-aligned (numbers)."""
    rule = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- repeats


@dataclass
class Spread:
    """A figure over repeats: mean, min, max and every value (in repeat order)."""

    mean: float
    min: float
    max: float
    values: list[float]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        values = [float(v) for v in values]
        return cls(sum(values) / len(values), min(values), max(values), values)

    def text(self, digits: int = 3) -> str:
        if len(self.values) == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.min:.{digits}f}, {self.max:.{digits}f}]"


@dataclass
class Verdict:
    """Paired differences candidate - baseline, one per repeat, and what they allow to say.

    "better" only where every paired difference favours the candidate and their mean is larger than their
    spread (max - min); "worse" in the mirror case; otherwise "within noise". With three repeats this asks
    for an effect both consistent in sign and larger than how much it moves from one repeat to the next."""

    differences: Spread
    higher_is_better: bool
    outcome: str  # better | worse | within noise

    @classmethod
    def of(cls, candidate: Sequence[float], baseline: Sequence[float], higher_is_better: bool = True) -> Verdict:
        if len(candidate) != len(baseline) or not candidate:
            raise ValueError(f"paired figures need one of each per repeat, got {len(candidate)} and {len(baseline)}")
        diffs = Spread.of([c - b for c, b in zip(candidate, baseline, strict=True)])
        sign = 1.0 if higher_is_better else -1.0
        favour = [sign * d for d in diffs.values]
        clears = abs(diffs.mean) > diffs.max - diffs.min
        if len(favour) > 1 and all(f > 0 for f in favour) and clears:
            outcome = "better"
        elif len(favour) > 1 and all(f < 0 for f in favour) and clears:
            outcome = "worse"
        else:
            outcome = "within noise"
        return cls(diffs, higher_is_better, outcome)

    def text(self, digits: int = 3) -> str:
        values = ", ".join(f"{v:+.{digits}f}" for v in self.differences.values)
        return f"{self.outcome} (mean {self.differences.mean:+.{digits}f}; per repeat {values})"


# ---------------------------------------------------------------- smoke mode


def tiny_teacher(folder: Path, classes: list[str]) -> Path:
    """A tiny, seeded BERT classifier folder (tests/tiny_models.py) that vLLM and transformers load: what a
    smoke run fine-tunes and serves instead of the bundled MiniLM (the same code path, a second's work)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import make_tiny_classifier

    return make_tiny_classifier(folder, classes)


def tiny_generator(folder: Path, words: list[str]) -> Path:
    """A tiny, seeded Llama causal LM with a chat template (tests/tiny_models.py): a smoke run's generative
    teacher."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import make_tiny_causal_lm

    return make_tiny_causal_lm(folder, words)
