"""Autoscaling on one machine: jobs/cluster/distill.yaml as shipped, submitted to Ray's fake multi-node provider
whose node types come from cluster/aws.yaml (smallsec_ray.autoscaling: the head with CPU 0, then cpu, teacher_gpu
and trainer_gpu groups of 1 CPU each from 0 nodes, custom resources kept, no GPUs).

These tests start their own Ray cluster and run in a pytest process of their own (`make test-autoscaling`): a
second Ray on a 2-core machine beside them would starve the fake nodes."""

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from smallsec_ray.autoscaling import NODE_MEMORY, LocalAutoscalingCluster, fake_node_types
from smallsec_ray.cli import main

pytestmark = [pytest.mark.autoscaling, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
IDLE_S = 10  # the autoscaler's idle timeout here (cluster/aws.yaml: 10 minutes)
# Tiny models and rows through the spec's variables and --set; the stages and their requests stay as shipped.
ONE_MACHINE = {"GPUS_PER_WORKER": "0", "CPUS_PER_WORKER": "1", "TEACHER_WORKERS": "1", "STUDENT_WORKERS": "1"}
TINY = ["student.preset=tiny", "training.epochs=1", "training.checkpoint_every_steps=null", "teacher.finetune.epochs=1",
        "labeling.batch_size=2"]  # small teacher calls: the tiny teacher takes a minute, time for the pool to grow


@pytest.fixture(scope="module")
def cluster():
    with LocalAutoscalingCluster(ROOT / "cluster" / "aws.yaml", idle_timeout_s=IDLE_S,
                                 env={"RAY_AUTH_MODE": "disabled"}) as started:
        yield started


class NodeLog:
    """Samples the cluster's alive nodes by type every half second: the most of each type seen at once, and every
    node id seen per type."""

    def __init__(self, cluster: LocalAutoscalingCluster) -> None:
        self.cluster, self.most, self.ids = cluster, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            nodes = self.cluster.nodes()
            for kind in {n["type"] for n in nodes}:
                self.most[kind] = max(self.most.get(kind, 0), sum(n["type"] == kind for n in nodes))
            for n in nodes:
                self.ids.setdefault(n["type"], set()).add(n["node_id"])

    def __enter__(self) -> "NodeLog":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_node_types_follow_the_shipped_launcher_config():
    shipped = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    types = fake_node_types(shipped)
    assert types["ray.head.default"]["resources"] == {"CPU": 0}
    assert set(types) == {"ray.head.default", "cpu", "teacher_gpu", "trainer_gpu"}  # spot twins left out
    assert types["teacher_gpu"]["resources"] == {"CPU": 1, "teacher_gpu": 1, **NODE_MEMORY}
    assert types["trainer_gpu"]["resources"] == {"CPU": 1, "trainer_gpu": 4, **NODE_MEMORY}
    assert all(types[t]["min_workers"] == 0 and types[t]["max_workers"] == 2 for t in ("cpu", "teacher_gpu"))


def cluster_job(tmp_path: Path, tiny_classifier: Path, monkeypatch) -> Path:
    """The shipped spec in a working dir, its variables set for demo data and the tiny teacher; returns the run."""
    from smallsec_ray.data.demo import write_demo_data

    demo = tmp_path / "demo"
    write_demo_data(demo, seed=4, scale=0.1)  # a seed whose labelled test split holds both classes
    data = tmp_path / "telemetry"  # the layout the spec reads: DATA_URI/analyst-labelled/, .../signature-labelled/
    data.mkdir()
    (demo / "cmdline" / "labelled").rename(data / "analyst-labelled")
    # Signature-labelled rows enough to keep one tiny teacher busy for most of a minute, in 16 shards: the labelling
    # pool grows while shards wait for a replica. Real command lines (../shared/data/cmdline, see its README).
    cmdline = SHARED / "cmdline"
    noisy = pd.concat([pd.read_json(cmdline / "nl2bash.jsonl", lines=True).head(4000),
                       pd.read_json(cmdline / "gtfobins.jsonl", lines=True)])[["text", "label", "source"]]
    noisy = noisy.assign(id=[f"noisy-{i}" for i in range(len(noisy))], group=[f"g{i % 97}" for i in range(len(noisy))])
    (data / "signature-labelled").mkdir()
    for k in range(16):
        noisy.iloc[k::16].to_json(data / "signature-labelled" / f"part-{k:02d}.jsonl", orient="records", lines=True)
    runs = tmp_path / "runs"
    for name, value in {**ONE_MACHINE, "DATA_URI": str(data), "TEACHER_DIR": str(tiny_classifier),
                        "OUTPUT_DIR": str(runs)}.items():
        monkeypatch.setenv(name, value)
    work = tmp_path / "work"
    (work / "jobs").mkdir(parents=True)
    (work / "jobs" / "distill.yaml").write_text((ROOT / "jobs" / "cluster" / "distill.yaml").read_text())
    monkeypatch.chdir(work)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    return runs / "distill-cluster"


def submit(cluster: LocalAutoscalingCluster, *extra: str) -> int:
    """`smallsec submit --wait` of the shipped spec, with TINY as --set overrides and `extra` options (a KEY=VALUE
    is one more --set); its exit code."""
    args = ["submit", "jobs/distill.yaml", "--address", cluster.address, "--wait"]
    for text in TINY:
        args += ["--set", text]
    for text in extra:
        args += ["--set", text] if "=" in text and not text.startswith("-") else [text]
    return main(args)


def manifests(run: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in run.glob("*/manifest.json")}


def ids(run: Path, shards: list[str]) -> list[str]:
    return [i for s in shards for i in pd.read_parquet(run / s, columns=["id"])["id"]]


def assert_every_row_labelled_once(run: Path, done: dict[str, dict]) -> None:
    prepare, label = done["prepare"]["result"], done["label"]["result"]
    prepared = ids(run, [s for part in ("labelled", "noisy") for s in prepare["parts"][part]["shards"]])
    labelled = ids(run, [s for part in ("labelled", "noisy") for s in label["parts"][part]]) + \
        ids(run, label["quarantine"])
    assert len(prepared) > 0 and len(labelled) == len(set(labelled))  # none twice
    assert sorted(labelled) == sorted(prepared)  # none lost


def wait_for(condition, timeout_s: float, every_s: float = 0.5) -> float:
    """Seconds until `condition()` holds; fails after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s} s"
        time.sleep(every_s)
    return time.monotonic() - started


def test_the_shipped_cluster_spec_scales_each_group_up_as_stages_ask_and_down_after(cluster, tmp_path,
                                                                                    tiny_classifier, capsys,
                                                                                    monkeypatch):
    run = cluster_job(tmp_path, tiny_classifier, monkeypatch)
    wait_for(lambda: cluster.node_types() == {"head": 1}, 120)  # no worker nodes to start with
    with NodeLog(cluster) as seen:
        code = submit(cluster)
        printed = capsys.readouterr().out
    assert code == 0, printed[-4000:]
    assert "[7/7] evaluate: done" in printed
    # the console said what the stages waited for
    assert re.search(r"\w+: waiting for \d+ \w+ nodes? from the autoscaler, \d+ s", printed), printed[-3000:]
    done = manifests(run)
    # Each stage's replicas or workers ran on the group that offers what they ask for. Data work (CPU only) may
    # take the CPU of any node: once the cpu group is at its max, the autoscaler adds whichever type has a CPU
    # (the fake GPU groups have no GPU to keep it away, as a real GPU node's would). Nothing ran on the head.
    for stage in ("finetune_teacher", "train_student", "train_baseline"):
        assert "trainer_gpu" in done[stage]["nodes"], (stage, done[stage]["nodes"])
    assert "head" not in {kind for m in done.values() for kind in m["nodes"]}
    # The replicas ran on teacher_gpu nodes only. Whether the pool (1-8 replicas) also grows to a second node
    # here depends on Ray Data's actor autoscaler deciding so before the tiny teacher is done (about 20 s of
    # labelling): it did in 1 of 4 runs, so it is not asserted (issue 31's closing note).
    assert set(done["label"]["nodes"]) == {"teacher_gpu"}, done["label"]["nodes"]
    assert seen.most.get("teacher_gpu", 0) >= 1, seen.most
    assert_every_row_labelled_once(run, done)
    # After the job every worker goes, once idle for the idle timeout.
    gone = wait_for(lambda: cluster.node_types() == {"head": 1}, IDLE_S + 60)
    print(f"workers gone {gone:.0f} s after the job")


def test_a_teacher_node_lost_mid_labelling_is_replaced_and_every_row_is_labelled_once(cluster, tmp_path,
                                                                                      tiny_classifier, capsys,
                                                                                      monkeypatch):
    """A teacher node killed mid-labelling, all its processes at once, as a spot preemption takes a machine."""
    run = cluster_job(tmp_path, tiny_classifier, monkeypatch)
    killed: list[str] = []

    def preempt() -> None:
        # once the label stage's pool has a teacher node busy and shards written
        wait_for(lambda: any((run / "label").glob("**/*.parquet")) and cluster.node_types().get("teacher_gpu"),
                 600, every_s=0.2)
        node = next(n for n in cluster.nodes() if n["type"] == "teacher_gpu")
        kill_node(node["node_id"])
        killed.append(node["node_id"])

    with NodeLog(cluster) as seen:
        thread = threading.Thread(target=preempt, daemon=True)
        thread.start()
        code = submit(cluster, "--until", "label")
        printed = capsys.readouterr().out
        thread.join(timeout=10)
    assert code == 0, printed[-4000:]
    assert killed, "the label stage ended before a teacher node could be taken away"
    assert_every_row_labelled_once(run, manifests(run))
    # the autoscaler started another teacher node than the one lost
    assert seen.ids["teacher_gpu"] - set(killed), seen.ids


def kill_node(node_id: str) -> None:
    """SIGKILL to every process of the fake node `node_id`: the fake provider starts its raylet with the node's id in
    RAY_OVERRIDE_NODE_ID_FOR_TESTING, and the raylet's workers inherit it."""
    mark = f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    assert pids, f"no process of node {node_id}"
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_request_no_node_type_offers_fails_in_seconds_naming_the_key(cluster, tmp_path, tiny_classifier, capsys,
                                                                       monkeypatch):
    cluster_job(tmp_path, tiny_classifier, monkeypatch)
    started = time.monotonic()
    code = submit(cluster, "teacher.finetune.scaling.resources={trainer_gpus: 1}")
    printed = capsys.readouterr().out
    assert code == 1
    assert ("teacher.finetune.scaling: each worker asks for {CPU: 1, trainer_gpus: 1}; no node type of this cluster "
            "offers trainer_gpus (cpu: CPU 1; teacher_gpu: CPU 1, teacher_gpu 1; trainer_gpu: CPU 1, trainer_gpu 4)"
            ) in printed, printed[-3000:]
    assert time.monotonic() - started < 240  # prepare, then the check: no Ray Train worker group ever waits
