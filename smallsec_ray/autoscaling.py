"""An autoscaling Ray cluster on one machine, for tests and for watching a job scale on a laptop.

Ray's fake multi-node provider plays the cloud: the autoscaler "launches" a node by starting another raylet
here. The node types come from a shipped launcher config (cluster/aws.yaml), scaled down to this machine: the
head as shipped (CPU 0: no work runs there), each worker group with `cpus` CPUs, no GPUs and its custom
resources kept (teacher_gpu, trainer_gpu), from min_workers nodes. So a stage that asks for `teacher_gpu`
wakes the teacher group, as it would on AWS.

    smallsec local-cluster                      # start it, print the address; Ctrl-C stops it
    ray status --address 127.0.0.1:PORT         # watch the groups come and go

Every process of the cluster runs in one process group of its own: stopping it stops exactly those (never
`ray stop`, which would stop every Ray of the user on the machine).
"""

from __future__ import annotations

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smallsec_ray.errors import SmallsecError
from smallsec_ray.placement import NODE_GROUP_LABEL

FAKE_HEAD_NODE_ID = "f" * 51 + "00000"  # the fake provider's id of the head (its workers count up from it)
HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head's node type
# Memory each fake node declares: Ray Data asks for memory with its actors, and the autoscaler starts a node for a
# request only if the node type says it has that much (a cloud provider fills it in from the instance type).
NODE_MEMORY = {"memory": 4 << 30, "object_store_memory": 512 << 20}
FAKE_PROVIDER = "smallsec_ray.autoscaling.LocalNodeProvider"


def fake_node_types(config: dict, cpus: int = 1, max_workers: int = 2) -> dict[str, dict]:
    """The fake provider's node types from a launcher config: the head with the shipped head type's resources,
    every worker group with `cpus` CPUs, GPU 0 and its custom resources, from its min_workers to at most
    `max_workers` nodes. Spot twins (`*_spot`: the same resources again) are left out: with them the
    autoscaler would pick either group, and a test could not say which one a stage should wake."""
    shipped = config["available_node_types"]
    head = dict(shipped[config["head_node_type"]].get("resources", {}))
    types: dict[str, dict] = {HEAD_TYPE: {"resources": head, "node_config": {}, "max_workers": 0}}
    for name, group in shipped.items():
        if name == config["head_node_type"] or name.endswith("_spot"):
            continue
        custom = {k: v for k, v in group.get("resources", {}).items() if k not in ("CPU", "GPU")}
        low = group.get("min_workers", 0)
        types[name] = {"resources": {"CPU": cpus, **custom, **NODE_MEMORY}, "node_config": {}, "min_workers": low,
                       "labels": {NODE_GROUP_LABEL: name},
                       "max_workers": max(low, min(max_workers, group.get("max_workers", max_workers)))}
    return types


def fake_cluster_config(config: dict, gcs_address: str, idle_timeout_s: float = 30, cpus: int = 1,
                        max_workers: int = 2) -> dict[str, Any]:
    """A whole autoscaler config for the fake provider (Ray 2.60's wheel lacks the example.yaml that
    ray.cluster_utils.AutoscalingCluster reads): the node types above, the shipped upscaling speed, and an
    idle timeout of `idle_timeout_s`. Nothing is synced or set up: every node is this machine."""
    types = fake_node_types(config, cpus, max_workers)
    return {
        "cluster_name": f"{config.get('cluster_name', 'smallsec')}-local",
        "max_workers": sum(t["max_workers"] for name, t in types.items() if name != HEAD_TYPE),
        "upscaling_speed": config.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle_timeout_s / 60,
        # Ray's fake provider (LocalNodeProvider), named as an external one: its own type name would make the
        # autoscaler load defaults from an example.yaml that Ray 2.60's wheel does not ship.
        "provider": {"type": "external", "module": FAKE_PROVIDER, "gcs_address": gcs_address,
                     "launch_multiple": True, "head_node_id": FAKE_HEAD_NODE_ID},
        "auth": {"ssh_user": os.environ.get("USER", "ray")},
        "available_node_types": types,
        "head_node_type": HEAD_TYPE,
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _fake_provider() -> type:
    from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

    return FakeMultiNodeProvider


class LocalNodeProvider(_fake_provider()):  # type: ignore[misc]
    """Ray's fake multi-node provider, with two changes for nodes that share one machine and one session folder:
    * each node keeps its jobs' runtime environments (working dirs) in a folder of its own: in a shared one, a
      node that joins mid-job unpacks the job's working dir again over the one the other nodes' workers run in
      (Ray overwrites it), and those workers lose their current directory;
    * a node type's `memory` is what the autoscaler plans with, not a resource the node starts with (Ray refuses
      `memory` as a custom resource; the raylet counts this machine's)."""

    def _create_node_with_resources_and_labels(self, node_config: dict, tags: dict, count: int, resources: dict,
                                               labels: dict) -> None:
        import ray._private.node
        from ray._private import ray_constants
        from ray._private.parameter import RayParams
        from ray.autoscaler import tags as tag

        custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")}
        with self.lock:
            kind = tags[tag.TAG_RAY_USER_NODE_TYPE]
            node_id = self._next_hex_node_id()
            params = RayParams(
                num_cpus=resources.get("CPU", 0), num_gpus=resources.get("GPU", 0),
                object_store_memory=resources.get("object_store_memory"), resources=custom, labels=labels,
                gcs_address=self._gcs_address, min_worker_port=0, max_worker_port=0, dashboard_port=None,
                dashboard_agent_listen_port=0, runtime_env_dir_name=f"runtime_resources_{node_id[-5:]}",
                env_vars={"RAY_OVERRIDE_NODE_ID_FOR_TESTING": node_id, "RAY_CLOUD_INSTANCE_ID": node_id,
                          "RAY_NODE_TYPE_NAME": kind, ray_constants.RESOURCES_ENVIRONMENT_VARIABLE: json.dumps(custom),
                          ray_constants.LABELS_ENVIRONMENT_VARIABLE: json.dumps(labels)})
            node = ray._private.node.Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
            self._nodes[node_id] = {"node": node, "tags": {
                tag.TAG_RAY_NODE_KIND: tag.NODE_KIND_WORKER, tag.TAG_RAY_USER_NODE_TYPE: kind,
                tag.TAG_RAY_NODE_NAME: node_id, tag.TAG_RAY_NODE_STATUS: tag.STATUS_UP_TO_DATE, **tags}}


def publish_node_types(gcs_address: str, types: dict[str, dict]) -> None:
    """Tells the cluster's GCS which node types its autoscaler may start (Ray's ClusterConfig, which Ray Data reads
    too); Ray 2.60's own autoscaler does not publish it, and smallsec's request check (placement.py) reads it."""
    from ray._raylet import GcsClient  # type: ignore[attr-defined]
    from ray.core.generated import autoscaler_pb2

    config = autoscaler_pb2.ClusterConfig()  # type: ignore[attr-defined]
    for name, t in types.items():
        group = config.node_group_configs.add()
        group.name = "head" if name == HEAD_TYPE else name
        group.min_count = t.get("min_workers", 0)
        group.max_count = t.get("max_workers", 0)
        for key, value in t["resources"].items():
            if key != "object_store_memory":
                group.resources[key] = int(value)
    GcsClient(address=gcs_address).report_cluster_config(config.SerializeToString())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalAutoscalingCluster:
    """The fake autoscaling cluster, started from a launcher config; a context manager.

    `address` is the dashboard's (for `smallsec submit --address`), `gcs_address` the one `ray.init` and
    `ray status` take. The autoscaler checks every second (AUTOSCALER_UPDATE_INTERVAL_S) and takes a worker
    away after `idle_timeout_s` idle. `env` is added to every node's environment (e.g. RAY_AUTH_MODE)."""

    config_path: str | Path
    idle_timeout_s: float = 30
    cpus: int = 1  # whole CPUs: Ray's published node types count resources in integers
    max_workers: int = 2
    env: dict[str, str] = field(default_factory=dict)
    folder: Path | None = None  # Ray's temp dir; a fresh short one by default (socket paths <= 107 bytes)
    address: str = ""
    gcs_address: str = ""
    _process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 300) -> LocalAutoscalingCluster:
        shipped = yaml.safe_load(Path(self.config_path).read_text(encoding="utf-8"))
        self.folder = Path(self.folder or tempfile.mkdtemp(prefix="ssas", dir="/tmp"))
        self.folder.mkdir(parents=True, exist_ok=True)
        port, dashboard = free_port(), free_port()
        self.gcs_address = f"{_node_ip()}:{port}"
        self.address = f"http://127.0.0.1:{dashboard}"
        config = self.folder / "autoscaler.yaml"
        config.write_text(yaml.safe_dump(fake_cluster_config(shipped, self.gcs_address, self.idle_timeout_s,
                                                             self.cpus, self.max_workers)))
        head = fake_node_types(shipped)[HEAD_TYPE]["resources"]
        custom = {k: v for k, v in head.items() if k not in ("CPU", "GPU")}
        venv_bin = str(Path(sys.executable).parent)  # a job's `python` is the one with smallsec_ray
        env = {**os.environ, **self.env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
               # autoscaler v2: it publishes the node types (ray._private.state.state.get_cluster_config())
               "RAY_enable_autoscaler_v2": "1", "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
               "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID,
               "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
               # a loaded 2-core machine needs more than Ray's 60 s to start a node's raylet
               "RAY_raylet_start_wait_time_s": "300"}
        env.pop("RAY_ADDRESS", None)
        command = [str(Path(venv_bin) / "ray"), "start", "--head", "--block", f"--port={port}",
                   f"--num-cpus={head.get('CPU', 0):g}", f"--num-gpus={head.get('GPU', 0):g}",
                   f"--resources={json.dumps(custom)}", "--dashboard-host=127.0.0.1",
                   f"--dashboard-port={dashboard}", "--include-dashboard=true", f"--temp-dir={self.folder / 'ray'}",
                   f"--autoscaling-config={config}",
                   # fixed default agent ports would collide with another Ray on this machine
                   f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                   f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
        log = open(self.folder / "ray-start.log", "w")  # noqa: SIM115 (the head keeps writing to it)
        self._process = subprocess.Popen(command, env=env, start_new_session=True, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while not self.nodes():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SmallsecError(f"the local autoscaling cluster did not start: {self.folder / 'ray-start.log'}: "
                                    f"{(self.folder / 'ray-start.log').read_text()[-2000:]}")
            time.sleep(1)
        publish_node_types(self.gcs_address, fake_node_types(shipped, self.cpus, self.max_workers))
        return self

    def nodes(self) -> list[dict]:
        """The alive nodes, each {"node_id", "type", "resources"}; [] while the head does not answer."""
        try:
            with urllib.request.urlopen(f"{self.address}/api/v0/nodes?limit=1000&detail=true", timeout=10) as reply:
                listed = json.loads(reply.read())["data"]["result"]["result"]
        except (OSError, ValueError, KeyError):
            return []
        return [{"node_id": n["node_id"], "type": n.get("labels", {}).get(NODE_GROUP_LABEL) or
                 ("head" if n.get("is_head_node") else "?"), "resources": n.get("resources_total", {})}
                for n in listed if n.get("state") == "ALIVE"]

    def node_types(self) -> dict[str, int]:
        """How many alive nodes of each type, e.g. {"head": 1, "teacher_gpu": 2}."""
        counts: dict[str, int] = {}
        for node in self.nodes():
            counts[node["type"]] = counts.get(node["type"], 0) + 1
        return counts

    def stop(self) -> None:
        """Stops the head and every node the autoscaler started (one process group)."""
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGTERM)
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # the raylets and workers left in the group
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(timeout=30)
        self._process = None

    def __enter__(self) -> LocalAutoscalingCluster:
        return self.start() if self._process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _node_ip() -> str:
    """This machine's address as Ray picks it for a node (the fake nodes join the head at this address)."""
    from ray._private.services import get_node_ip_address

    return str(get_node_ip_address())
