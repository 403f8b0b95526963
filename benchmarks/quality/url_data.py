"""The URL data of the semi-supervised experiment, from ../shared/data/url, three classes:
benign (Tranco, ISCX-2016 crawl, tldr documentation links), phishing (PhishTank), malware (URLhaus).

Every policy, in order (the data README's pitfalls are the reason for most):
* Scheme removed (`http://`, `https://`) and one trailing `/` dropped: 94% of ISCX rows are http and all
  Tranco and tldr rows https, so the scheme would name the source.
* Group = the registered domain (tldextract with its bundled public suffix list, private suffixes such as
  github.io and 000webhostapp.com included, no network), or the IP for IP hosts. Test is disjoint from
  everything else by registered domain; so are the labelled rows' validation split and the pool.
* Caps: ISCX at 20 rows per host (its 35k rows come from 310 hosts of one 2015 crawl); the URLhaus
  `*.in.net` campaign (6,451 rows, one path) at 100 rows; IP-host URLhaus rows at 30% of the malware
  rows (59% in the file, Mozi-style `1.2.3.4:port/i`).
* Class mix: half benign, a quarter each phishing and malware (as far as the capped malware rows go);
  benign half Tranco, a quarter each ISCX and tldr (Tranco fills in where those run out).
* Parts (seeded, by whole registered domains): test (`test_rows`), labelled (`labelled_rows`, of which
  `validation_rows` fixed as validation), and the pool (`pool_rows`), written with its labels moved to
  `true_label` so the tool sees them as unlabelled (they score pseudo-labels; never trained on).
* Each row keeps `source` and a `form` (ip / domain only / with path), for per-source and per-form figures.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pandas as pd
import tldextract

FILES = {"tranco_top100k.csv": "benign", "iscx2016_benign.csv": "benign", "tldr_doc_links.csv": "benign",
         "phishtank.csv": "phishing", "urlhaus.csv": "malware"}
CLASSES = ["benign", "phishing", "malware"]
SHARES = {"benign": 0.5, "phishing": 0.25, "malware": 0.25}
# Benign by source: Tranco's bare domains would otherwise be 90% of the benign rows, and "no path" would
# then mean benign; the crawl and documentation links give benign rows with paths.
BENIGN_SOURCES = {"tranco": 0.5, "iscx2016": 0.25, "tldr": 0.25}
IP = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def normalise(url: str) -> str:
    url = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", str(url).strip())
    return url[:-1] if url.endswith("/") and url.count("/") == 1 else url


def host_of(url: str) -> str:
    return re.split(r"[/?#]", url, maxsplit=1)[0].rsplit("@", 1)[-1].split(":")[0].lower()


def form_of(url: str, host: str) -> str:
    if IP.match(host):
        return "ip"
    return "domain only" if re.sub(r"^[^/?#]*", "", url) in ("", "/") else "with path"


def load(shared: Path) -> pd.DataFrame:
    extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True)
    frames = []
    for name, label in FILES.items():
        rows = pd.read_csv(shared / "url" / name, usecols=["url"]).dropna()
        frames.append(rows.assign(label=label, source=name.removesuffix(".csv").split("_")[0]))
    rows = pd.concat(frames, ignore_index=True)
    rows["text"] = rows["url"].map(normalise)
    rows = rows[rows["text"].str.len() > 0]
    # A URL published with both labels (one in the README) is dropped: its label is not knowable.
    both = rows.groupby("text")["label"].nunique()
    rows = rows[~rows["text"].isin(both[both > 1].index)].drop_duplicates("text")
    hosts = rows["text"].map(host_of)
    rows["host"] = hosts
    domains = {h: (h if IP.match(h) else (extract(h).top_domain_under_public_suffix or h)) for h in set(hosts)}
    rows["group"] = rows["host"].map(domains)
    rows["form"] = [form_of(u, h) for u, h in zip(rows["text"], rows["host"], strict=True)]
    rows["key"] = [_hash(t) for t in rows["text"]]
    return rows.sort_values("key").reset_index(drop=True)


def _hash(text: str, seed: int = 0) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x1f{text}".encode(), digest_size=8).digest(), "big")


def capped(rows: pd.DataFrame) -> pd.DataFrame:
    iscx = rows[rows["source"] == "iscx2016"].groupby("host").head(20)
    rows = pd.concat([rows[rows["source"] != "iscx2016"], iscx])
    campaign = rows["host"].str.endswith(".in.net") & (rows["label"] == "malware")
    rows = pd.concat([rows[~campaign], rows[campaign].head(100)])
    malware = rows["label"] == "malware"
    ip = malware & (rows["form"] == "ip")
    n_other = int((malware & ~ip).sum())
    keep_ip = int(0.3 / 0.7 * n_other)
    rows = pd.concat([rows[~ip], rows[ip].head(keep_ip)])
    return rows.sort_values("key").reset_index(drop=True)


def draw(rows: pd.DataFrame, n: int) -> pd.DataFrame:
    """n rows in the class mix of SHARES (benign sources in proportion), in hash order."""
    parts = []
    for label, share in SHARES.items():
        if label != "benign":
            parts.append(rows[rows["label"] == label].head(round(n * share)))
            continue
        benign = [rows[rows["source"] == source].head(round(n * share * w)) for source, w in BENIGN_SOURCES.items()]
        short = round(n * share) - sum(len(b) for b in benign)  # a source that ran out: Tranco fills in
        if short > 0:
            tranco = rows[rows["source"] == "tranco"]
            benign.append(tranco.iloc[len(benign[0]):len(benign[0]) + short])
        parts += benign
    return pd.concat(parts)


def whole_groups(rows: pd.DataFrame, n: int) -> set[str]:
    """Registered domains in seeded order, each taken whole while no class overshoots its share of n by
    5%, until every class has 95% of its share."""
    counts = dict.fromkeys(CLASSES, 0)
    targets = {label: round(n * share) for label, share in SHARES.items()}
    chosen: set[str] = set()
    for _, members in rows.sort_values(["group_key", "key"]).groupby("group_key", sort=True):
        labels = members["label"].value_counts()
        if any(counts[c] + labels.get(c, 0) > targets[c] * 1.05 for c in CLASSES):
            continue
        chosen.add(members["group"].iloc[0])
        for c in CLASSES:
            counts[c] += int(labels.get(c, 0))
        if all(counts[c] >= targets[c] * 0.95 for c in CLASSES):
            break
    return chosen


def write_experiment_shards(shared: Path, out: Path, labelled_rows: int, validation_rows: int, pool_rows: int,
                            test_rows: int, seed: int = 0) -> dict[str, int]:
    rows = capped(load(shared))
    rows["group_key"] = rows["group"].map({g: _hash(g, seed + 1) for g in rows["group"].unique()})
    test_groups = whole_groups(rows, test_rows)
    test = rows[rows["group"].isin(test_groups)]
    rest = rows[~rows["group"].isin(test_groups)]
    # Validation: whole domains too; the labelled train rows and the pool share domains (as a team's
    # labelled sample and its unlabelled telemetry do).
    val_groups = whole_groups(rest, validation_rows)
    validation = rest[rest["group"].isin(val_groups)]
    rest = rest[~rest["group"].isin(val_groups)]
    train = draw(rest, labelled_rows - len(validation))
    pool = draw(rest[~rest.index.isin(train.index)], pool_rows)
    test = draw(test, test_rows)

    out.mkdir(parents=True, exist_ok=True)
    columns = ["id", "text", "label", "source", "group", "form"]
    labelled = pd.concat([train.assign(fixed_split="train"), validation.assign(fixed_split="validation")])
    for name, frame in (("labelled", labelled), ("pool", pool), ("test", test)):
        frame = frame.assign(id=[f"{name}-{k}" for k in frame["key"]])
        keep = columns + (["fixed_split"] if name == "labelled" else [])
        frame = frame[keep]
        if name == "pool":
            frame = frame.rename(columns={"label": "true_label"})
        (out / name).mkdir(exist_ok=True)
        frame.sample(frac=1.0, random_state=seed).to_parquet(out / name / "part-0.parquet", index=False)
    return {"labelled_train": len(train), "validation": len(validation), "pool": len(pool), "test": len(test),
            **{f"test_{c}": int((test["label"] == c).sum()) for c in CLASSES},
            **{f"pool_{c}": int((pool["label"] == c).sum()) for c in CLASSES}}
