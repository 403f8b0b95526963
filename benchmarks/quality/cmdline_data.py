"""Builds the command-line experiment's shards from ../shared/data/cmdline (real public data).

Policies (the data README asks for each to be decided in code):
* malicious: Atomic Red Team (placeholders filled with their defaults) and GTFOBins; benign: tldr
  (placeholders filled), NL2Bash, PowerShell-Docs, and Atomic clean-up commands as hard negatives
  (training only: they are not "normal user" commands, so they stay out of the test rows);
* label leaks are scrubbed on both sides alike: `PathToAtomicsFolder`, technique ids (T1234.001) and the
  word "atomic" are replaced by neutral stand-ins;
* multi-line scripts become one row, lines joined with " ; " (as a `powershell -c` or `sh -c` command
  line carries them), so that line breaks are not a shortcut to "malicious";
* texts that appear with both labels (after lower-casing and collapsing whitespace) are dropped from both:
  without context they are the irreducible floor, not something a model can learn;
* groups that splits keep apart: Atomic technique (base id), GTFOBins binary, tldr page, PowerShell
  module, NL2Bash's first word; the test split holds out whole groups;
* a clean validation set large enough that 1% FPR rests on ~12 benign rows, drawn within each source.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa

from smallsec_ray.data.io import write_parquet_atomic
from smallsec_ray.data.splits import assign_splits

SOURCES = {  # file -> (group field, cap on rows kept; None keeps all)
    "atomic_red_team.jsonl": ("technique_id", None),
    "gtfobins.jsonl": ("binary", None),
    "atomic_red_team_cleanup.jsonl": ("technique_id", None),
    "powershell_docs.jsonl": ("module", None),
    "tldr.jsonl.gz": ("command", 6000),
    "nl2bash.jsonl": (None, 3000),
}
HARD_NEGATIVE_SOURCES = {"atomic-red-team-cleanup"}
_TECHNIQUE = re.compile(r"\bT\d{4}(?:\.\d{3})?\b")
_ATOMIC = re.compile(r"atomic", re.IGNORECASE)


def scrub(text: str) -> str:
    text = text.replace("PathToAtomicsFolder", r"C:\ProgramData\Tools")
    text = _TECHNIQUE.sub("job1", text)
    text = _ATOMIC.sub("test", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ; ".join(lines)


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def read_rows(data_dir: Path, scale: float = 1.0, seed: int = 0) -> tuple[list[dict], dict]:
    rows: list[dict] = []
    rng = random.Random(seed)
    for name, (group_field, cap) in SOURCES.items():
        path = data_dir / "cmdline" / name
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        if cap is not None:
            # Whole groups (pages, binaries), not random rows, so held-out groups stay whole.
            records = _sample_by_group(records, group_field, int(cap * scale), rng)
        elif scale < 1.0:
            records = _sample_by_group(records, group_field, int(len(records) * scale), rng)
        for i, r in enumerate(records):
            group_value = r.get(group_field) if group_field else r["text"].split()[0] if r["text"].split() else "-"
            if group_field == "technique_id":
                group_value = group_value.split(".")[0]
            rows.append({
                "id": f"{r['source']}:{i}",
                "text": scrub(r.get("text_filled") or r["text"]),
                "label": r["label"],
                "source": r["source"],
                "platform": r.get("platform") or "unknown",
                "group": f"{r['source']}:{group_value}",
            })
    return _drop_conflicts(rows)


def _sample_by_group(records: list[dict], group_field: str | None, n: int, rng: random.Random) -> list[dict]:
    key = (lambda r: r[group_field]) if group_field else (lambda r: r["text"].split()[0] if r["text"].split() else "-")
    groups = sorted({key(r) for r in records})
    rng.shuffle(groups)
    keep, count = set(), 0
    sizes = Counter(key(r) for r in records)
    for g in groups:
        if count + sizes[g] > n:
            continue  # a huge group (e.g. NL2Bash's `find`) would overshoot the cap: take smaller ones
        keep.add(g)
        count += sizes[g]
    return [r for r in records if key(r) in keep]


def _drop_conflicts(rows: list[dict]) -> tuple[list[dict], dict]:
    labels_of: dict[str, set] = {}
    for r in rows:
        labels_of.setdefault(_normal(r["text"]), set()).add(r["label"])
    conflicts = {t for t, labels in labels_of.items() if len(labels) > 1}
    seen: set = set()
    kept = []
    for r in rows:
        key = (_normal(r["text"]), r["label"])
        if key[0] in conflicts or key in seen or not r["text"]:
            continue
        seen.add(key)
        kept.append(r)
    return kept, {"rows_read": len(rows), "conflicting_texts_dropped": len(conflicts), "rows_kept": len(kept)}


def write_experiment_shards(data_dir: Path, out: Path, clean_share: float = 0.1, validation_share: float = 0.15,
                            test_share: float = 0.25, scale: float = 1.0, seed: int = 0,
                            split_seed: int | None = None) -> dict:
    """Writes the experiment's parts under `out` and returns counts (the rows are sampled with `seed`, the parts
    drawn with `split_seed`, by default the same):

    * test/: whole held-out groups (techniques, binaries, pages, modules), hard negatives excluded;
    * labelled/: the analysts' clean rows, with their split given in `fixed_split`: `validation` (a share
      of the evaluable training groups drawn within each source, so that thresholds rest on rows of every
      source: ~1,500 rows, ~1,200 benign) and `train` (`clean_share` of the other training groups: what
      the teacher learns from);
    * noisy/: the other training groups, labels still true (the spec's data.noise injects noise), with
      `rule_label` (what signature_rules.py says) and `true_label` for the audit.
    """
    from signature_rules import rule_label

    rows, stats = read_rows(data_dir, scale, seed)
    seed = seed if split_seed is None else split_seed  # the rows are drawn with `seed`, the splits with this one
    evaluable = [r for r in rows if r["source"] not in HARD_NEGATIVE_SOURCES]
    test_of = assign_splits([r["group"] for r in evaluable], [r["label"] for r in evaluable], 0.0, test_share, seed)
    test_groups = {g for g, s in test_of.items() if s == "test"}
    test = [r for r in evaluable if r["group"] in test_groups]
    train = [r for r in rows if r["group"] not in test_groups]
    candidates = [r for r in train if r["source"] not in HARD_NEGATIVE_SOURCES]
    val_groups: set[str] = set()
    for source in sorted({r["source"] for r in candidates}):  # within each source: thresholds rest on all of them
        mine = [r for r in candidates if r["source"] == source]
        val_of = assign_splits([r["group"] for r in mine], [r["label"] for r in mine], validation_share, 0.0, seed + 2)
        val_groups |= {g for g, s in val_of.items() if s == "validation"}
    rest = [r for r in train if r["group"] not in val_groups]
    clean_of = assign_splits([r["group"] for r in rest], [r["label"] for r in rest], 0.0, clean_share, seed + 1)
    teacher_rows = [r for r in rest if clean_of[r["group"]] == "test"]
    labelled = ([{**r, "fixed_split": "train"} for r in teacher_rows]
                + [{**r, "fixed_split": "validation"} for r in train if r["group"] in val_groups])
    noisy = [{**r, "rule_label": rule_label(r["text"]), "true_label": r["label"]}
             for r in rest if clean_of[r["group"]] != "test"]
    rng = random.Random(seed)
    rng.shuffle(noisy)
    parts = {"test": [test], "labelled": [labelled], "noisy": [noisy[i::4] for i in range(4)]}
    for part, shards in parts.items():
        for i, shard in enumerate(shards):
            write_parquet_atomic(pa.Table.from_pylist(shard), str(out / part / f"{part}-{i}.parquet"))
    stats.update({part: dict(Counter(r["label"] for shard in shards for r in shard)) for part, shards in parts.items()})
    stats["labelled_by_split"] = {split: dict(Counter(r["label"] for r in labelled if r["fixed_split"] == split))
                                  for split in ("train", "validation")}
    malicious = [r for r in noisy if r["label"] == "malicious"]
    benign = [r for r in noisy if r["label"] == "benign"]
    stats["rule_labeller"] = {
        "malicious_missed": round(sum(r["rule_label"] == "benign" for r in malicious) / max(len(malicious), 1), 4),
        "benign_flagged": round(sum(r["rule_label"] == "malicious" for r in benign) / max(len(benign), 1), 4)}
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    return stats
