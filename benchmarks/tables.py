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
# block name -> (the script, its function) that renders the block from quality/NAME.json
EXPERIMENTS = {"cmdline_distill": ("cmdline_distill", "markdown"), "html_synthetic": ("html_synthetic", "markdown"),
               "html_synthetic_levers": ("html_synthetic", "levers_markdown"), "url_semi": ("url_semi", "markdown")}
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results: (?P=name) -->)", re.DOTALL)


def render(name: str, folder: Path = HERE) -> str:
    """The block's body: how the figures were made, the tables, the plot (`folder` holds quality/NAME.json)."""
    if name not in EXPERIMENTS:
        raise SystemExit(f"{RESULTS_MD.name}: block {name!r} names no experiment; known: {', '.join(EXPERIMENTS)}")
    path = folder / "quality" / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"{RESULTS_MD.name}: block {name!r} needs quality/{name}.json; run its experiment first "
                         "(its command is in the block)")
    prov, figures = read(path)
    image = f"\n![{name}](quality/{name}.png)\n" if path.with_suffix(".png").is_file() else ""
    module, function = EXPERIMENTS[name]
    return provenance_lines(prov) + "\n" + getattr(importlib.import_module(module), function)(figures) + image


def regenerate(text: str, folder: Path = HERE) -> str:
    """`text` (RESULTS.md) with every block made again from its results file."""
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("name"), folder) + m.group(4), text)


def main(argv: list[str] | None = None, results_md: Path = RESULTS_MD) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 where a block is stale")
    args = parser.parse_args(argv)
    text = results_md.read_text()
    names = [m.group("name") for m in BLOCK.finditer(text)]
    new = regenerate(text, results_md.parent)
    if not args.check:
        results_md.write_text(new)
        print(f"{results_md}: {len(names)} block(s) written from their results files: {', '.join(names)}")
        return 0
    if new != text:
        diff = difflib.unified_diff(text.splitlines(), new.splitlines(), results_md.name, "from the results files",
                                    lineterm="", n=1)
        print("\n".join(list(diff)[:60]))
        print(f"{results_md}: tables differ from the results files; run `python benchmarks/tables.py`")
        return 1
    print(f"{results_md}: {len(names)} block(s) match their results files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
