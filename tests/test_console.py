"""The console a person reads: stage and worker lines, a labelling progress line, the rest in the run's log."""

import io
import os
import subprocess
import sys

from smallsec_ray.console import Console, job_console


def test_progress_shows_rows_shards_rate_and_eta_and_keeps_quiet_between_lines():
    out = io.StringIO()
    console = Console(out)
    with console.track("label", total_rows=1000, total_shards=4) as tracker:
        console.handle(("rows", 100))  # the first rows: a line at once (engine start-up is over)
        console.handle(("rows", 100))  # within PROGRESS_EVERY_S of it: no line
        tracker.shard_done()
        console.handle(("line", "    train_student: epoch 1/2"))
    lines = out.getvalue().splitlines()
    assert lines == ["    label: 0/4 shards, 100/1,000 rows", "    train_student: epoch 1/2"]


def test_a_job_console_sends_native_output_to_the_log_and_lines_to_the_console(tmp_path):
    code = ("import os, sys\n"
            "from pathlib import Path\n"
            "from smallsec_ray.console import job_console\n"
            "with job_console(Path(sys.argv[1])) as out:\n"
            "    out.line('stage line')\n"
            "    os.write(2, b'native noise\\n')\n"
            "    print('python noise')\n")
    env = {k: v for k, v in os.environ.items() if k != "SMALLSEC_VERBOSE"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "stage line\n" and proc.stderr == ""
    log = (tmp_path / "job.log").read_text()
    assert "native noise" in log and "python noise" in log
    verbose = subprocess.run([sys.executable, "-c", code, str(tmp_path / "v")], capture_output=True, text=True,
                             env={**env, "SMALLSEC_VERBOSE": "1"})
    assert "python noise" in verbose.stdout and "native noise" in verbose.stderr


def test_job_console_writes_to_a_captured_stream_as_it_is(tmp_path, capsys):
    with job_console(tmp_path) as out:
        out.line("stage line")
    assert capsys.readouterr().out == "stage line\n"
