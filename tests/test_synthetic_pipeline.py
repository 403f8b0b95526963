"""Synthetic shards on Ray: families generated once by teacher replicas, then checked and deduplicated
with every candidate accounted for (accepted, or rejected with its reason)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallsec_ray.data.io import write_parquet_atomic
from smallsec_ray.synthetic.generate import Family
from smallsec_ray.synthetic.pipeline import (
    ACCEPTED,
    CANDIDATES,
    META_GENERATION,
    REJECTED,
    FamilyPlan,
    filter_families,
    generate_families,
)
from smallsec_ray.synthetic.templates import fill, layouts

PLANS = [FamilyPlan(Family("tea", "loose-leaf tea", "phishing"), ["storefront/grid"]),
         FamilyPlan(Family("bags", "leather handbags", "phishing"), ["checkout/steps", "social_login/split"])]


@pytest.mark.timeout(600)
def test_families_are_generated_once_and_every_candidate_is_accounted_for(ray_local, tiny_causal_lm, tmp_path):
    teacher = {"kind": "generative", "backend": "hf", "model": str(tiny_causal_lm), "artifact": "html",
               "classes": ["benign", "malicious"]}
    params = {"seed": 0, "temperature": 0.8, "max_tokens": 6, "retries": 1}
    figures = generate_families(PLANS, tmp_path, teacher, per_family=3, params=params)
    assert set(figures) == {"tea", "bags"} and figures["tea"]["prompts"] > 0
    tea = tmp_path / CANDIDATES / "tea.parquet"
    table = pq.read_table(tea)
    assert table.num_rows == 3 and set(table.column("template").to_pylist()) == {"storefront/grid"}
    assert json.loads(table.schema.metadata[META_GENERATION])["generator"]["kind"] == "generative"
    written = tea.stat().st_mtime_ns
    generate_families(PLANS, tmp_path, teacher, per_family=3, params=params)  # done families are kept
    assert tea.stat().st_mtime_ns == written

    counts = filter_families(PLANS, tmp_path, "html", seeds=[], min_text_chars=200, near=0.8, seed_near=0.7)
    assert [c.family for c in counts] == ["tea", "bags"]
    for c in counts:
        accepted = pq.read_table(tmp_path / ACCEPTED / f"{c.family}.parquet")
        rejected = pq.read_table(tmp_path / REJECTED / f"{c.family}.parquet")
        assert c.candidates == 3 == accepted.num_rows + rejected.num_rows
        assert sorted(rejected.column("reason").to_pylist()) == sorted(
            r for r, n in c.rejected.items() for _ in range(n))


def test_valid_distinct_pages_are_accepted_and_the_others_rejected_with_their_reason(ray_local, tmp_path):
    grid = layouts(["storefront/grid"])[0]

    def page(word: str, **drop: str) -> str:
        values = {slot: f"{word} " + " ".join(f"{word}{slot}{i}" for i in range(12)) for slot in grid.slots()}
        for slot in drop:
            values.pop(slot)
        return fill(grid.html, values)

    seed_page = page("seed")
    texts = [page("alpha"), page("beta"), page("alpha"), page("gamma", shop_name=""), seed_page, page("delta")]
    unfilled = [{}, {}, {}, {"shop_name": "assistant_talk"}, {}, {}]
    n = len(texts)
    meta = {META_GENERATION: json.dumps({"prompts": 9, "seconds": 3.0}).encode()}
    write_parquet_atomic(pa.table({
        "id": [f"syn-tea-{i:05d}" for i in range(n)], "text": texts, "label": ["phishing"] * n,
        "family": ["tea"] * n, "template": ["storefront/grid"] * n, "gen_seed": list(range(n)),
        "slots": ["{}"] * n, "unfilled": [json.dumps(u) for u in unfilled]}),
        str(tmp_path / CANDIDATES / "tea.parquet"), meta)
    [counts] = filter_families(PLANS[:1], tmp_path, "html", seeds=[seed_page], min_text_chars=200, near=0.8,
                               seed_near=0.7)
    accepted = pq.read_table(tmp_path / ACCEPTED / "tea.parquet")
    rejected = pq.read_table(tmp_path / REJECTED / "tea.parquet")
    assert accepted.column("id").to_pylist() == ["syn-tea-00000", "syn-tea-00001", "syn-tea-00005"]
    assert dict(zip(rejected.column("id").to_pylist(), rejected.column("reason").to_pylist(), strict=True)) == {
        "syn-tea-00002": "exact_duplicate", "syn-tea-00003": "unfilled_slot", "syn-tea-00004": "too_close_to_seed"}
    assert counts.rejected == {"exact_duplicate": 1, "unfilled_slot": 1, "too_close_to_seed": 1}
    assert counts.pages_per_s == pytest.approx(2.0)
