"""The synthetic-data experiment on real HTML pages: do generated storefront phishing pages teach a
production model new families, without hurting it on the pages it already handles?

Data: ../shared/data/html (html_data.py holds every policy: the corpus' own splits, sites and phishing
brands whole in one split). The regression set is the real test split: fathom testing pages, lockwise
negatives, readability articles and the phishing brands held out.

One generation (the bundled SmolLM2-135M on vLLM writes the content of templated pages) for seven
storefront families, each in the training layouts and in three layouts nothing trains on. The production
model (html_hier, default preset) is trained here on the real training pages. Then two versions continue
from it on synthetic pages of some families plus a replay of every real training page:
* V1: all families but cushions and bags; V2: jewels only (the published split);
* Table 1: the mean score of each family's pages for production, V1 and V2, in the training layouts (the
  published holdout) and in the held-out layouts (the stricter one: family and layout never trained on);
* Table 2: accuracy, ROC AUC and macro-F1 on the regression set, before and after, and the gate's verdict.
V2 reuses V1's prepare, production, generate and filter stages (copied folders: the tool skips them).

Run:
    .venv/bin/python benchmarks/quality/html_synthetic.py
    .venv/bin/python benchmarks/quality/html_synthetic.py --quick     # fewer pages and epochs
Writes runs/quality/html/ and benchmarks/quality/html_synthetic_results{,_quick}.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from matplotlib.figure import Figure

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from html_data import CLASSES, write_experiment_shards  # noqa: E402

from smallsec_ray.job import run_job  # noqa: E402
from smallsec_ray.spec import parse_spec  # noqa: E402

SHARED = HERE.parents[2] / "shared" / "data"
FAMILIES = [("jewels", "handmade jewellery"), ("tea", "loose-leaf tea"), ("curtains", "linen curtains"),
            ("perfumes", "perfumes"), ("sunglasses", "sunglasses"), ("cushions", "decorative cushions"),
            ("bags", "leather bags")]
VERSIONS = {"V1": [f for f, _ in FAMILIES if f not in ("cushions", "bags")], "V2": ["jewels"]}
HOLDOUT_LAYOUTS = ["storefront/list", "social_login/modal", "checkout/sidebar"]
SHARED_STAGES = ("prepare", "production", "generate", "filter")
GATE = ("accuracy", "roc_auc_macro", "macro_f1")
HELD_OUT, STRICT = "held out, training layouts", "held out, layouts held out"


def job_spec(args: argparse.Namespace, data: Path, out: Path, version: str) -> dict:
    fit = {"batch_size": 32, "schedule": "cosine", "warmup": 0.1, "select_by": "auc",
           "scaling": {"strategy": "ddp", "workers": 2, "cpus_per_worker": 1.0}}
    return {
        "name": f"html-synthetic-{version}", "workload": "synthetic", "artifact": "html", "classes": CLASSES,
        "positive_class": "phishing",
        "data": {"labelled": [str(data / "labelled")], "test": [str(data / "test")],
                 "columns": {"split": ["fixed_split"]}, "split": {"validation": 0.0, "test": 0.0, "seed": 0}},
        "teacher": {"kind": "generative", "model": "bundled:smollm2-135m-instruct", "backend": "vllm",
                    "finetune": {"enabled": False}},
        "labeling": {"replicas": 1, "cpus_per_replica": 2.0},  # generation runs alone: both cores
        "synthetic": {"families": [{"name": n, "description": d} for n, d in FAMILIES],
                      "train_families": VERSIONS[version], "holdout_layouts": HOLDOUT_LAYOUTS,
                      "per_family": args.per_family, "temperature": 0.8, "max_tokens": 48, "retries": 4, "seed": 0,
                      "replay_rows": args.replay_rows, "replay_targets": args.replay_targets,
                      "row_weight": args.row_weight, "counterpart_class": args.counterpart_class, "tolerance": 0.005,
                      "gate_at": args.gate_at,
                      "training": {**fit, "epochs": args.continue_epochs, "learning_rate": args.continue_lr,
                                   "early_stopping_patience": 2}},
        "student": {"model": "html_hier", "preset": "default"},
        "training": {**fit, "epochs": args.epochs, "learning_rate": args.lr, "early_stopping_patience": 3},
        "distillation": {"alpha": args.alpha, "temperature": 2.0},  # replay_targets production only
        "evaluation": {"fprs": [0.01, 0.05], "group_by": ["source"]},
        "resources": {"num_cpus": 4},
        "output": str(out),
    }


def manifest(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())


def slot_figures(run: Path) -> dict:
    """Pages whose every slot the model filled (within its retries), and unfilled slots by reason."""
    pages, complete, reasons = 0, 0, Counter()
    for path in sorted((run / "generate" / "candidates").glob("*.parquet")):
        for unfilled in pq.read_table(path, columns=["unfilled"]).column("unfilled").to_pylist():
            missing = json.loads(unfilled) if unfilled else {}
            pages += 1
            complete += not missing
            reasons.update(missing.values())
    return {"pages": pages, "pages_all_slots_filled": complete, "unfilled_slots_by_reason": dict(reasons)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--per-family", type=int, default=12, help="candidate pages per family and layout set")
    p.add_argument("--epochs", type=int, default=12, help="production model: maximum epochs")
    p.add_argument("--lr", type=float, default=1e-3, help="production model: peak learning rate")
    p.add_argument("--continue-epochs", type=int, default=4, help="V1, V2: maximum epochs of further training")
    p.add_argument("--continue-lr", type=float, default=3e-4, help="V1, V2: peak learning rate")
    p.add_argument("--replay-rows", type=int, default=2000, help="real training pages replayed (all there are: 806)")
    p.add_argument("--replay-targets", choices=["labels", "production"], default="production",
                   help="V1, V2: what the replayed real pages teach (production: also production's probabilities)")
    p.add_argument("--row-weight", type=float, default=1.0, help="V1, V2: loss weight of a synthetic page")
    p.add_argument("--alpha", type=float, default=0.5, help="replay-targets production: weight of the labels")
    p.add_argument("--counterpart-class", default="benign", help="V1, V2: each synthetic page also trains, without its "
                   "credential forms, as this class (benign)")
    p.add_argument("--gate-at", choices=["argmax", "threshold"], default="argmax",
                   help="the gate decides on accuracy and macro-F1 at argmax (the published layout), or at each "
                   "model's threshold picked on the validation rows at FPR 0.05 (the one it ships with); Table 2 "
                   "gives both")
    p.add_argument("--out", type=Path, default=Path("runs/quality/html"))
    return p


def main() -> int:
    args = parser().parse_args()
    if args.quick:
        args.per_family, args.epochs, args.continue_epochs = 6, 4, 2
    suffix = "_quick" if args.quick else ""
    started = time.time()
    data = args.out / "data"
    sizes = write_experiment_shards(SHARED, data)
    print(f"data: {sizes}", flush=True)

    timings, evaluations = {}, {}
    for i, version in enumerate(VERSIONS):
        out = args.out / f"run-{version}"
        if i > 0:  # the same production model and pages: copy their stage folders, the tool skips them
            for stage in SHARED_STAGES:
                if not (out / stage).exists():
                    shutil.copytree(args.out / f"run-{next(iter(VERSIONS))}" / stage, out / stage)
        t0 = time.time()
        run_job(parse_spec(job_spec(args, data, out, version), f"html-synthetic-{version}"))
        timings[version] = round(time.time() - t0, 1)
        evaluations[version] = manifest(out, "evaluate")["result"]

    first = args.out / f"run-{next(iter(VERSIONS))}"
    stage_minutes = {v: {m["stage"]: round(m["seconds"] / 60, 1) for m in
                         (json.loads(f.read_text()) for f in sorted((args.out / f"run-{v}").glob("*/manifest.json")))}
                     for v in VERSIONS}
    generation = manifest(first, "filter")["result"]["families"]
    gen_seconds = sum(f["generation_seconds"] for f in generation)
    results = {
        "command": shlex.join(["python", "benchmarks/quality/html_synthetic.py", *sys.argv[1:]]),
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {platform.python_version()}, "
                                                     f"{_cpus()} cores",
        "minutes_this_call": round((time.time() - started) / 60, 1), "job_seconds_this_call": timings,
        "stage_minutes": stage_minutes, "data": sizes, "args": vars(args) | {"out": str(args.out)},
        "versions": VERSIONS, "holdout_layouts": HOLDOUT_LAYOUTS,
        "generation": {"families": generation, "seconds": round(gen_seconds, 1),
                       "pages_per_s": round(sum(f["candidates"] for f in generation) / gen_seconds, 3),
                       "accepted": sum(f["accepted"] for f in generation),
                       "candidates": sum(f["candidates"] for f in generation), **slot_figures(first)},
        "families": {v: e["families"] for v, e in evaluations.items()},
        "regression": {"rows": evaluations["V1"]["regression_rows"], "production": evaluations["V1"]["gate"]["before"],
                       **{v: e["gate"]["after"] for v, e in evaluations.items()},
                       "gate": {v: {"passed": e["gate"]["passed"], "reasons": e["gate"]["reasons"]}
                                for v, e in evaluations.items()}},
        "gate_at": args.gate_at,
        "regression_by_decision": {at: {"production": evaluations["V1"]["gates"][at]["before"],
                                        **{v: e["gates"][at]["after"] for v, e in evaluations.items()},
                                        "passed": {v: e["gates"][at]["passed"] for v, e in evaluations.items()}}
                                   for at in ("argmax", "threshold")},
        "thresholds": {v: e["thresholds"] for v, e in evaluations.items()},
    }
    results["tables"] = tables(results)
    results["goals"] = goals(results)
    name = f"html_synthetic_results{suffix}"
    (HERE / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, HERE / f"{name}.png")
    (HERE / f"{name}.md").write_text(markdown(results, name))
    print((HERE / f"{name}.md").read_text())
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def tables(results: dict) -> dict:
    """Table 1 per part (training layouts, held-out layouts): family -> production, V1, V2 (and whether the
    version trained on the family); the held-out means per version."""
    out = {}
    for part in ("main", "strict"):
        rows: dict[str, dict] = {}
        for version, families in results["families"].items():
            for f in families:
                if ("layouts held out" in f["holdout"]) != (part == "strict"):
                    continue
                row = rows.setdefault(f["family"], {"pages": f["pages"], "production": f["production"]})
                row[version] = f["new"]
                row[f"{version}_trained"] = f["holdout"].startswith("trained on")
        means = {}
        for version in results["families"]:
            held = [r for r in rows.values() if version in r and not r[f"{version}_trained"]]
            if held:
                means[version] = {"families": len(held), "production": float(np.mean([r["production"] for r in held])),
                                  version: float(np.mean([r[version] for r in held]))}
        out[part] = {"rows": rows, "held_out_means": means}
    return out


def goals(results: dict) -> dict:
    t = results["tables"]
    main, strict = t["main"]["held_out_means"], t["strict"]["held_out_means"]
    reg = results["regression"]
    drops = {v: {m: reg[v][m] - reg["production"][m] for m in GATE} for v in results["versions"]}
    return {
        "production_held_out_below_0.05": {v: main[v]["production"] < 0.05 for v in main},
        "held_out_at_least_0.5": {v: main[v][v] >= 0.5 for v in main},
        "strict_at_least_0.3": {v: strict[v][v] >= 0.3 for v in strict},
        "no_regression_metric_down_more_than_0.005": {v: all(d >= -0.005 for d in drops[v].values())
                                                       for v in drops},
        "gate_passed_at": {at: by["passed"] for at, by in results["regression_by_decision"].items()},
        "regression_changes": drops,
    }


def plot(results: dict, path: Path) -> None:
    fig = Figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2, sharey=True)
    names = ["production", *results["versions"]]
    for ax, (part, title) in zip(axes, (("main", "training layouts (published holdout)"),
                                        ("strict", "held-out layouts (stricter holdout)")), strict=True):
        rows = results["tables"][part]["rows"]
        families = list(rows)
        x = np.arange(len(families))
        for k, name in enumerate(names):
            values = [rows[f].get(name, np.nan) for f in families]
            bars = ax.bar(x + (k - 1) * 0.27, values, width=0.27, label=name, color=f"C{k}")
            if name != "production":
                for bar, f in zip(bars, families, strict=True):
                    if rows[f].get(f"{name}_trained"):
                        bar.set_hatch("//")
        ax.set_xticks(x, families, rotation=30, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("mean phishing score of the family's pages")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, title="hatched: the version trained on it",
               title_fontsize=7)
    fig.suptitle("Generated storefront phishing pages: production vs further trained models", fontsize=11)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path)


def markdown(results: dict, name: str) -> str:
    versions = list(results["versions"])
    lines = [f"# HTML synthetic-data experiment ({results['date']})", "",
             f"`{results['command']}`, {results['machine']}; {results['minutes_this_call']} minutes this call; "
             f"stage minutes {results['stage_minutes']}", "", f"Data: {results['data']}", "",
             "V1 trains on " + ", ".join(results["versions"]["V1"]) + "; V2 on " + ", ".join(results["versions"]["V2"])
             + f". Held-out layouts: {', '.join(results['holdout_layouts'])}.", ""]
    for part, title in (("main", "Table 1: mean phishing score per family, training layouts (published holdout)"),
                        ("strict", "Table 1b: the same in layouts never trained on (stricter holdout)")):
        t = results["tables"][part]
        lines += [f"### {title}", "", "| family | pages | production | " + " | ".join(versions) + " |",
                  "|---|---:|---:|" + "---:|" * len(versions)]
        for family, row in t["rows"].items():
            cells = [f"{row[v]:.4f}" + (" (trained)" if row[f"{v}_trained"] else "") if v in row else ""
                     for v in versions]
            lines.append(f"| {family} | {row['pages']} | {row['production']:.4f} | " + " | ".join(cells) + " |")
        for v, m in t["held_out_means"].items():
            lines.append(f"| mean of {v}'s {m['families']} held-out families | | {m['production']:.4f} | "
                         + " | ".join(f"**{m[v]:.4f}**" if w == v else "" for w in versions) + " |")
        lines.append("")
    reg, by = results["regression"], results["regression_by_decision"]
    lines += [f"### Table 2: regression set ({reg['rows']} real test pages), before and after", "",
              "Accuracy and macro-F1 at argmax (the published layout) and at each model's own threshold, picked on "
              "the validation rows at FPR 0.05 (production " + f"{results['thresholds']['V1']['production']:.4f}, "
              + ", ".join(f"{v} {results['thresholds'][v]['new']:.4f}" for v in versions)
              + f"); the gate decides at {results['gate_at']}.", "",
              "| metric | production | " + " | ".join(versions) + " |", "|---|---:|" + "---:|" * len(versions)]
    for at, metrics in (("argmax", GATE), ("threshold", ("accuracy", "macro_f1"))):
        for m in metrics:
            metric = m if m == "roc_auc_macro" else f"{m} at {at}"
            lines.append(f"| {metric} | {by[at]['production'][m]:.4f} | " + " | ".join(
                f"{by[at][v][m]:.4f} ({by[at][v][m] - by[at]['production'][m]:+.4f})" for v in versions) + " |")
    for at in ("argmax", "threshold"):
        deciding = at == results["gate_at"]
        lines.append(f"| gate at {at} (tolerance 0.005){', decides' if deciding else ''} | | " + " | ".join(
            ("passed" if by[at]["passed"][v] else "refused")
            + (": " + "; ".join(reg["gate"][v]["reasons"]) if deciding and not by[at]["passed"][v] else "")
            for v in versions) + " |")
    g = results["generation"]
    lines += ["", f"Generation: {g['candidates']} candidates, {g['accepted']} accepted, {g['pages_per_s']} pages/s "
              f"({g['seconds']} s of generation); pages with every slot filled {g['pages_all_slots_filled']} of "
              f"{g['pages']}; unfilled slots by reason {g['unfilled_slots_by_reason']}.", "",
              "| family | candidates | accepted | rejected by reason | pages/s |", "|---|---:|---:|---|---:|"]
    for f in g["families"]:
        lines.append(f"| {f['family']} | {f['candidates']} | {f['accepted']} | {f['rejected']} | "
                     f"{f['candidates'] / f['generation_seconds']:.3f} |")
    lines += ["", "Goals: " + json.dumps({k: v for k, v in results["goals"].items() if k != "regression_changes"}),
              "", f"![families]({name}.png)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
