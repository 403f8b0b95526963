"""Node loss on one machine: a Ray cluster of several nodes (ray.cluster_utils.Cluster, each node with its own
resources) loses the node that holds a teacher replica or a training worker, and a `smallsec run` driver is
killed; each time the work finishes and every row is accounted for exactly once, checked by id.

The teacher and trainer nodes offer custom resources (teacher_node, trainer_node) that only they have, as the
node groups of cluster/ do, so that replicas and workers land on the node the test takes away, and Ray Data's
and Ray Train's bookkeeping (which stays with the driver, on the head) does not.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY_CLASSES
from drills import FailOnce, Trace

from smallsec_ray.data.schema import ID, LABEL, PROBS, TEXT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # multi-node: `make test-slow`

TEACHER_NODE, TRAINER_NODE = "teacher_node", "trainer_node"


@pytest.fixture(scope="module")
def cluster():
    """A head node (the driver's, 3 CPUs) to which each test adds and removes worker nodes. Ray's files go
    to a temporary folder of its own (short: socket paths must stay under 107 bytes), so that nothing here
    touches another Ray on this machine. A Ray the session had started is stopped first and started again
    after."""
    import ray
    from ray.cluster_utils import Cluster

    from smallsec_ray.runtime import init_ray

    was_up = ray.is_initialized()
    if was_up:
        ray.shutdown()
    temp = tempfile.mkdtemp(prefix="rn", dir="/tmp")
    saved_tmpdir = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp  # also where the Cluster writes its address file (not /tmp/ray)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "object_store_memory": 300 << 20,
                                                         "include_dashboard": False})
    init_ray(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    if saved_tmpdir is None:
        os.environ.pop("RAY_TMPDIR")
    else:
        os.environ["RAY_TMPDIR"] = saved_tmpdir
    shutil.rmtree(temp, ignore_errors=True)
    if was_up:
        init_ray(num_cpus=4)


@pytest.fixture
def add_node(cluster):
    """add_node(resource): a worker node of 1 CPU offering one `resource`; the test's nodes go when it ends."""
    added = []

    def add(resource: str):
        added.append(cluster.add_node(num_cpus=1, resources={resource: 1}, object_store_memory=100 << 20))
        return added[-1]

    yield add
    for node in added:
        if node in cluster.worker_nodes:
            cluster.remove_node(node, allow_graceful=False)


def crash(cluster, node) -> None:
    """Takes `node` away as a crash does: its raylet and every worker process on it die at once
    (Cluster.remove_node alone leaves a busy worker running until it next talks to Ray, finishing its work)."""
    import psutil
    from ray._private import ray_constants

    raylet = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
    for process in raylet.children(recursive=True):
        process.kill()
    cluster.remove_node(node, allow_graceful=False)


def wait_for(condition, timeout: float, what: str, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    """Runs fn in a thread; the returned dict gets its "result" or "error"."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the test, which raises it
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def joined(thread: threading.Thread, box: dict, timeout: float):
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout:.0f} s"
    if "error" in box:
        raise box["error"]
    return box["result"]


# ---------------------------------------------------------------- labelling


ROWS_PER_SHARD, SHARDS = 40, 6
MISSING = {"2-7", "4-0"}  # rows without text: quarantined, not labelled


@pytest.fixture(scope="module")
def label_shards_in(shared_data, tmp_path_factory) -> list[str]:
    """Six prepared shards of real command lines; two rows have no text."""
    texts = pd.read_json(shared_data / "cmdline" / "tldr.jsonl.gz", lines=True).text.head(ROWS_PER_SHARD * SHARDS)
    folder = tmp_path_factory.mktemp("prepared")
    paths = []
    for s in range(SHARDS):
        ids = [f"{s}-{i}" for i in range(ROWS_PER_SHARD)]
        part = [None if i in MISSING else t for i, t in zip(ids, texts[s * ROWS_PER_SHARD:(s + 1) * ROWS_PER_SHARD],
                                                            strict=True)]
        paths.append(str(folder / f"part-{s:05d}.parquet"))
        pq.write_table(pa.table({ID: ids, TEXT: part, LABEL: ["benign"] * len(ids)}), paths[-1])
    return paths


def test_labelling_finishes_when_the_teacher_node_is_lost_and_labels_each_row_once(
        cluster, add_node, label_shards_in, tiny_classifier, tmp_path):
    from smallsec_ray.labeling import label_shards

    out = tmp_path / "labels"
    probs_dir = out / "probs"
    first = add_node(TEACHER_NODE)
    teacher_cfg = {"kind": "classifier", "backend": "hf", "model": str(tiny_classifier), "max_length": 64,
                   "dtype": "float32", "artifact": "cmdline"}
    thread, box = in_thread(label_shards, label_shards_in, str(out), teacher_cfg, TINY_CLASSES, replicas=1,
                            cpus_per_replica=0.5, batch_size=8, resources={TEACHER_NODE: 1})

    # The replica (on the only node with teacher_node) has finished a shard and is writing another.
    def mid_shard():
        done = list(probs_dir.glob("*.parquet"))
        return 1 <= len(done) < SHARDS and list(probs_dir.glob(".*.tmp*"))

    in_flight = wait_for(mid_shard, 300, "a labelled shard and another one in flight")
    crash(cluster, first)
    assert all(p.exists() for p in in_flight), "the shard in flight finished before its node was lost"
    add_node(TEACHER_NODE)  # as an autoscaler replaces a lost node
    result = joined(thread, box, 300)

    inputs = pa.concat_tables([pq.read_table(p) for p in label_shards_in])
    labelled = pa.concat_tables([pq.read_table(s.output) for s in result.shards])
    quarantined = pa.concat_tables([pq.read_table(s.quarantine) for s in result.shards if s.quarantine])
    valid = set(inputs[ID].to_pylist()) - MISSING
    counts = Counter(labelled[ID].to_pylist())
    assert set(counts) == valid and set(counts.values()) == {1}, "a valid row lost or labelled twice"
    assert sorted(quarantined[ID].to_pylist()) == sorted(MISSING)
    assert result.rows.rows_in == len(inputs) == result.rows.rows_out + result.rows.rows_quarantined
    probs = np.array(labelled[PROBS].to_pylist())
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert not list(out.rglob("*.tmp*")), "the attempt that died left its temporary shard behind"


# ---------------------------------------------------------------- training


CLASSES = ["benign", "malicious"]
BATCH = 32


@pytest.fixture(scope="module")
def train_val(shared_data) -> tuple[pd.DataFrame, pd.DataFrame]:
    """640 real command lines with ids (Atomic Red Team malicious, tldr benign): 480 train, 160 validation."""
    frames = [pd.read_json(shared_data / "cmdline" / name, lines=True)[[TEXT, LABEL]].sample(320, random_state=0)
              for name in ("atomic_red_team.jsonl", "tldr.jsonl.gz")]
    rows = pd.concat(frames).sample(frac=1.0, random_state=0).reset_index(drop=True)
    rows.insert(0, ID, [f"row-{i}" for i in range(len(rows))])
    return rows.iloc[:480].reset_index(drop=True), rows.iloc[480:].reset_index(drop=True)


def trained_lineage(trace: Path) -> tuple[list[int], dict[int, Counter]]:
    """From the workers' traces: the steps the run resumed at, and for each epoch how often each row key was
    trained on by the steps that count (an attempt's steps after the checkpoint the next one resumed from were
    rolled back)."""
    lines = [json.loads(line) for path in trace.glob("rank-*.jsonl") for line in path.read_text().splitlines()]
    resumes = sorted({line["resumed_at_step"] for line in lines})
    counts: dict[int, Counter] = {}
    for line in lines:
        later = [r for r in resumes if r > line["resumed_at_step"]]
        if later and line["step"] > later[0]:
            continue
        counts.setdefault(line["epoch"], Counter()).update(line["keys"])
    return resumes, counts


def test_training_resumes_after_losing_a_worker_node_and_trains_each_row_once_per_epoch(cluster, add_node,
                                                                                      train_val, tmp_path):
    import ray
    import torch

    from smallsec_ray.spec import StudentSpec, TrainingSpec
    from smallsec_ray.students.folder import load_model
    from smallsec_ray.training.trainer import row_keys, train_student

    train, val = train_val
    nodes = [add_node(TRAINER_NODE) for _ in range(2)]  # one worker on each
    steps_per_epoch = math.ceil(len(train) / 2 / BATCH)  # 8
    # Checkpoints at steps 8 (epoch 1), 10 (mid-epoch 2) and 16; a worker's node is lost at step 12.
    spec = TrainingSpec(epochs=2, batch_size=BATCH, learning_rate=3e-3, early_stopping_patience=0,
                        checkpoint_every_steps=10, materialize=False,
                        scaling={"strategy": "ddp", "workers": 2, "cpus_per_worker": 1.0, "max_failures": 1,
                                 "resources": {TRAINER_NODE: 1}})
    marker, trace = tmp_path / "stopped.json", tmp_path / "trace"
    trace.mkdir()
    drills = [Trace(str(trace)), FailOnce(steps_per_epoch + 4, str(marker), hang=True)]
    # An unseeded shuffle: Ray Data hands the rows out in another order after the restart.
    rows = ray.data.from_pandas(train).random_shuffle()
    thread, box = in_thread(train_student, spec, StudentSpec(preset="tiny"), CLASSES, rows,
                            ray.data.from_pandas(val), tmp_path / "out", callbacks=drills)

    def stopped():
        try:
            return json.loads(marker.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    stop = wait_for(stopped, 400, "the drill to stop a worker", poll=0.2)
    crash(cluster, next(n for n in nodes if n.node_id == stop["node"]))
    add_node(TRAINER_NODE)  # as an autoscaler replaces a lost node
    result = joined(thread, box, 400)

    # Resumed from the mid-epoch checkpoint (step 10), not from the epoch's start or from scratch.
    resumes, counts = trained_lineage(trace)
    assert resumes == [0, 10] and [m["resumed_at_step"] for m in result.epochs] == [0, 10]
    # Every training row exactly once in each epoch, across the restart.
    keys = Counter(row_keys(train[ID]).tolist())
    assert len(keys) == len(train)
    assert sorted(counts) == [0, 1]
    for epoch, seen in counts.items():
        assert seen == keys, (f"epoch {epoch + 1}: {len(set(keys) - set(seen))} rows never trained on, "
                              f"{sum(n > 1 for n in seen.values())} trained on more than once")

    # The final model loads without Ray and scores as its validation said.
    model, encoder, config = load_model(result.model_dir)
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(encoder.encode(list(val[TEXT])))), -1).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    accuracy = float(np.mean(np.array(config.classes)[probs.argmax(axis=1)] == val[LABEL].to_numpy()))
    best = result.epochs[result.best_epoch - 1]
    assert accuracy == pytest.approx(best["val_accuracy"], abs=0.01) and best["val_auc"] is not None


# ---------------------------------------------------------------- driver


def test_a_driver_killed_while_labelling_reruns_reusing_finished_stages_and_shards(tiny_classifier, tmp_path):
    """`smallsec run` (its own embedded Ray) killed with SIGKILL mid-label, then run again."""
    import psutil
    import yaml

    from smallsec_ray.data.demo import write_demo_data

    data, out = tmp_path / "data", tmp_path / "run"
    write_demo_data(data, seed=1, scale=0.3)  # ~1,700 rows in 8 shards: labelling takes a few seconds
    spec = {
        "name": "driver-loss", "workload": "distill", "artifact": "cmdline",
        "data": {"labelled": [str(data / "cmdline/labelled")], "noisy": [str(data / "cmdline/noisy")],
                 "test": [str(data / "cmdline/test")], "split": {"validation": 0.25, "test": 0.0}},
        "teacher": {"model": str(tiny_classifier), "backend": "hf", "max_length": 64, "finetune": {"enabled": False}},
        "labeling": {"cpus_per_replica": 0.5, "batch_size": 8},
        "resources": {"num_cpus": 4},
        "output": str(out),
    }
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    ray_files = tempfile.mkdtemp(prefix="rn", dir="/tmp")  # the embedded Ray's, away from other Rays here
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SMALLSEC_VERBOSE")},
           "RAY_TMPDIR": ray_files}
    command = [sys.executable, "-m", "smallsec_ray.cli", "run", str(spec_path), "--until", "label"]
    probs = out / "label" / "probs"
    try:
        with open(tmp_path / "first.txt", "w") as printed:
            driver = subprocess.Popen(command, env=env, stdout=printed, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: list(probs.glob("*.parquet")) or driver.poll() is not None, 400,
                     "a labelled shard", poll=0.02)
            family = psutil.Process(driver.pid).children(recursive=True)  # its Ray: the head's processes
            driver.send_signal(signal.SIGKILL)
        finally:
            driver.kill()
            driver.wait()
        for process in family:  # what a lost driver's machine takes with it
            if process.is_running():
                process.kill()
        first = (tmp_path / "first.txt").read_text()
        assert driver.returncode == -signal.SIGKILL, f"the run ended before it was killed:\n{first}"
        before = {p.name: p.stat().st_mtime_ns for p in probs.glob("*.parquet")}
        assert "[3/7] label: running" in first and not (out / "label" / "manifest.json").exists()

        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    finally:
        shutil.rmtree(ray_files, ignore_errors=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    lines = again.stdout.splitlines()
    assert any(line.startswith("[1/7] prepare: complete") and line.endswith("skipped") for line in lines), lines
    assert any(line.startswith("[2/7] finetune_teacher: complete") for line in lines), lines
    assert any(line.startswith("[3/7] label: running (resuming)") for line in lines), lines

    # The shards labelled before the kill were kept as they were, and the rest labelled.
    after = {p.name: p.stat().st_mtime_ns for p in probs.glob("*.parquet")}
    assert before and all(after[name] == mtime for name, mtime in before.items())
    assert len(after) == 8 > len(before)
    # Every prepared row of the scored parts exactly once: labelled, or quarantined by the teacher.
    prepared = [p for part in ("labelled", "noisy", "test") for p in (out / "prepare" / part).glob("*.parquet")]
    expected = pa.concat_tables([pq.read_table(p, columns=[ID]) for p in prepared])[ID].to_pylist()
    labelled = [pq.read_table(p, columns=[ID]) for p in (out / "label").glob("*/*.parquet")]
    counts = Counter(pa.concat_tables(labelled)[ID].to_pylist())
    assert set(counts) == set(expected) and set(counts.values()) == {1} and len(expected) == len(set(expected))
    assert not list(out.rglob("*.tmp*"))
