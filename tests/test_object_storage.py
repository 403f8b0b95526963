"""Run output on an object store: a real S3-compatible server (moto's server mode) on 127.0.0.1, reached
through pyarrow.fs exactly as a cluster reaches S3 (AWS_ENDPOINT_URL and keys in the environment)."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from smallsec_ray import storage
from smallsec_ray.data.demo import write_demo_data
from smallsec_ray.stages import RunFolder

pytestmark = pytest.mark.timeout(2400)

BUCKET = "smallsec-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A local S3 server and a bucket; yields the environment that points the AWS SDK (pyarrow's too) at it.
    Set in this process for the test's own reads, and handed to the jobs' subprocesses."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


def test_writes_are_whole_or_absent_and_reads_come_back(s3, tmp_path):
    where = f"s3://{BUCKET}/unit/a/b.json"
    storage.write_text(where, "{}")
    assert storage.read_text(where) == "{}" and storage.is_file(where)
    half = f"s3://{BUCKET}/unit/a/half.parquet"
    with pytest.raises(RuntimeError), storage.open_output(half) as out:
        out.write(b"PAR1 and then the writer fails")
        raise RuntimeError("the worker died")
    # Neither the object nor its temporary is left: a failed write leaves nothing a reader could take.
    assert [i.path for i in storage.list_files(f"s3://{BUCKET}/unit")] == [f"{BUCKET}/unit/a/b.json"]

    storage.write_parquet(pa.table({"id": ["1", "2"]}), f"s3://{BUCKET}/unit/m/x.parquet")
    storage.write_text(f"s3://{BUCKET}/unit/m/config.json", "{}")
    local = storage.local_copy(f"s3://{BUCKET}/unit/m")
    assert sorted(p.name for p in local.iterdir()) == ["config.json", "x.parquet"]
    assert storage.read_table(f"s3://{BUCKET}/unit/m/x.parquet")["id"].to_pylist() == ["1", "2"]


def test_reads_retry_transient_errors():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("AWS Error NETWORK_CONNECTION: connection reset")
        return "ok"

    assert storage.with_retries("reading x", flaky) == "ok" and len(calls) == 3
    with pytest.raises(FileNotFoundError):  # a missing file is an answer, not a transient error
        storage.with_retries("reading y", lambda: (_ for _ in ()).throw(FileNotFoundError("y")))


@pytest.mark.slow  # a whole job: `make test-slow`
def test_a_distill_job_runs_unchanged_with_its_output_on_s3(s3, tmp_path, tiny_classifier):
    data = tmp_path / "data"
    write_demo_data(data, seed=2, scale=0.08)
    output = f"s3://{BUCKET}/runs/distill"
    spec = {
        "name": "s3", "workload": "distill", "artifact": "cmdline",
        "data": {"labelled": [str(data / "cmdline/labelled")], "noisy": [str(data / "cmdline/noisy")],
                 "split": {"validation": 0.25, "test": 0.2}},
        "teacher": {"model": str(tiny_classifier), "max_length": 64, "finetune": {"enabled": False}},
        "labeling": {"cpus_per_replica": 0.5, "batch_size": 32},
        "student": {"model": "char_cnn", "preset": "tiny"},
        "training": {"epochs": 2, "batch_size": 64, "keep_checkpoints": 1, "scaling": {"workers": 2}},
        "evaluation": {"fprs": [0.05], "audit_top_k": 10},
        "resources": {"num_cpus": 4},
        "output": output,
    }
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    cache = tmp_path / "cache"  # this machine's copy of what the driver writes
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SMALLSEC_VERBOSE")}, **s3,
           "SMALLSEC_CACHE": str(cache)}

    def run() -> str:
        proc = subprocess.run([sys.executable, "-m", "smallsec_ray.cli", "run", str(spec_path)], env=env,
                              capture_output=True, text=True, timeout=2000)
        log = next(cache.rglob("job.log"), None)
        tail = log.read_text()[-4000:] if log else ""
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + tail
        return proc.stdout

    printed = run()
    assert f"output {output}" in printed.splitlines()[0] and "[7/7] evaluate: done" in printed, printed

    files = {i.path.removeprefix(f"{BUCKET}/runs/distill/") for i in storage.list_files(output)}
    manifests = {f.split("/")[0] for f in files if f.endswith("/manifest.json")}
    assert manifests == {"prepare", "finetune_teacher", "label", "train_baseline", "train_student", "export",
                         "evaluate"}, sorted(files)
    # Shards written by Ray tasks and actors straight into the store, named by the stage results.
    prepare = json.loads(storage.read_text(f"{output}/prepare/manifest.json"))["result"]
    label = json.loads(storage.read_text(f"{output}/label/manifest.json"))["result"]
    for shard in prepare["parts"]["labelled"]["shards"] + label["parts"]["labelled"]:
        assert shard in files, shard
    # Every row labelled once: the labelled shards hold exactly the prepared rows, by id.
    prepared_ids = sorted(i for s in prepare["parts"]["labelled"]["shards"] + prepare["parts"]["noisy"]["shards"]
                          for i in storage.read_table(f"{output}/{s}", ["id"])["id"].to_pylist())
    labelled_ids = sorted(i for s in label["parts"]["labelled"] + label["parts"]["noisy"]
                          for i in storage.read_table(f"{output}/{s}", ["id"])["id"].to_pylist())
    assert labelled_ids == prepared_ids and len(set(labelled_ids)) == len(labelled_ids)
    # Ray Train checkpoints in the store, only the kept ones; the driver's models, report and log uploaded.
    assert any(f.startswith("train_student/checkpoints/") for f in files)
    student_checkpoints = {f.split("/")[3] for f in files if f.startswith("train_student/checkpoints/")
                           and f.count("/") >= 4 and f.split("/")[3].startswith("checkpoint_")}
    assert 1 <= len(student_checkpoints) <= 2, student_checkpoints  # the best one and, if other, the latest
    export = json.loads(storage.read_text(f"{output}/export/manifest.json"))["result"]
    assert f"{export['model_dir']}/model.onnx" in files and f"{export['model_dir']}/config.json" in files
    assert {"report.md", "report.json", "plots/roc.png", "job.log", "spec.resolved.json"} <= files
    assert not [f for f in files if ".tmp" in f]  # no temporaries left behind

    # A rerun from another machine (an empty local cache) reads the manifests from the store: nothing reruns.
    cache_copy = cache.with_name("cache-old")
    cache.rename(cache_copy)
    printed = run()
    assert printed.count("skipped") == 7, printed
    assert RunFolder.at(output).remote


def test_local_output_layout_is_unchanged(tmp_path):
    folder = RunFolder.at(tmp_path / "run")
    assert not folder.remote and folder.local == tmp_path / "run" and folder.store == str(tmp_path / "run")
    assert folder.sync() == 0
    assert storage.join(folder.store, "prepare", "x.parquet") == str(Path(folder.store) / "prepare" / "x.parquet")


@pytest.mark.slow  # a whole job: `make test-slow`
def test_submit_to_a_two_node_cluster_writes_the_run_to_s3(s3, tmp_path, tiny_classifier, monkeypatch, capsys):
    """`smallsec submit` to a head and a worker node on this machine; the teacher replica may only run on the
    worker (a custom resource), so its shards reach S3 from another node than the job's driver."""
    from test_submit import start_head

    from smallsec_ray.cli import main

    data = tmp_path / "data"
    write_demo_data(data, seed=3, scale=0.05)
    output = f"s3://{BUCKET}/runs/submitted"
    spec = {"name": "submitted-s3", "workload": "distill", "artifact": "cmdline",
            "data": {"labelled": [str(data / "cmdline/labelled")], "noisy": [str(data / "cmdline/noisy")]},
            "teacher": {"model": str(tiny_classifier), "backend": "hf", "max_length": 64,
                        "finetune": {"enabled": False}},
            "labeling": {"replicas": 1, "cpus_per_replica": 0.5, "batch_size": 32, "resources": {"teacher": 1}},
            "output": output}
    work = tmp_path / "work"
    work.mkdir()
    (work / "job.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(work)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # The nodes get the S3 endpoint and keys from their environment, as cluster nodes get an instance role.
    head = start_head(Path(tempfile.mkdtemp(prefix="rs", dir="/tmp")), {"RAY_AUTH_MODE": "disabled", **s3},
                      workers=({"teacher": 1},))
    address = next(head)
    try:
        code = main(["submit", "job.yaml", "--address", address, "--until", "label", "--wait"])
        printed = capsys.readouterr().out
        assert code == 0, printed[-3000:]
    finally:
        next(head, None)
    assert f"output {output}" in printed and "[3/7] label: done" in printed, printed[-3000:]
    prepare = json.loads(storage.read_text(f"{output}/prepare/manifest.json"))["result"]
    label = json.loads(storage.read_text(f"{output}/label/manifest.json"))["result"]

    def ids(shards: list[str]) -> list[str]:
        return [i for s in shards for i in storage.read_table(f"{output}/{s}", ["id"])["id"].to_pylist()]

    prepared = ids([s for part in ("labelled", "noisy") for s in prepare["parts"][part]["shards"]])
    labelled = ids([s for part in ("labelled", "noisy") for s in label["parts"][part]]) + ids(label["quarantine"])
    assert sorted(labelled) == sorted(prepared)  # every prepared row once, none lost
    assert storage.is_file(f"{output}/job.log") and storage.is_file(f"{output}/spec.resolved.json")


def test_a_file_uri_output_is_the_local_folder(tmp_path):
    folder = RunFolder.at(f"file://{tmp_path}/run")
    assert not folder.remote and folder.local == tmp_path / "run"
