"""RESULTS.md's experiment tables, generated from the results files: one command writes them, CI checks them.

Each experiment's block in benchmarks/RESULTS.md sits between `<!-- results: NAME -->` and
`<!-- /results: NAME -->` and is made from benchmarks/quality/NAME.json by that script's `markdown()`: the
provenance lines (commit, command, machine, date, wall time), the tables, and the plot. Edit the prose around
the blocks by hand; never the blocks.

    python benchmarks/tables.py            # rewrite the blocks from the results files
    python benchmarks/tables.py --check    # exit 1 if a block differs from what its results file gives (CI)
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "quality")]

from results import provenance_lines, read  # noqa: E402

RESULTS_MD = HERE / "RESULTS.md"
# block name -> the script (module) whose markdown() renders it from quality/NAME.json
EXPERIMENTS = {"cmdline_distill": "cmdline_distill", "html_synthetic": "html_synthetic",
               "html_synthetic_levers": "html_synthetic_levers", "url_semi": "url_semi"}
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results: (?P=name) -->)", re.DOTALL)


def render(name: str) -> str:
    """The block's body: how the figures were made, the tables, the plot."""
    if name not in EXPERIMENTS:
        raise SystemExit(f"{RESULTS_MD.name}: block {name!r} names no experiment; known: {', '.join(EXPERIMENTS)}")
    path = HERE / "quality" / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"{RESULTS_MD.name}: block {name!r} needs {path.relative_to(HERE.parent)}; run its "
                         "experiment first (its command is in the block)")
    prov, figures = read(path)
    image = f"\n![{name}](quality/{name}.png)\n" if path.with_suffix(".png").is_file() else ""
    return provenance_lines(prov) + "\n" + importlib.import_module(EXPERIMENTS[name]).markdown(figures) + image


def regenerate(text: str) -> str:
    def block(m: re.Match) -> str:
        return m.group(1) + render(m.group("name")) + m.group(4)

    return BLOCK.sub(block, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 where a block is stale")
    args = parser.parse_args()
    text = RESULTS_MD.read_text()
    names = [m.group("name") for m in BLOCK.finditer(text)]
    new = regenerate(text)
    if not args.check:
        RESULTS_MD.write_text(new)
        print(f"{RESULTS_MD}: {len(names)} block(s) written from their results files: {', '.join(names)}")
        return 0
    if new != text:
        diff = difflib.unified_diff(text.splitlines(), new.splitlines(), "RESULTS.md", "from the results files",
                                    lineterm="", n=1)
        print("\n".join(list(diff)[:60]))
        print(f"{RESULTS_MD}: tables differ from the results files; run `python benchmarks/tables.py`")
        return 1
    print(f"{RESULTS_MD}: {len(names)} block(s) match their results files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
