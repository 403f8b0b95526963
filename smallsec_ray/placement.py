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

import math
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
            name = (node.get("Labels") or {}).get(NODE_GROUP_LABEL) or ("head" if _is_head(node) else "node")
            name = "this machine" if name == "head" and _started_here() else name
            resources = {k: float(v) for k, v in node.get("Resources", {}).items()
                         if k not in _IMPLICIT and not k.startswith("node:")}
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
        return {g.name: (g.max_count, {k: float(v) for k, v in g.resources.items()}) for g in config.node_group_configs}
    path = BOOTSTRAP_CONFIG.expanduser()
    if not path.is_file():
        return None
    launcher = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    head = launcher.get("head_node_type")
    return {name: (0 if name == head else int(group.get("max_workers", launcher.get("max_workers", 0))),
                   {k: float(v) for k, v in group.get("resources", {}).items()})
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
