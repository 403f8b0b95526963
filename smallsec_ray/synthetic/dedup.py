"""Exact and near duplicates among generated candidates, and candidates too close to their seeds.

Near duplicates are found with MinHash signatures over word 3-gram shingles and an LSH index (datasketch):
each candidate is compared with the ones already kept in a few hash lookups instead of with all of them.
Templated HTML pages share their markup by design, so pages are compared on what the model wrote: their
visible text (`key` picks it), not on the markup.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from datasketch import MinHash, MinHashLSH

NUM_PERM = 128


def shingles(text: str, n: int = 3) -> set[str]:
    words = text.lower().split()
    return {" ".join(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))}


def signature(text: str) -> MinHash:
    m = MinHash(num_perm=NUM_PERM, seed=1)
    m.update_batch([s.encode() for s in shingles(text)])
    return m


@dataclass
class Dedup:
    kept: list[int] = field(default_factory=list)  # indices of the candidates kept, in order
    dropped: dict[int, str] = field(default_factory=dict)  # index -> exact_duplicate, near_duplicate, too_close_to_seed


def drop_duplicates(candidates: Sequence[str], seeds: Sequence[str] = (), near: float = 0.8,
                    seed_near: float = 0.7, key: Callable[[str], str] = lambda t: t) -> Dedup:
    """Keeps the first of each group of exact or near duplicates (estimated Jaccard similarity of their
    shingles >= `near`) and drops candidates whose similarity to any seed is >= `seed_near` (a copy of its
    seed teaches nothing new)."""
    seed_index = MinHashLSH(threshold=seed_near, num_perm=NUM_PERM)
    for i, text in enumerate(seeds):
        seed_index.insert(f"s{i}", signature(key(text)))
    index = MinHashLSH(threshold=near, num_perm=NUM_PERM)
    exact: set[str] = set()
    out = Dedup()
    for i, text in enumerate(candidates):
        content = " ".join(key(text).split()).lower()
        digest = hashlib.sha256(content.encode()).hexdigest()
        sig = signature(content)
        if digest in exact:
            out.dropped[i] = "exact_duplicate"
        elif seeds and seed_index.query(sig):
            out.dropped[i] = "too_close_to_seed"
        elif index.query(sig):
            out.dropped[i] = "near_duplicate"
        else:
            exact.add(digest)
            index.insert(f"c{i}", sig)
            out.kept.append(i)
    return out
