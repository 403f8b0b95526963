"""The real pages of the synthetic-data experiment, from ../shared/data/html: benign (fathom login and
non-login pages, readability articles) and phishing (zphisher's cloned login pages).

Every policy, in order (the data README's recommended use and pitfalls are the reason for most):
* The page is the cleaned `html` (the student reads markup and text); `source`, `subset` and `group` are
  kept for per-source figures and splits.
* Groups: a fathom page's site is the registered domain of its `url` (tldextract with its bundled suffix
  list, no network), or its file name where the url is missing; a readability page is its own group; a
  zphisher page's group is its brand (`fb_advanced`, `fb_messenger` and `facebook` are one brand).
* Splits follow the corpus' own ones where it has them: fathom `*/training`, `*/unused`, `type=text` and
  the lockwise positives (real login forms: the hard negatives) train; fathom `*/validation` validates;
  fathom `*/testing`, lockwise negatives and the readability articles are the regression set (test).
  A site found in more than one split goes to the most held-out of them (test, then validation).
  Phishing brands are split by a seeded hash of the brand: about 60% train, 15% validation, 25% test.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import tldextract

FILES = ("fathom_login_pages.jsonl.gz", "readability_pages.jsonl.gz", "zphisher_pages.jsonl.gz")
CLASSES = ["benign", "phishing"]
BRAND_ALIASES = {"fb": "facebook", "ig": "instagram", "insta": "instagram"}
ORDER = {"train": 0, "validation": 1, "test": 2}
_extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


def _hash(text: str, seed: int) -> float:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest(), "big") / 2**64


def _site(url: object, origin: str) -> str:
    if isinstance(url, str) and url:
        parts = _extract(url)
        if parts.domain:
            return ".".join(p for p in (parts.domain, parts.suffix) if p)
    return origin


def _brand(subset: str) -> str:
    first = subset.split("_")[0].lower()
    return BRAND_ALIASES.get(first, first)


def _fathom_split(subset: str) -> str:
    if subset.endswith(("/validation",)):
        return "validation"
    if subset.endswith(("/testing", "/negative")):
        return "test"
    return "train"  # */training, */unused, new-password/type=text, lockwise-proof-of-concept/positive


def load(shared: Path, seed: int = 0) -> pd.DataFrame:
    frames = [pd.read_json(shared / "html" / name, lines=True) for name in FILES]
    rows = pd.concat(frames, ignore_index=True)
    fathom, phishing = rows["source"].str.contains("fathom"), rows["label"] == "phishing"
    rows["group"] = rows["origin"]
    rows.loc[fathom, "group"] = [_site(u, o) for u, o in zip(rows.loc[fathom, "url"], rows.loc[fathom, "origin"],
                                                            strict=True)]
    rows.loc[phishing, "group"] = "brand:" + rows.loc[phishing, "subset"].map(_brand)
    rows["split"] = "test"  # readability
    rows.loc[fathom, "split"] = rows.loc[fathom, "subset"].map(_fathom_split)
    brand_share = rows.loc[phishing, "group"].map(lambda g: _hash(g, seed))
    rows.loc[phishing, "split"] = ["train" if h < 0.6 else "validation" if h < 0.75 else "test" for h in brand_share]
    # A site in two splits goes to the most held-out one.
    most = rows.groupby("group")["split"].agg(lambda s: max(s, key=ORDER.__getitem__))
    rows["moved"] = rows["split"] != rows["group"].map(most)
    rows["split"] = rows["group"].map(most)
    rows["id"] = [f"{s}-{k}" for s, k in zip(rows["source"], range(len(rows)), strict=True)]
    return rows.rename(columns={"html": "page"})


def write_experiment_shards(shared: Path, out: Path, seed: int = 0) -> dict:
    """labelled/ (train and validation, in column fixed_split) and test/ (the regression set)."""
    rows = load(shared, seed)
    columns = ["id", "page", "label", "source", "subset", "group"]
    labelled = rows[rows["split"] != "test"].assign(fixed_split=lambda d: d["split"])[[*columns, "fixed_split"]]
    test = rows[rows["split"] == "test"][columns]
    for name, frame in (("labelled", labelled), ("test", test)):
        (out / name).mkdir(parents=True, exist_ok=True)
        frame.rename(columns={"page": "text"}).sample(frac=1.0, random_state=seed).to_parquet(
            out / name / "part-0.parquet", index=False)
    counts = rows.groupby(["split", "label"]).size()
    return {f"{s}_{c}": int(counts.get((s, c), 0)) for s in ORDER for c in CLASSES} | {
        "moved_to_a_more_held_out_split": int(rows["moved"].sum()),
        "phishing_brands": {s: sorted(rows.loc[(rows["label"] == "phishing") & (rows["split"] == s), "group"]
                                      .str.removeprefix("brand:").unique()) for s in ORDER}}
