"""Synthetic shards on Ray: generative-teacher replicas write candidate pages, then the candidates are
checked and deduplicated into accepted rows and rejected rows (each with its reason).

The unit of work is a family: a Ray Data dataset of families flows into an actor pool whose actors
(`FamilyWriter`) each hold one generative teacher and write one candidate shard per family,
`candidates/FAMILY.parquet`, under a temporary name renamed into place once complete. A rerun writes only
the families whose shard is missing. Filtering runs per family as Ray tasks (near duplicates are looked
for within a family: pages of different families differ by what they sell):
`accepted/FAMILY.parquet` holds the rows a student may learn, `rejected/FAMILY.parquet` the others with
`reason`. Candidates = accepted + rejected, for every family.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from smallsec_ray import console, storage
from smallsec_ray.data.io import write_parquet_atomic
from smallsec_ray.data.schema import ID, LABEL, REASON, TEXT
from smallsec_ray.errors import StageError
from smallsec_ray.labeling import actor_pool, growing_pools, min_replicas, replica_bundle, teacher_args_for
from smallsec_ray.placement import check_request
from smallsec_ray.synthetic.checks import check, visible_text
from smallsec_ray.synthetic.dedup import drop_duplicates
from smallsec_ray.synthetic.generate import Family, generate_pages
from smallsec_ray.synthetic.templates import layouts as named_layouts
from smallsec_ray.teachers.backends import make_teacher, teacher_identity

FAMILY, TEMPLATE, GEN_SEED, SLOTS, UNFILLED = "family", "template", "gen_seed", "slots", "unfilled"
CANDIDATES, ACCEPTED, REJECTED = "candidates", "accepted", "rejected"
META_GENERATION = b"smallsec.generation"  # JSON: the generator's identity and sampling parameters


@dataclass
class FamilyPlan:
    family: Family
    layouts: list[str]  # kind/layout names (templates.layouts)
    part: str = ""  # "" for a family's pages; "strict" for its pages in held-out layouts

    @property
    def key(self) -> str:
        """The shard name: the family, with the part after a dot."""
        return f"{self.family.name}.{self.part}" if self.part else self.family.name


@dataclass
class FamilyCounts:
    """What happened to one family's candidates."""

    family: str  # the plan's key: the family, or family.strict
    candidates: int
    accepted: int
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> rows (duplicates included)
    prompts: int = 0
    generation_seconds: float = 0.0

    @property
    def pages_per_s(self) -> float:
        return self.candidates / self.generation_seconds if self.generation_seconds else 0.0


def generate_families(plans: list[FamilyPlan], out_dir: str | Path, teacher_cfg: dict, per_family: int,
                      params: dict[str, Any], replicas: int | tuple[int, int] = 1, cpus_per_replica: float = 1.0,
                      gpus_per_replica: float = 0.0, resources: dict[str, float] | None = None) -> dict[str, dict]:
    """Writes candidates/FAMILY.parquet for every family whose shard is missing, with `replicas` generative
    teachers; returns each family's generation figures (prompts, seconds), read back for done families.
    `params`: seed, temperature, max_tokens, retries (generate.generate_pages)."""
    device = "cuda" if gpus_per_replica > 0 else "cpu"
    teacher_args = teacher_args_for({**teacher_cfg, "device": device}, teacher_cfg["classes"])
    teacher_identity(**teacher_args)  # config errors surface here, not inside the actors
    out = storage.join(out_dir, CANDIDATES)
    pending = [p for p in plans if not storage.is_file(storage.join(out, f"{p.key}.parquet"))]
    if pending:
        check_request("labeling", "generator replica", replica_bundle(cpus_per_replica, gpus_per_replica, resources),
                      min(min_replicas(replicas), len(pending)))
        with growing_pools():
            items = ray.data.from_items([{"plan": json.dumps(asdict(p))} for p in pending],
                                        override_num_blocks=len(pending))
        written = items.map_batches(
            FamilyWriter, batch_size=1, compute=actor_pool(replicas, len(pending)), num_cpus=cpus_per_replica,
            num_gpus=gpus_per_replica or None, resources=resources or None,
            fn_constructor_kwargs={"teacher_args": teacher_args, "out_dir": out, "per_family": per_family,
                                   "params": params})
        progress = console.current()
        with progress.track("generate", per_family * len(pending), len(pending)) if progress else nullcontext() as t:
            for _ in written.iter_rows():  # one row per family written
                if t:
                    t.add(per_family)
                    t.shard_done()
    return {p.key: json.loads(storage.read_schema(storage.join(out, f"{p.key}.parquet")).metadata[META_GENERATION])
            for p in plans}


class FamilyWriter:
    """A Ray Data actor holding one generative teacher; each call writes whole families' candidate shards."""

    def __init__(self, teacher_args: dict, out_dir: str, per_family: int, params: dict[str, Any]) -> None:
        self.teacher = make_teacher(**teacher_args)
        self.identity = self.teacher.identity()
        self.out_dir = out_dir
        self.per_family = per_family
        self.params = params

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        names = []
        for raw in batch["plan"]:
            fields = json.loads(str(raw))
            plan = FamilyPlan(Family(**fields["family"]), fields["layouts"], fields["part"])
            family, key = plan.family, plan.key
            # Another part of a family samples its own pages: its seed differs by the part's name.
            params = {**self.params, "seed": self.params.get("seed", 0) + zlib.crc32(plan.part.encode())}
            generated = generate_pages(self.teacher, [family], named_layouts(plan.layouts), self.per_family,
                                       **params)
            rows = generated.candidates
            table = pa.table({
                ID: [f"syn-{key}-{i:05d}" for i in range(len(rows))],
                TEXT: [c.text for c in rows], LABEL: [c.label for c in rows], FAMILY: [c.family for c in rows],
                TEMPLATE: [c.template for c in rows], GEN_SEED: pa.array([c.seed for c in rows], pa.int64()),
                SLOTS: [json.dumps(c.slots) for c in rows], UNFILLED: [json.dumps(c.unfilled) for c in rows]})
            meta = {"generator": self.identity, **params, "per_family": self.per_family,
                    "prompts": generated.prompts, "seconds": generated.seconds}
            write_parquet_atomic(table, storage.join(self.out_dir, f"{key}.parquet"),
                                 {META_GENERATION: json.dumps(meta).encode()})
            names.append(key)
        return {"family": names}


def filter_families(plans: list[FamilyPlan], out_dir: str | Path, artifact: str, seeds: list[str],
                    min_text_chars: int, near: float, seed_near: float) -> list[FamilyCounts]:
    """Checks and deduplicates every family's candidates (one Ray task each) into accepted/ and rejected/."""
    refs = [_filter_family.remote(str(out_dir), p.key, artifact, seeds, min_text_chars, near, seed_near) for p in plans]
    counts = [FamilyCounts(**c) for c in ray.get(refs)]
    for c in counts:
        if c.accepted + sum(c.rejected.values()) != c.candidates:
            raise StageError(f"synthetic: family {c.family}: {c.candidates} candidates but {c.accepted} accepted "
                             f"and {sum(c.rejected.values())} rejected; rerun the stage (the folder is replaced)")
    return counts


@ray.remote(num_cpus=0.5)
def _filter_family(out_dir: str, key: str, artifact: str, seeds: list[str], min_text_chars: int,
                   near: float, seed_near: float) -> dict:
    table = storage.read_table(storage.join(out_dir, CANDIDATES, f"{key}.parquet"))
    meta = json.loads(table.schema.metadata[META_GENERATION])
    texts = table.column(TEXT).to_pylist()
    labels = table.column(LABEL).to_pylist()
    unfilled = [json.loads(u) for u in table.column(UNFILLED).to_pylist()]
    reasons: list[str | None] = [
        "unfilled_slot" if missing else check(artifact, text, phishing=label != "benign", min_text_chars=min_text_chars)
        for text, label, missing in zip(texts, labels, unfilled, strict=True)]
    passed = [i for i, r in enumerate(reasons) if r is None]
    compared = visible_text if artifact == "html" else (lambda t: t)  # what the model wrote, not the template
    dedup = drop_duplicates([texts[i] for i in passed], seeds, near, seed_near, key=compared)
    for j, reason in dedup.dropped.items():
        reasons[passed[j]] = reason
    keep = np.array([r is None for r in reasons])
    accepted = table.filter(pa.array(keep))
    rejected = table.filter(pa.array(~keep)).append_column(REASON, pa.array([r for r in reasons if r is not None],
                                                                            pa.string()))
    metadata = {META_GENERATION: json.dumps(meta).encode()}
    write_parquet_atomic(rejected, storage.join(out_dir, REJECTED, f"{key}.parquet"), metadata)
    write_parquet_atomic(accepted, storage.join(out_dir, ACCEPTED, f"{key}.parquet"), metadata)
    return asdict(FamilyCounts(key, table.num_rows, accepted.num_rows,
                               dict(Counter(r for r in reasons if r is not None)), meta["prompts"], meta["seconds"]))


def generation_figures(counts: list[FamilyCounts]) -> list[dict]:
    """The report's per-family table: candidates, accepted, rejected by reason, duplicates, pages/s."""
    return [{"family": c.family, "candidates": c.candidates, "accepted": c.accepted, **c.rejected,
             "pages_per_s": round(c.pages_per_s, 2)} for c in counts]
