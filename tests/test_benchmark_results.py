"""What the experiments' verdicts rest on (benchmarks/results.py) and how RESULTS.md's tables are made from the
results files (benchmarks/tables.py): a verdict over repeats, a results file's provenance, a stale table."""

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from results import Results, Spread, Verdict, read  # noqa: E402


def test_a_verdict_says_better_only_when_every_repeat_agrees_and_the_mean_clears_the_spread():
    assert Verdict.of([0.93, 0.94, 0.95], [0.90, 0.91, 0.92]).outcome == "better"  # +0.03 each time
    # All three favour the candidate, but one repeat carries the mean: its spread is larger than the mean.
    assert Verdict.of([0.905, 0.91, 0.99], [0.90, 0.90, 0.90]).outcome == "within noise"
    assert Verdict.of([0.95, 0.89, 0.93], [0.90, 0.90, 0.90]).outcome == "within noise"  # signs differ
    assert Verdict.of([12, 14, 13], [20, 21, 22], higher_is_better=False).outcome == "better"  # fewer FP
    assert Verdict.of([25, 26, 27], [20, 21, 22], higher_is_better=False).outcome == "worse"
    assert Verdict.of([0.95], [0.90]).outcome == "within noise"  # one run is one draw
    verdict = Verdict.of([0.93, 0.94, 0.95], [0.90, 0.91, 0.92])
    assert verdict.differences.values == pytest.approx([0.03, 0.03, 0.03])
    with pytest.raises(ValueError, match="one of each per repeat"):
        Verdict.of([0.9, 0.9], [0.9])
    assert Spread.of([1, 2, 6]).text(1) == "3.0 [1.0, 6.0]"


def test_a_results_file_records_what_made_it(tmp_path):
    out = Results("unit", folder=tmp_path)
    out.write({"auc": 0.9}, markdown="| a |\n")
    prov, figures = read(tmp_path / "unit.json")
    assert figures == {"auc": 0.9} and len(prov.commit) == 40 and prov.wall_s >= 0
    assert prov.command.startswith("python ") and "cores" in prov.machine and prov.date.startswith("20")
    text = (tmp_path / "unit.md").read_text()
    assert text.startswith(f"Command: `{prov.command}`") and f"`{prov.commit[:12]}`" in text and "| a |" in text


def test_tables_check_fails_when_a_block_is_not_what_its_results_file_gives(tmp_path, capsys):
    """CI runs tables.py --check: a hand-edited figure, or a results file newer than its table, fails it."""
    import tables

    quality = tmp_path / "quality"
    quality.mkdir()
    figures = {"configs": {}}
    (quality / "cmdline_distill.json").write_text(json.dumps(
        {"provenance": {"commit": "a" * 40, "dirty": False, "command": "python x.py", "machine": "m (x86_64, 2 cores)",
                        "started": "2026-12-07T10:00:00+00:00", "wall_s": 60.0}, "results": figures}))
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# R\n\n<!-- results: cmdline_distill -->\nold figures\n<!-- /results: cmdline_distill -->\n")
    assert tables.main(["--check"], results_md) == 1
    assert "tables differ" in capsys.readouterr().out
    assert tables.main([], results_md) == 0
    text = results_md.read_text()
    assert "old figures" not in text and "Commit: `aaaaaaaaaaaa`" in text and text.startswith("# R\n")
    assert tables.main(["--check"], results_md) == 0
