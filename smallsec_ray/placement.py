"""Can a stage's request ever be met? Checked before the stage asks Ray, so that a typo in a resource name or GPUs
asked of a CPU cluster fail in seconds with one line, instead of a job that waits forever while the head bills.

What the cluster offers: its alive nodes, plus the node types its autoscaler may add. Those come from the cluster
config the autoscaler side published to Ray's GCS (ray._private.state.state.get_cluster_config(); the local
autoscaling cluster publishes it), else from the launcher's config on the head (~/ray_bootstrap_config.yaml,
where `ray up` puts it and where a submitted job's driver runs). An embedded Ray started by this process offers
its own node only. On a joined cluster whose node types cannot be seen, a request that fits no alive node is
not an error: the autoscaler may know a node type that fits.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from smallsec_ray.errors import StageError

BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")
NODE_GROUP_LABEL = "ray.io/node-group"
# Resources Ray gives every node (memory, the node's own marker): not something a stage asks for by name.
_IMPLICIT = ("memory", "object_store_memory")


@dataclass(frozen=True)
class Offer:
    """One kind of node: its name (node type, or "this machine"), its resources and how many there can be at most
    (-1: no limit)."""

    name: str
    resources: dict[str, float]
    count: int


def fits_in(bundle: dict[str, float], resources: dict[str, float]) -> int:
    """How many `bundle`s one node with `resources` holds at once (a large number for an empty bundle)."""
    asked = {k: v for k, v in bundle.items() if v > 0}
    if not asked:
        return 1 << 20
    return min(math.floor(resources.get(k, 0.0) / v + 1e-9) for k, v in asked.items())


def cluster_offer() -> tuple[list[Offer], bool]:
    """What the running Ray offers: (offers, complete). Alive nodes are grouped by node type; the autoscaler's node
    types add what they may still start. `complete` is False when the cluster may add nodes of types not seen."""
    import ray

    alive: dict[str, list[dict[str, float]]] = {}
    for node in ray.nodes():
        if node.get("Alive"):
            name = _node_type(node)
            resources = {k: float(v) for k, v in node.get("Resources", {}).items() if _asked_for(k)}
            alive.setdefault(name, []).append(resources)
    types = autoscaler_node_types()
    offers = []
    for name, (limit, shape) in (types or {}).items():
        started = len(alive.pop(name, []))
        offers.append(Offer(name, shape, -1 if limit < 0 else max(limit, started)))
    for name, nodes in alive.items():
        for resources in {tuple(sorted(r.items())): r for r in nodes}.values():
            offers.append(Offer(name, resources, sum(r == resources for r in nodes)))
    return offers, types is not None or _started_here()


def autoscaler_node_types() -> dict[str, tuple[int, dict[str, float]]] | None:
    """The node types the cluster's autoscaler may start, {name: (max nodes or -1, resources)}; None if unknown."""
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    if config is not None and config.node_group_configs:
        return {g.name: (g.max_count, {k: float(v) for k, v in g.resources.items() if _asked_for(k)})
                for g in config.node_group_configs}
    path = BOOTSTRAP_CONFIG.expanduser()
    if not path.is_file():
        return None
    launcher = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    head = launcher.get("head_node_type")
    return {name: (0 if name == head else int(group.get("max_workers", launcher.get("max_workers", 0))),
                   {k: float(v) for k, v in group.get("resources", {}).items() if _asked_for(k)})
            for name, group in launcher.get("available_node_types", {}).items()}


def check_request(key: str, what: str, bundle: dict[str, float], count: int) -> None:
    """Raises a one-line StageError if `count` of `bundle` (one replica or worker each) can never run at once on
    this Ray. `key` is the spec key that asked, `what` the thing each bundle is ("teacher replica", "worker")."""
    offers, complete = cluster_offer()
    if not complete:
        return
    asked = {k: v for k, v in bundle.items() if v > 0}
    room = sum(fits_in(asked, o.resources) * (o.count if o.count >= 0 else 1 << 20) for o in offers)
    if room >= count:
        return
    here = autoscaler_node_types() is None  # complete without node types: the embedded Ray of this process
    missing = sorted(k for k in asked if not any(o.resources.get(k, 0) > 0 for o in offers))
    fitting = [o for o in offers if fits_in(asked, o.resources) > 0]
    if missing:
        why = (f"this machine offers no {', '.join(missing)}" if here else
               f"no node type of this cluster offers {', '.join(missing)}") + f" ({_offered(offers)})"
    elif not fitting:
        why = ("this machine has less" if here else "no node type of this cluster has that much in one node") + \
            f" ({_offered(offers)})"
    else:
        plural, holder = "s" if count > 1 else "", "this machine" if here else "this cluster"
        why = (f"{count} {what}{plural} must run at once and {holder} holds at most {room} "
               f"({'; '.join(f'{o.name}: {_nodes(o.count)} x {fits_in(asked, o.resources)}' for o in fitting)})")
    fix = "or submit the job to a cluster that offers it" if here else "or give the cluster a node type that offers it"
    raise StageError(f"{key}: each {what} asks for {_shape(asked)}; {why}; ask {key} for what the nodes offer, {fix}")


def _offered(offers: list[Offer]) -> str:
    shown = [o for o in offers if o.count != 0 and any(o.resources.values())]
    return "; ".join(f"{o.name}: {_shape(o.resources, ' ')}" for o in shown) or "no node offers any resource"


def _shape(resources: dict[str, float], sep: str = ": ") -> str:
    text = ", ".join(f"{k}{sep}{v:g}" for k, v in sorted(resources.items(), key=_order))
    return text if sep == " " else "{" + text + "}"


def _order(item: tuple[str, float]) -> tuple[int, str]:
    return ({"CPU": 0, "GPU": 1}.get(item[0], 2), item[0])


def _nodes(count: int) -> str:
    return "any number of nodes" if count < 0 else f"{count} node{'s' if count != 1 else ''}"


def _is_head(node: dict) -> bool:
    return any(k == "node:__internal_head__" for k in node.get("Resources", {}))


def _started_here() -> bool:
    """Whether this process started the Ray it uses (an embedded Ray: no autoscaler adds nodes to it)."""
    import ray._private.worker

    node = ray._private.worker._global_node
    return node is not None and bool(getattr(node, "head", False))


class StageWatch:
    """Watches the cluster while a stage runs, once a second, from a thread of the driver:
    * which node types the stage's work held resources on (a stage runs alone, so what is in use is its work):
      `nodes`, {node type: most nodes of it in use at once}, for the stage's manifest;
    * the autoscaler's pending launches, as a progress line ("label: waiting for 2 teacher_gpu nodes from the
      autoscaler, 45 s");
    * a stall: work waiting for resources (or nodes coming) with nothing running on the cluster, for longer than
      `timeout_s` (on a cluster shared with other jobs, their work counts as running: no stall is seen). Then
      the main thread is interrupted and `expired` holds the reason (the stage runner turns it into the stage's
      error).
    A no-op when Ray is not up."""

    def __init__(self, stage: str, timeout_s: float | None, every_s: float = 1.0) -> None:
        self.stage, self.timeout_s, self.every_s = stage, timeout_s, every_s
        self.nodes: dict[str, int] = {}
        self.expired: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._types: dict[str, str] = {}  # node id -> node type

    def __enter__(self) -> StageWatch:
        import ray

        if ray.is_initialized():
            self._thread = threading.Thread(target=self._watch, name=f"smallsec-watch-{self.stage}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _watch(self) -> None:
        coming_since: float | None = None  # nodes on their way, since
        stalled_since: float | None = None  # work waiting and none running, since
        shown = 0.0
        while not self._stop.wait(self.every_s):
            try:
                used = self._sample()
                coming, demand = autoscaler_pending()
            except Exception:  # Ray going down with the job: nothing more to watch
                return
            now = time.monotonic()
            coming_since = (coming_since or now) if coming else None
            stalled_since = (stalled_since or now) if (coming or demand) and not used else None
            if coming_since is not None and now - shown >= 15:
                shown = now
                from smallsec_ray import console

                nodes = ", ".join(f"{n} {t} node{'s' if n > 1 else ''}" for t, n in sorted(coming.items()))
                console.say(f"{self.stage}: waiting for {nodes} from the autoscaler, {now - coming_since:.0f} s")
            if self.timeout_s is not None and stalled_since is not None and now - stalled_since > self.timeout_s:
                what = (f"the autoscaler's {', '.join(sorted(coming))} node(s)" if coming else
                        "resources no node has free, and no node is coming")
                self.expired = (f"{self.stage}: waited {now - stalled_since:.0f} s, with nothing running on the "
                                f"cluster, for "
                                f"{what} (resources.scale_up_timeout: {self.timeout_s:g} s); `ray status` shows "
                                "what the cluster is short of")
                # SIGINT to the main thread: wakes it from a blocking call too (a KeyboardInterrupt there)
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
                return

    def _sample(self) -> bool:
        """Records the node types with resources in use now; whether any are."""
        import ray
        import ray._private.state

        total = ray._private.state.total_resources_per_node()
        free = ray._private.state.available_resources_per_node()
        if set(total) - set(self._types):
            self._types = {n["NodeID"]: _node_type(n) for n in ray.nodes()}
        now: dict[str, int] = {}
        for node_id, resources in total.items():
            left = free.get(node_id, {})
            if any(v - left.get(k, 0) > 1e-9 for k, v in resources.items() if _asked_for(k)):
                kind = self._types.get(node_id, "node")
                now[kind] = now.get(kind, 0) + 1
        for kind, count in now.items():
            self.nodes[kind] = max(count, self.nodes.get(kind, 0))
        return bool(now)


def autoscaler_pending() -> tuple[dict[str, int], bool]:
    """({node type: nodes being launched}, whether tasks or actors wait for resources), from the autoscaler's
    status (v2's API, or v1's report in the GCS); ({}, False) without an autoscaler."""
    import ray
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    if is_autoscaler_v2():
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        coming: dict[str, int] = {}
        for launch in status.pending_launches:
            coming[launch.ray_node_type_name] = coming.get(launch.ray_node_type_name, 0) + launch.count
        for node in status.pending_nodes:
            coming[node.ray_node_type_name] = coming.get(node.ray_node_type_name, 0) + 1
        demand = status.resource_demands
        return coming, bool(demand.ray_task_actor_demand or demand.placement_group_demand)
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    if not raw:
        return {}, False
    status = json.loads(raw)
    report = status.get("autoscaler_report") or {}
    coming = dict(report.get("pending_launches") or {})
    for _ip, kind, _state in report.get("pending_nodes") or []:
        coming[kind] = coming.get(kind, 0) + 1
    load = status.get("load_metrics_report") or {}
    return coming, bool(load.get("resource_demand") or load.get("pending_placement_groups"))


def _node_type(node: dict) -> str:
    name = (node.get("Labels") or {}).get(NODE_GROUP_LABEL) or ("head" if _is_head(node) else "node")
    return "this machine" if name == "head" and _started_here() else name


def _asked_for(resource: str) -> bool:
    return resource not in _IMPLICIT and not resource.startswith("node:")
