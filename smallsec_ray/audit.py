"""The label audit of scored shards where they lie: each shard is audited in its own Ray task
(evaluation.label_audit: its top k confident disagreements and its counts), and the driver merges the
k-sized lists (evaluation.merge_audits), so no row but the listed ones reaches it.

A module of its own, light to import: a task's worker imports the module its function lives in, and the
workloads' shared module pulls in torch and Ray Train (seconds per worker).
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import ray

from smallsec_ray import storage
from smallsec_ray.data import schema
from smallsec_ray.data.noise import NoisePlan, apply_noise
from smallsec_ray.evaluation import Audit, label_audit, merge_audits


def audit_shards(paths: list[str], classes: list[str], top_k: int, noise: NoisePlan | None = None) -> Audit:
    """The label audit of scored shards (with the teacher's `probs`), data.noise applied to their labels."""
    audits = ray.get([_audit_shard.remote(p, classes, top_k, noise) for p in paths])
    return merge_audits(audits or [label_audit([], [], [], np.zeros((0, len(classes))), classes, top_k)], top_k)


@ray.remote(num_cpus=0.5)
def _audit_shard(path: str, classes: list[str], top_k: int, noise: NoisePlan | None) -> Audit:
    names = storage.read_schema(path).names
    wanted = [schema.ID, schema.TEXT, schema.LABEL, schema.PROBS, schema.TRUE_LABEL, *(noise.columns if noise else ())]
    table = storage.read_table(path, columns=[c for c in dict.fromkeys(wanted) if c in names])
    if noise is not None:
        table = apply_noise(table, noise)
    probs = pc.list_flatten(table[schema.PROBS]).to_numpy().reshape(-1, len(classes))
    truth = table[schema.TRUE_LABEL].to_pylist() if schema.TRUE_LABEL in table.column_names else None
    return label_audit(table[schema.ID].to_pylist(), table[schema.TEXT].to_pylist(),
                       table[schema.LABEL].to_pylist(), probs, classes, top_k, truth)
