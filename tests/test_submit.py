"""`smallsec submit` against a real Ray head started here on 127.0.0.1, running a small job to the end."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from smallsec_ray.cli import main

pytestmark = pytest.mark.timeout(600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agent_ports() -> list[str]:
    # Fixed default agent ports would collide with the test session's own Ray (and between nodes on one
    # machine): the node's job agent would not start and every submission would get "No available agent".
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]


def start_head(temp_dir: Path, auth: dict[str, str], workers: tuple[dict[str, float], ...] = ()):
    """A Ray head with the Jobs API (and a worker node per `workers` entry, offering those custom resources and
    its "CPU" entry's logical CPUs, 2 if it has none), each in its own process group so that the test can stop
    exactly them (`ray stop` would stop every Ray on the machine); yields the dashboard address."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    # As with an activated venv on a cluster node: the job's `python` is the one with smallsec_ray.
    venv_bin = str(Path(sys.executable).parent)
    # A loaded 2-core machine needs more than Ray's 60 s to start a worker node's raylet.
    env = {**os.environ, **auth, "PATH": f"{venv_bin}:{os.environ['PATH']}", "RAY_raylet_start_wait_time_s": "300"}
    env.pop("RAY_ADDRESS", None)
    ray_bin = Path(venv_bin) / "ray"
    # On a loaded machine the head's raylet sometimes gives up waiting for its dashboard agent's ports (after
    # ~15 s; seen at load 20-60 on 2 cores) and the head stops: start it again.
    for _attempt in range(3):
        started = _start_head_node(temp_dir, env, ray_bin, wait_for_node=bool(workers))
        if started:
            break
    else:
        pytest.fail(f"ray start --head stopped three times: {(temp_dir / 'ray-start.log').read_text()[-2000:]}")
    proc, port, address = started
    nodes = [proc]
    for i, offered in enumerate(workers):
        resources = {k: v for k, v in offered.items() if k != "CPU"}
        nodes.append(subprocess.Popen(
            [str(ray_bin), "start", "--block", f"--address=127.0.0.1:{port}", f"--num-cpus={offered.get('CPU', 2):g}",
             "--node-ip-address=127.0.0.1", f"--resources={json.dumps(resources)}",
             # A folder of its own: in the head's, the worker's runtime-env agent would delete the job's working
             # dir (unused on that node) from under the job's driver.
             f"--temp-dir={temp_dir / f'w{i}'}",
             f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}", *_agent_ports()],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=open(temp_dir / f"ray-start-worker-{i}.log", "w")))
    deadline = time.time() + 360
    while workers and _alive_nodes(address) < 1 + len(workers):
        failed = [i for i, node in enumerate(nodes) if node.poll() is not None]
        if failed or time.time() > deadline:
            for node in nodes:
                with contextlib.suppress(ProcessLookupError):  # a node whose processes are all gone
                    os.killpg(node.pid, signal.SIGKILL)
            name = "ray-start.log" if failed[:1] == [0] else f"ray-start-worker-{failed[0] - 1 if failed else 0}.log"
            pytest.fail(f"a Ray node of the test cluster stopped or did not join: {name}: "
                        f"{(temp_dir / name).read_text()[-2000:]}")
        time.sleep(2)
    yield address
    # On SIGTERM the GCS stops at once but the raylet and the autoscaler monitor stay up, and `ray start --block`
    # waits on them: 30 s of grace cost 30 s per node and ended in SIGKILL anyway.
    for node in reversed(nodes):
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=30)


def _start_head_node(temp_dir: Path, env: dict[str, str], ray_bin: Path, wait_for_node: bool):
    """`ray start --head`: (process, GCS port, dashboard address) once its dashboard answers (and, with
    `wait_for_node`, its node is registered: a worker that finds no head node gives up), or None if it stopped."""
    port, dash = free_port(), free_port()
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--temp-dir={temp_dir}", "--include-dashboard=true", *_agent_ports()],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=open(temp_dir / "ray-start.log", "w"))
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 300
    while True:
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=2):
                up = True
        except urllib.error.HTTPError:  # up, and asking for a token
            up = True
        except OSError:
            up = False
        if up and (not wait_for_node or _alive_nodes(address) >= 1):
            return proc, port, address
        if proc.poll() is not None or time.time() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                pytest.fail("the Ray head did not come up in 300 s")
            return None
        time.sleep(1)


def _alive_nodes(address: str) -> int:
    """How many nodes the head's state API lists as alive (0 while it does not answer)."""
    try:
        with urllib.request.urlopen(f"{address}/api/v0/nodes?limit=100", timeout=10) as answer:
            nodes = json.loads(answer.read())["data"]["result"]["result"]
    except (OSError, ValueError, KeyError):
        return 0
    return sum(node.get("state") == "ALIVE" for node in nodes)


@pytest.fixture
def ray_head(tmp_path_factory):
    yield from start_head(tmp_path_factory.mktemp("rayhead"), {"RAY_AUTH_MODE": "disabled"})


@pytest.mark.slow  # a job on a cluster started here: `make test-slow`
def test_submit_runs_the_job_on_the_cluster(ray_head, tmp_path, shared_data, capsys, monkeypatch):
    out = tmp_path / "run"
    spec = {"name": "submitted", "workload": "distill", "artifact": "cmdline",
            "data": {"labelled": [str(shared_data / "cmdline" / "gtfobins.jsonl")],
                     "columns": {"group": ["binary"]}, "max_rows_per_shard": 200},
            "output": str(out)}
    work = tmp_path / "work"
    work.mkdir()
    (work / "job.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(work)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    code = main(["submit", "job.yaml", "--address", ray_head, "--until", "prepare", "--wait"])
    printed = capsys.readouterr().out
    assert "submitted job" in printed and "ray job logs" in printed
    assert code == 0, printed[-3000:]
    manifest = json.loads((out / "prepare" / "manifest.json").read_text())
    rows = manifest["result"]["rows"]
    assert rows["rows_in"] == 200 and rows["rows_out"] + rows["rows_quarantined"] == 200
    # The job's log (what `ray job logs` shows) has the stage lines, not Ray's own.
    assert "[1/7] prepare: done" in printed and "(raylet)" not in printed


def submit_shipped_until_prepare(name: str, defaults: dict, tmp_path, ray_head, monkeypatch, capsys) -> str:
    """Submits jobs/cluster/NAME as shipped through prepare, its ${...} variables set in this process only:
    `submit` sends them with the job (the Ray job does not see this process's environment otherwise).
    Returns what it printed."""
    text = (Path(__file__).resolve().parents[1] / "jobs" / "cluster" / name).read_text()
    for reference, path in defaults.items():
        monkeypatch.setenv(reference[2:].split(":-")[0], str(path))
    work = tmp_path / "work"
    work.mkdir()
    (work / "job.yaml").write_text(text)
    monkeypatch.chdir(work)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    code = main(["submit", "job.yaml", "--address", ray_head, "--until", "prepare", "--wait"])
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    return printed


@pytest.mark.slow  # a job on a cluster started here: `make test-slow`
def test_the_cluster_semi_supervised_spec_is_submitted_as_shipped(ray_head, tmp_path, shared_data, tiny_classifier,
                                                                 capsys, monkeypatch):
    """jobs/cluster/semi_supervised.yaml as shipped, its ${...} defaults pointed at local files (the Ray job
    does not see this process's environment), through prepare on the local head."""
    data = tmp_path / "data"
    urls = pd.read_csv(shared_data / "url" / "phishtank.csv", usecols=["url"]).drop_duplicates()
    for k, (name, part) in enumerate((("url-analyst-labelled", "labelled"), ("url-proxy-logs", "unlabelled"),
                                      ("url-held-out-domains", "test"))):
        (data / name).mkdir(parents=True)
        rows = urls.iloc[k * 60:(k + 1) * 60]
        rows = rows.assign(registered_domain=rows["url"], id=[f"{part}-{i}" for i in range(len(rows))])
        if part != "unlabelled":
            rows = rows.assign(label="phishing")
        rows.to_parquet(data / name / "part-0.parquet")
    printed = submit_shipped_until_prepare("semi_supervised.yaml", {
        "${DATA_URI:-s3://my-bucket/telemetry}": data, "${OUTPUT_DIR:-/mnt/shared/smallsec-runs}": tmp_path / "runs",
        "${TEACHER_DIR:-/mnt/models/Qwen2.5-7B-Instruct}": tiny_classifier}, tmp_path, ray_head, monkeypatch, capsys)
    assert "workload semi_supervised, 7 stages" in printed and "[1/7] prepare: done" in printed
    assert "variables sent with the job: DATA_URI, OUTPUT_DIR, TEACHER_DIR" in printed
    assert "asks for labeling: 1-8 teacher replica(s) x {CPU: 4, GPU: 1, teacher_gpu: 1}" in printed
    prepare = json.loads((tmp_path / "runs" / "semi-supervised-cluster" / "prepare" / "manifest.json").read_text())
    parts = prepare["result"]["parts"]
    assert parts["unlabelled"]["rows"]["rows_out"] == 60 and parts["unlabelled"]["by_split"] == {"train": 60}


@pytest.mark.slow  # a job on a cluster started here: `make test-slow`
def test_the_cluster_synthetic_spec_is_submitted_as_shipped(ray_head, tmp_path, shared_data, tiny_causal_lm, capsys,
                                                            monkeypatch):
    """jobs/cluster/synthetic.yaml as shipped, its ${...} defaults pointed at local files (real pages, a tiny
    generator, a tiny production HTML model), through prepare on the local head."""
    from smallsec_ray.students import build_student, student_config
    from smallsec_ray.students.folder import Lineage, ModelConfig, save_model

    data = tmp_path / "data"
    pages = pd.read_json(shared_data / "html" / "zphisher_pages.jsonl.gz", lines=True)[["html", "label"]]
    for k, name in enumerate(("html-analyst-labelled", "html-regression-set")):
        (data / name).mkdir(parents=True)
        rows = pages.iloc[k * 30:(k + 1) * 30]
        rows.assign(id=[f"{name}-{i}" for i in range(len(rows))]).to_parquet(data / name / "part-0.parquet")
    model, encoder = build_student("html_hier", "tiny", 2, None)
    production = tmp_path / "production"
    save_model(production, model.state_dict(),
               ModelConfig(student_config(model), encoder.config(), ["benign", "phishing"], Lineage()))
    printed = submit_shipped_until_prepare("synthetic.yaml", {
        "${DATA_URI:-s3://my-bucket/telemetry}": data, "${OUTPUT_DIR:-/mnt/shared/smallsec-runs}": tmp_path / "runs",
        "${GENERATOR_DIR:-/mnt/models/Qwen2.5-7B-Instruct}": tiny_causal_lm,
        "${PRODUCTION_MODEL:-/mnt/shared/models/html-production}": production}, tmp_path, ray_head, monkeypatch,
        capsys)
    assert "workload synthetic, 8 stages" in printed and "[1/8] prepare: done" in printed
    prepare = json.loads((tmp_path / "runs" / "synthetic-cluster" / "prepare" / "manifest.json").read_text())
    assert prepare["result"]["parts"]["labelled"]["rows"]["rows_out"] == 30


# The shipped cluster distill spec on one machine (cluster/README.md, "Try the cluster spec on one machine"):
# demo data, a tiny teacher, a local output folder, no GPUs and one worker per fit.
ONE_MACHINE = {"GPUS_PER_WORKER": "0", "CPUS_PER_WORKER": "1", "TEACHER_WORKERS": "1", "STUDENT_WORKERS": "1"}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # every stage of a job, on a loaded 2-core machine
def test_the_cluster_distill_spec_runs_every_stage_on_a_head_and_two_worker_nodes(tmp_path, tiny_classifier, capsys,
                                                                                  monkeypatch):
    """jobs/cluster/distill.yaml as shipped, submitted to a head, a teacher node and a trainer node started here,
    the workers offering the custom resources the spec asks for (as the launcher configs' GPU groups do): the
    teacher replica can only run on the one, the trainers only on the other. Every stage runs; every row is
    accounted for."""
    from smallsec_ray.data.demo import write_demo_data

    demo = tmp_path / "demo"
    write_demo_data(demo, seed=4, scale=0.1)  # a seed whose labelled test split holds both classes
    data = tmp_path / "telemetry"  # the layout the spec reads: DATA_URI/analyst-labelled/, .../signature-labelled/
    data.mkdir()
    (demo / "cmdline" / "labelled").rename(data / "analyst-labelled")
    (demo / "cmdline" / "noisy").rename(data / "signature-labelled")
    runs = tmp_path / "runs"
    for name, value in {**ONE_MACHINE, "DATA_URI": str(data), "TEACHER_DIR": str(tiny_classifier),
                        "OUTPUT_DIR": str(runs)}.items():
        monkeypatch.setenv(name, value)
    work = tmp_path / "work"
    work.mkdir()
    (work / "jobs").mkdir()
    (work / "jobs" / "distill.yaml").write_text((Path(__file__).resolve().parents[1] / "jobs" / "cluster" /
                                                 "distill.yaml").read_text())
    monkeypatch.chdir(work)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    head = start_head(Path(tempfile.mkdtemp(prefix="rd", dir="/tmp")), {"RAY_AUTH_MODE": "disabled"},
                      workers=({"CPU": 1, "teacher_gpu": 1}, {"CPU": 1, "trainer_gpu": 1}))
    address = next(head)
    try:
        code = main(["submit", "jobs/distill.yaml", "--address", address, "--wait"])
        printed = capsys.readouterr().out
        assert code == 0, printed[-4000:]
    finally:
        next(head, None)
    assert ("variables sent with the job: CPUS_PER_WORKER, DATA_URI, GPUS_PER_WORKER, OUTPUT_DIR, STUDENT_WORKERS, "
            "TEACHER_DIR, TEACHER_WORKERS") in printed
    assert "asks for labeling: 1-8 teacher replica(s) x {CPU: 1, teacher_gpu: 1}" in printed
    assert "asks for teacher fine-tuning: 1 worker(s) x {CPU: 1, trainer_gpu: 1}" in printed
    assert "[7/7] evaluate: done" in printed, printed[-4000:]

    run = runs / "distill-cluster"
    manifests = {path.parent.name: json.loads(path.read_text())["result"] for path in run.glob("*/manifest.json")}
    assert set(manifests) == {"prepare", "finetune_teacher", "label", "train_student", "train_baseline", "export",
                              "evaluate"}
    prepare, label = manifests["prepare"], manifests["label"]
    for part in ("labelled", "noisy"):
        rows = prepare["parts"][part]["rows"]
        assert rows["rows_in"] == rows["rows_out"] + rows["rows_quarantined"] > 0

    def ids(shards: list[str]) -> list[str]:
        return [i for s in shards for i in pd.read_parquet(run / s, columns=["id"])["id"]]

    prepared = ids([s for part in ("labelled", "noisy") for s in prepare["parts"][part]["shards"]])
    labelled = ids([s for part in ("labelled", "noisy") for s in label["parts"][part]]) + ids(label["quarantine"])
    assert sorted(labelled) == sorted(prepared)  # every prepared row labelled once, none lost
    assert (run / manifests["export"]["model_dir"] / "model.onnx").is_file()
    assert (run / "report.md").is_file() and json.loads((run / "report.json").read_text())


def test_submit_takes_ray_address_and_says_in_one_line_when_it_cannot_reach_it(tmp_path, monkeypatch, capsys):
    spec = Path(__file__).resolve().parents[1] / "jobs" / "cluster" / "distill.yaml"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["submit", str(spec)]) == 2
    assert "no cluster address; pass --address http://HEAD:8265 or set RAY_ADDRESS" in capsys.readouterr().err
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{free_port()}")
    assert main(["submit", str(spec)]) == 2
    out = capsys.readouterr()
    assert "asks for training: 4 worker(s) x {CPU: 4, GPU: 1, trainer_gpu: 1}" in out.out
    [line] = out.err.strip().splitlines()
    assert line.startswith("error: cannot reach a Ray cluster's dashboard at http://127.0.0.1:")


@pytest.mark.slow  # a job on a cluster started here: `make test-slow`
def test_submit_to_a_cluster_with_token_authentication_needs_its_token(tmp_path):
    token = tmp_path / "auth_token"
    token.write_text("smallsec-test-token-0123456789abcdef")
    # A short folder: Ray's socket paths under it must stay within 107 bytes.
    head = start_head(Path(tempfile.mkdtemp(prefix="rayhead-")), {"RAY_AUTH_MODE": "token",
                                                                  "RAY_AUTH_TOKEN_PATH": str(token)})
    address = next(head)
    try:
        with pytest.raises(urllib.error.HTTPError):  # the dashboard asks for the token
            urllib.request.urlopen(f"{address}/api/jobs/", timeout=5)
        spec = {"name": "t", "workload": "distill", "artifact": "cmdline",
                "data": {"labelled": ["/nowhere/rows.jsonl"]}, "output": str(tmp_path / "run")}
        work = tmp_path / "work"
        work.mkdir()
        (work / "job.yaml").write_text(yaml.safe_dump(spec))
        # Fresh processes, as a user runs it: no token in the environment, none in ~/.ray.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["HOME"] = str(tmp_path / "home")
        smallsec = [sys.executable, "-m", "smallsec_ray.cli", "submit", "job.yaml", "--address", address]
        refused = subprocess.run(smallsec, cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and "asks for its token (token authentication)" in refused.stderr
        assert "Traceback" not in refused.stderr
        accepted = subprocess.run([*smallsec, "--auth-token-file", str(token)], cwd=work, env=env,
                                  capture_output=True, text=True, timeout=120)
        assert accepted.returncode == 0, accepted.stderr[-2000:]
        assert "submitted job" in accepted.stdout
    finally:
        next(head, None)
