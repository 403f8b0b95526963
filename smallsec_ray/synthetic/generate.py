"""Candidate artifacts from the generative teacher: templated pages whose content the model writes.

For each family (e.g. a storefront selling tea) `per_family` candidates are planned, each on one of the
allowed layouts in turn, with its own seed. The model writes the slots in two passes: names first (the
shop, four products), then the text that mentions them (slogan, descriptions, sign-in wording, form
labels). Every prompt samples with its own seed, so the same plan gives the same pages again; prices and
the form's target come from a seeded random generator, not from the model.
"""

from __future__ import annotations

import hashlib
import re
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smallsec_ray.synthetic.templates import (
    FIRST_PASS,
    SECOND_PASS,
    SLOT_CHARS,
    SLOT_WORDS,
    Layout,
    clean_slot,
    fill,
    slot_problem,
)

DEFAULT_SLOT_CHARS = 300


@dataclass(frozen=True)
class Family:
    name: str  # the family's id in the shards' `family` column, e.g. "tea"
    description: str  # what the shop sells, as the prompts say it, e.g. "loose-leaf tea"
    label: str  # the class of its pages, e.g. "phishing"


@dataclass
class Candidate:
    family: str
    template: str  # kind/layout
    label: str
    seed: int
    text: str  # the filled page
    slots: dict[str, str] = field(default_factory=dict)  # what the model wrote, slot by slot
    unfilled: dict[str, str] = field(default_factory=dict)  # slot -> why no answer could fill it


@dataclass
class Generated:
    candidates: list[Candidate]
    seconds: float
    prompts: int  # prompts sent, retries included


def plan_seed(seed: int, family: str, index: int) -> int:
    """A candidate's seed: stable across runs and independent of the other families."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{family}:{index}".encode()).digest()[:4], "big")


def code_values(slug: str, seed: int) -> dict[str, str]:
    """The slots that are not the model's: prices and the form's target."""
    rng = np.random.default_rng(seed)
    prices = {f"price_{i}": f"${rng.uniform(9, 190):.2f}" for i in range(1, 5)}
    return {**prices, "action": f"/{slug}/account/{rng.choice(['verify', 'login', 'secure', 'confirm'])}.php"}


def generate_pages(teacher: Any, families: list[Family], layouts: list[Layout], per_family: int, seed: int = 0,
                   temperature: float = 0.8, max_tokens: int = 48, retries: int = 2) -> Generated:
    """`per_family` candidate pages of each family, the layouts taken in turn (`teacher.generate` writes the
    slots; see the module docstring). An answer that cannot fill its slot (templates.slot_problem) is asked
    again with another seed, up to `retries` times; then the slot stays unfilled and the page keeps its
    marker."""
    started = time.perf_counter()
    plans = [(family, layouts[i % len(layouts)], plan_seed(seed, family.name, i))
             for family in families for i in range(per_family)]
    values: list[dict[str, str]] = [{} for _ in plans]
    unfilled: list[dict[str, str]] = [{} for _ in plans]
    prompts = 0
    for instructions in (FIRST_PASS, SECOND_PASS):
        asks = [(k, slot, text.format(family=family.description, **values[k]))
                for k, (family, layout, _) in enumerate(plans)
                for slot, text in instructions.items() if slot in layout.slots() and _has_names(text, values[k])]
        for attempt in range(retries + 1):
            answers = _ask(teacher, asks, plans, temperature, max_tokens, attempt)
            prompts += len(asks)
            again = []
            for (k, slot, prompt), answer in zip(asks, answers, strict=True):
                value = clean_slot(answer, SLOT_CHARS.get(slot, DEFAULT_SLOT_CHARS), name=slot in SLOT_WORDS)
                problem = slot_problem(slot, value, prompt)
                if problem is None:
                    values[k][slot] = value
                    unfilled[k].pop(slot, None)
                else:
                    unfilled[k][slot] = problem
                    again.append((k, slot, prompt))
            asks = again
            if not asks:
                break
    candidates = []
    for (family, layout, candidate_seed), written, missing in zip(plans, values, unfilled, strict=True):
        slug = re.sub(r"[^a-z0-9]+", "-", written.get("shop_name", family.name).lower()).strip("-") or family.name
        page = fill(layout.html, {**written, **code_values(slug, candidate_seed)})
        candidates.append(Candidate(family.name, layout.template, family.label, candidate_seed, page, written,
                                    missing))
    return Generated(candidates, time.perf_counter() - started, prompts)


def _has_names(instruction: str, written: dict[str, str]) -> bool:
    """A second-pass instruction is asked only when the names it mentions were written (else its page
    keeps a marker and is rejected anyway)."""
    needed = set(re.findall(r"\{(\w+)\}", instruction)) - {"family"}
    return all(written.get(name) for name in needed)


def _ask(teacher: Any, asks: list[tuple[int, str, str]], plans: list, temperature: float,
         max_tokens: int, attempt: int) -> list[str]:
    """All prompts of a pass in one call (vLLM batches them); each samples with its candidate's seed, the
    slot's name and the attempt, so a page does not depend on the other pages of the run."""
    if not asks:
        return []
    seeds = [(plans[k][2] + zlib.crc32(f"{slot}:{attempt}".encode())) % 2**31 for k, slot, _ in asks]
    return teacher.generate([prompt for _, _, prompt in asks], max_tokens, temperature, seed=seeds)
