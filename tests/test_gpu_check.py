"""benchmarks/gpu_check.py, the prepared GPU check, runs its whole path on the CPU with tiny models (so it does
not rot between GPU machines), and says in one line that a GPU is missing instead of failing with a traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(1800)

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def run_check(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SMALLSEC_VERBOSE")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=1700)


@pytest.mark.slow
def test_the_dry_run_takes_the_gpu_path_on_the_cpu_and_writes_its_figures(tmp_path):
    out = tmp_path / "figures.json"
    proc = run_check("--device", "cpu", "--tiny", "--parity-rows", "32", "--work", str(tmp_path / "work"),
                     "--out", str(out))
    log = tmp_path / "work" / "run" / "job.log"
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:] + (log.read_text()[-3000:]
                                                                              if log.is_file() else "")
    figures = json.loads(out.read_text())["results"]  # beside its provenance (benchmarks/results.py)
    assert figures["ok"] and figures["device"] == "cpu"
    for parity in ("classify_parity", "label_token_parity"):
        assert figures[parity]["rows"] == 32 and figures[parity]["max_abs_diff"] <= figures[parity]["tolerance"]
    assert figures["finetune_teacher"]["steps"] >= 1 and figures["label_classify"]["rows"] > 0
    assert figures["label_token"]["rows"] > 0 and figures["train_student"]["train_rows_per_s"] > 0


def test_without_a_gpu_it_says_so_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run_check("--out", str(tmp_path / "figures.json"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("gpu_check: no CUDA device here")
    assert not (tmp_path / "figures.json").exists()
