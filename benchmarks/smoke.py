"""Every benchmark and experiment in its smoke mode: `python SCRIPT --smoke` for each script under benchmarks/
(a file with a `__main__` block), each in its own process, so that a change to the public API that breaks a
recipe fails CI instead of rotting until someone reruns the experiment.

A smoke mode runs the same code path on tiny rows and models and writes its results into a temporary folder
(results.Results(smoke=True)), never over the committed figures. Each script has a hard timeout; one over
its budget (60 s) or a total over 6 minutes is reported, not failed: these machines are shared and noisy.

    python benchmarks/smoke.py                       # all of them (make smoke; .ci/run)
    python benchmarks/smoke.py bench_training url_semi   # some, by name
    python benchmarks/smoke.py --list
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
BUDGET_S, TOTAL_BUDGET_S, TIMEOUT_S = 60, 6 * 60, 15 * 60


def scripts() -> list[Path]:
    """The runnable scripts: benchmarks/*.py and benchmarks/quality/*.py with a `__main__` block (the helper
    modules beside them, such as results.py or cmdline_data.py, are not scripts), this runner and tables.py
    aside (tables.py has its own check in CI)."""
    found = sorted(BENCHMARKS.glob("*.py")) + sorted((BENCHMARKS / "quality").glob("*.py"))
    skip = {"smoke.py", "tables.py"}
    return [p for p in found if p.name not in skip and 'if __name__ == "__main__"' in p.read_text()]


def run(script: Path) -> tuple[int, float, str]:
    """Runs one script's smoke mode; returns (exit code, seconds, the tail of its output)."""
    start = time.time()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        done = subprocess.run([sys.executable, str(script), "--smoke"], cwd=BENCHMARKS.parent, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as stopped:
        code = 124
        output = f"timed out after {TIMEOUT_S} s\n" + _text(stopped.stdout) + _text(stopped.stderr)
    return code, time.time() - start, "\n".join(output.strip().splitlines()[-25:])


def _text(value: bytes | str | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="script names without .py (default: every script)")
    parser.add_argument("--list", action="store_true", help="list the scripts and stop")
    args = parser.parse_args(argv)
    chosen = scripts()
    if args.names:
        known = {p.stem: p for p in chosen}
        unknown = [n for n in args.names if n not in known]
        if unknown:
            parser.error(f"no benchmark script named {', '.join(unknown)}; known: {', '.join(known)}")
        chosen = [known[n] for n in args.names]
    if args.list:
        print("\n".join(str(p.relative_to(BENCHMARKS.parent)) for p in chosen))
        return 0
    failed, times = [], {}
    missing = [s for s in chosen if '"--smoke"' not in s.read_text()]
    for script in chosen:
        name = str(script.relative_to(BENCHMARKS.parent))
        if script in missing:
            print(f"smoke: {name}: NO SMOKE MODE yet (not run; issue 30 asks every script for one)", flush=True)
            continue
        print(f"smoke: {name} ...", flush=True)
        code, seconds, tail = run(script)
        times[name] = seconds
        over = f" (over its {BUDGET_S} s budget)" if seconds > BUDGET_S else ""
        print(f"smoke: {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {seconds:.0f} s{over}",
              flush=True)
        if code != 0:
            failed.append(name)
            print("    " + tail.replace("\n", "\n    "), flush=True)
    total = sum(times.values())
    slowest = ", ".join(f"{n} {s:.0f} s" for n, s in sorted(times.items(), key=lambda kv: -kv[1])[:3])
    over = f"; over the {TOTAL_BUDGET_S // 60}-minute budget" if total > TOTAL_BUDGET_S else ""
    lacking = f"; {len(missing)} without a smoke mode: {', '.join(p.stem for p in missing)}" if missing else ""
    ran = len(chosen) - len(missing)
    print(f"smoke: {ran - len(failed)} of {ran} passed in {total:.0f} s (slowest: {slowest}){over}{lacking}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
