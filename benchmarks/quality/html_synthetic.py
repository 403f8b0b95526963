"""The synthetic-data experiment on real HTML pages: do generated storefront phishing pages teach a production
model new families, without hurting it on the pages it already handles, by more than one training differs
from the next?

The recipe is jobs/experiments/html-synthetic.yaml (html_data.py holds every data policy: the corpus' own
splits, sites and phishing brands whole in one split). One production model (html_hier, default preset) and
one generation (the bundled SmolLM2-135M on vLLM writes the content of templated pages for seven storefront
families, in the training layouts and in three layouts nothing trains on) serve two versions, each trained
further from production with --repeats training seeds (synthetic.training.seed; the same rows):
* V1: all families but cushions and bags; V2: jewels only (the published split);
* Table 1: the mean phishing score of each family's pages for production and each version, in the training
  layouts (the published holdout) and in the held-out layouts (the stricter one);
* Table 2: accuracy, ROC AUC and macro-F1 on the regression set (the real test pages), production against
  each version, and the gate's verdict per seed.
The first version's first seed runs every stage; every other run reuses its prepare, production, generate and
filter stages (reuse_from) and keeps its own folder (runs/quality/html/V-seedS) with its own models.
A verdict compares each version with production, paired by seed (results.Verdict): "better" only where every
seed moves the same way and the mean change is larger than its spread.

    python benchmarks/quality/html_synthetic.py                 # ~30 min on 2 cores, most of it generation
    python benchmarks/quality/html_synthetic.py --smoke         # tiny pages, models and generator
    python benchmarks/quality/html_synthetic.py --levers        # then every lever recipe, on validation rows
    python benchmarks/quality/html_synthetic.py --levers weight0.3 counterparts-labels-weight1
Writes benchmarks/quality/html_synthetic.{json,md,png} (--name: another stem), and with --levers
html_synthetic_levers.{json,md}.

Levers of the further training are chosen on validation rows only: each recipe of RECIPES is a few overrides
(learning rate and epochs, what the replayed pages teach, a synthetic page's weight, counterparts) on the spec of
the first run (V1, seed 0), whose production model and pages it reuses; production and each new model are scored
on the real validation pages (the gate's metrics, on rows the gate never sees) and on the held-out families'
generated pages. Test rows are not read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import pyarrow.parquet as pq  # noqa: E402
from html_data import write_experiment_shards  # noqa: E402
from results import ROOT, SHARED, Results, Spread, Verdict, jsonable, table, tiny_generator  # noqa: E402

from smallsec_ray.data import schema  # noqa: E402
from smallsec_ray.evaluation import class_metrics  # noqa: E402
from smallsec_ray.job import RunResults, read_results, run_job  # noqa: E402
from smallsec_ray.spec import load_spec, parse_override, parse_spec, with_overrides  # noqa: E402
from smallsec_ray.workloads.common import read_rows, score_student, strings  # noqa: E402

SPEC = ROOT / "jobs" / "experiments" / "html-synthetic.yaml"
VERSIONS = {"V1": ["jewels", "tea", "curtains", "perfumes", "sunglasses"], "V2": ["jewels"]}
GATE = ("accuracy", "roc_auc_macro", "macro_f1")
HELD_OUT, STRICT = "held out, training layouts", "held out, layouts held out"
SMOKE = {  # tiny everything, the same stages and code (the generator's folder is added in main)
    "data.max_rows_per_shard": 200, "synthetic.per_family": 2, "synthetic.max_tokens": 8, "synthetic.retries": 0,
    "synthetic.min_text_chars": 0, "synthetic.replay_rows": 60, "student.preset": "tiny", "training.epochs": 1,
    "synthetic.training.epochs": 1, "synthetic.families": [
        {"name": "jewels", "description": "handmade jewellery"}, {"name": "tea", "description": "loose-leaf tea"},
        {"name": "bags", "description": "leather bags"}],
    "synthetic.holdout_layouts": ["social_login/modal"], "synthetic.layouts": ["storefront/grid"],
}
SMOKE_VERSIONS = {"V1": ["jewels", "tea"], "V2": ["jewels"]}
# Lever recipes: name -> overrides of the first run's spec. The first runs' recipe replayed labels, weighed a
# synthetic page 1 and had no counterparts.
LABELS = {"synthetic.replay_targets": "labels", "synthetic.row_weight": 1.0, "synthetic.counterpart_class": None}
RECIPES: dict[str, dict] = {
    "lr3e-4-e4": LABELS,
    "lr1e-4-e4": {**LABELS, "synthetic.training.learning_rate": 1e-4},
    "lr1e-4-e2": {**LABELS, "synthetic.training.learning_rate": 1e-4, "synthetic.training.epochs": 2},
    "lr3e-5-e4": {**LABELS, "synthetic.training.learning_rate": 3e-5},
    "replay-production": {**LABELS, "synthetic.replay_targets": "production"},
    "replay-production-a0.2": {**LABELS, "synthetic.replay_targets": "production", "distillation.alpha": 0.2},
    "weight0.3": {**LABELS, "synthetic.row_weight": 0.3},
    "replay-production-weight0.3": {**LABELS, "synthetic.replay_targets": "production", "synthetic.row_weight": 0.3},
    "counterparts": {"synthetic.row_weight": 0.3},  # each page also benign, without its forms
    "counterparts-weight1": {},  # chosen on these validation rows: the experiment's recipe
    "counterparts-labels-weight1": {"synthetic.replay_targets": "labels"},
}


def summarise(results: RunResults, version: str, seed: int) -> dict:
    """One version trained with one seed: its families' scores, the regression figures and the gate."""
    evaluation = results["evaluate"]
    parts: dict[str, dict] = {"main": {}, "strict": {}}
    for f in evaluation.families:
        part = "strict" if "layouts held out" in f["holdout"] else "main"
        parts[part][f["family"]] = {"pages": f["pages"], "production": f["production"], "new": f["new"],
                                    "trained": f["holdout"].startswith("trained on")}
    held = {part: [f for f in families.values() if not f["trained"]] for part, families in parts.items()}
    return {
        "version": version, "seed": seed, "run": results.output, "families": parts,
        "held_out_mean": {part: {"production": _mean([f["production"] for f in fs]),
                                 "new": _mean([f["new"] for f in fs])} for part, fs in held.items()},
        "regression_rows": evaluation.regression_rows,
        "gates": {at: {"passed": g.passed, "reasons": g.reasons, "before": g.before, "after": g.after}
                  for at, g in evaluation.gates.items()},
        "deciding_gate": results.spec.synthetic.gate_at,
        "thresholds": evaluation.thresholds,
        "best_epoch": results["train_student"].best_epoch,
    }


def generation_figures(results: RunResults) -> dict:
    """The one generation every run shares: candidates, acceptances and rejections per family, speed, slots."""
    families = results["filter"].families
    seconds = sum(f.generation_seconds for f in families)
    pages, complete = 0, 0
    reasons: Counter[str] = Counter()
    folder = Path(results.location(results["generate"].folder)) / "candidates"
    for path in sorted(folder.glob("*.parquet")):
        for unfilled in pq.read_table(path, columns=["unfilled"]).column("unfilled").to_pylist():
            missing = json.loads(unfilled) if unfilled else {}
            pages += 1
            complete += not missing
            reasons.update(missing.values())
    return {"families": families, "seconds": round(seconds, 1),
            "pages_per_s": round(sum(f.candidates for f in families) / seconds, 3) if seconds else 0.0,
            "candidates": sum(f.candidates for f in families), "accepted": sum(f.accepted for f in families),
            "pages": pages, "pages_all_slots_filled": complete, "unfilled_slots_by_reason": dict(reasons)}


def aggregate(rows: list[dict]) -> dict:
    """Per version over its seeds: the held-out families' mean score and the regression metrics, each against
    production (paired by seed), and how many seeds passed the gate."""
    out = {}
    for version in dict.fromkeys(r["version"] for r in rows):
        mine = sorted((r for r in rows if r["version"] == version), key=lambda r: r["seed"])
        held = {part: {"production": Spread.of([r["held_out_mean"][part]["production"] for r in mine]),
                       "new": Spread.of([r["held_out_mean"][part]["new"] for r in mine]),
                       "verdict": Verdict.of([r["held_out_mean"][part]["new"] for r in mine],
                                             [r["held_out_mean"][part]["production"] for r in mine])}
                for part in ("main", "strict") if all(r["held_out_mean"][part]["new"] is not None for r in mine)}
        regression = {}
        for at in ("argmax", "threshold"):
            for metric in GATE if at == "argmax" else ("accuracy", "macro_f1"):
                before = [r["gates"][at]["before"][metric] for r in mine]
                after = [r["gates"][at]["after"][metric] for r in mine]
                regression[f"{metric} at {at}" if metric != "roc_auc_macro" else metric] = {
                    "production": Spread.of(before), "new": Spread.of(after), "verdict": Verdict.of(after, before)}
        families = {part: {name: {"production": mine[0]["families"][part][name]["production"],
                                  "new": Spread.of([r["families"][part][name]["new"] for r in mine]),
                                  "pages": mine[0]["families"][part][name]["pages"],
                                  "trained": mine[0]["families"][part][name]["trained"]}
                           for name in mine[0]["families"][part]}
                    for part in ("main", "strict")}
        out[version] = {"train_families": mine[0].get("train_families"), "seeds": [r["seed"] for r in mine],
                        "held_out": held, "regression": regression, "families": families,
                        "gate_passed": {at: sum(r["gates"][at]["passed"] for r in mine)
                                        for at in ("argmax", "threshold")},
                        "deciding_gate": mine[0]["deciding_gate"], "regression_rows": mine[0]["regression_rows"]}
    return out


def markdown(results: dict) -> str:
    """The experiment's tables, from a results file's figures (benchmarks/tables.py calls this too)."""
    versions = results["versions"]
    names = list(versions)
    n = len(next(iter(versions.values()))["seeds"])
    lines = [f"Every figure of a version: mean [min, max] over {n} training seeds of its further training (seeds "
             + ", ".join(str(s) for s in next(iter(versions.values()))["seeds"]) + "); production is one model. "
             + "; ".join(f"{v} trains on {', '.join(results['train_families'][v])}" for v in names) + ".", ""]
    for part, title in (("main", "Table 1: mean phishing score per family, training layouts (published holdout)"),
                        ("strict", "Table 1b: the same in layouts never trained on (stricter holdout)")):
        rows = []
        families = versions[names[0]]["families"][part]
        for family in families:
            row = [family, families[family]["pages"], f"{families[family]['production']:.4f}"]
            for v in names:
                f = versions[v]["families"][part].get(family)
                row.append("" if f is None else Spread(**f["new"]).text(4) + (" (trained)" if f["trained"] else ""))
            rows.append(row)
        for v in names:
            held = versions[v]["held_out"].get(part)
            if held:
                row = [f"**{v}'s held-out families**", "", f"{Spread(**held['production']).mean:.4f}"]
                row += [f"{Spread(**held['new']).text(4)}: **{held['verdict']['outcome']}**" if w == v else ""
                        for w in names]
                rows.append(row)
        lines += [f"#### {title}", "", table(["family", "pages", "production", *names], rows, right=(1, 2))]
    first = versions[names[0]]
    lines += [f"#### Table 2: regression set ({first['regression_rows']} real test pages), production against each "
              f"version (the gate decides at {first['deciding_gate']}, tolerance 0.005)", ""]
    rows = []
    for metric in first["regression"]:
        row = [metric, f"{Spread(**first['regression'][metric]['production']).mean:.4f}"]
        for v in names:
            r = versions[v]["regression"][metric]
            diffs = Spread(**r["verdict"]["differences"])
            row.append(f"{Spread(**r['new']).text(4)} ({diffs.mean:+.4f}: **{r['verdict']['outcome']}**)")
        rows.append(row)
    for at in ("argmax", "threshold"):
        rows.append([f"gate at {at}: seeds passed", "", *[f"{versions[v]['gate_passed'][at]} of {n}" for v in names]])
    lines.append(table(["metric", "production", *names], rows, right=(1,)))
    g = results["generation"]
    lines += [f"Generation (one, shared): {g['candidates']} candidates, {g['accepted']} accepted, "
              f"{g['pages_per_s']} pages/s ({g['seconds']} s); pages with every slot filled "
              f"{g['pages_all_slots_filled']} of {g['pages']}; unfilled slots by reason "
              f"{g['unfilled_slots_by_reason']}.", ""]
    rows = [[f["family"], f["candidates"], f["accepted"], json.dumps(f["rejected"]),
             f"{f['candidates'] / f['generation_seconds']:.3f}" if f["generation_seconds"] else "-"]
            for f in g["families"]]
    lines.append(table(["family", "candidates", "accepted", "rejected by reason", "pages/s"], rows, right=(1, 2, 4)))
    return "\n".join(lines)


def figure(results: dict) -> Any:
    from matplotlib.figure import Figure

    versions = results["versions"]
    names = ["production", *versions]
    fig = Figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (part, title) in zip(axes, (("main", "training layouts (published holdout)"),
                                        ("strict", "held-out layouts (stricter holdout)")), strict=True):
        families = list(next(iter(versions.values()))["families"][part])
        for k, name in enumerate(names):
            xs = [i + (k - 1) * 0.27 for i in range(len(families))]
            if name == "production":
                first = next(iter(versions.values()))["families"][part]
                ax.bar(xs, [first[f]["production"] for f in families], width=0.27, label=name, color="C0")
                continue
            spreads = [Spread(**versions[name]["families"][part][f]["new"]) for f in families]
            bars = ax.bar(xs, [s.mean for s in spreads], width=0.27, label=name, color=f"C{k}",
                          yerr=[[s.mean - s.min for s in spreads], [s.max - s.mean for s in spreads]], capsize=2)
            for bar, f in zip(bars, families, strict=True):
                if versions[name]["families"][part][f]["trained"]:
                    bar.set_hatch("//")
        ax.set_xticks(range(len(families)), families, rotation=30, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("mean phishing score of the family's pages")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8,
               title="hatched: the version trained on it; bars: mean, min-max over seeds", title_fontsize=7)
    fig.suptitle("Generated storefront phishing pages: production vs further trained models", fontsize=11)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def run_levers(source: RunResults, names: list[str], base: Path) -> dict:
    """Each lever recipe on the source run's own spec, its other stages reused, scored on validation rows."""
    spec = source.spec
    val = read_rows([source.location(s) for s in source["prepare"].shards("labelled")], "validation")
    texts, labels = strings(val, schema.TEXT), strings(val, schema.LABEL)

    def on_validation(folder: str) -> dict:
        metrics = class_metrics(score_student(Path(folder), texts), labels, spec.classes)
        return {m: getattr(metrics, m) for m in GATE}

    recipes = []
    for name in names:
        overrides = {**RECIPES[name], "name": f"html-lever-{name}", "output": str(base / f"lever-{name}"),
                     "reuse_from": [source.output]}
        results = run_job(parse_spec(with_overrides(spec.public_dump(), overrides), f"lever {name}"))
        trained = results["train_student"]
        held = [f["new"] for f in results["evaluate"].families if f["holdout"] == HELD_OUT]
        recipes.append({"name": name, "overrides": RECIPES[name], "best_epoch": trained.best_epoch,
                        "validation": on_validation(results.location(trained.model_dir)),
                        "held_out_family_mean": _mean(held)})
    return {"source": source.output, "validation_rows": len(texts),
            "production": on_validation(source.location(source["production"].model_dir)), "recipes": recipes}


def levers_markdown(results: dict) -> str:
    """The levers' table, from their results file (benchmarks/tables.py calls this too)."""
    rows = [["production", "-", *(f"{results['production'][m]:.4f}" for m in GATE), "-"]]
    for r in results["recipes"]:
        held = "-" if r["held_out_family_mean"] is None else f"{r['held_out_family_mean']:.4f}"
        rows.append([r["name"], r["best_epoch"], *(f"{r['validation'][m]:.4f}" for m in GATE), held])
    return (f"Validation pages: {results['validation_rows']} (never the test rows); each recipe's overrides are in "
            "RECIPES of benchmarks/quality/html_synthetic.py.\n\n"
            + table(["recipe", "best epoch", *GATE, "held-out families' mean score"], rows, right=(1, 2, 3, 4, 5)))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="training seeds of each version's further training")
    parser.add_argument("--versions", nargs="+", default=list(VERSIONS), choices=list(VERSIONS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the recipe in every run (a lever)")
    parser.add_argument("--out", type=Path, default=Path("runs/quality/html"))
    parser.add_argument("--name", default="html_synthetic", help="results file stem")
    parser.add_argument("--levers", nargs="*", choices=list(RECIPES), metavar="RECIPE",
                        help="then run these lever recipes (none named: all) on the first run's spec and score them "
                        f"on validation rows; recipes: {', '.join(RECIPES)}")
    parser.add_argument("--smoke", action="store_true", help="tiny pages, models and generator, one seed and one "
                        "lever: checks that the recipe runs (results go to a temporary folder)")
    args = parser.parse_args()
    out = Results(args.name, folder=HERE, smoke=args.smoke)
    base = (out.folder / "runs" if args.smoke else args.out).resolve()
    extra = dict(parse_override(text) for text in args.set)
    versions, repeats = {v: VERSIONS[v] for v in args.versions}, args.repeats
    if args.smoke:
        versions, repeats = SMOKE_VERSIONS, 1
        generator = tiny_generator(base / "tiny-generator", ["jewels", "tea", "bags", "shop", "login", "price"])
        extra = {**SMOKE, "teacher.model": str(generator), **extra}
    data = base / "data"
    sizes = write_experiment_shards(SHARED, data)
    rows, first, generation = [], None, None
    for version, families in versions.items():
        for seed in range(repeats):
            run = base / f"{version}-seed{seed}"
            spec = load_spec(SPEC, {"name": f"html-synthetic-{version}", "data.labelled": [str(data / "labelled")],
                                    "data.test": [str(data / "test")], "synthetic.train_families": families,
                                    "synthetic.training.seed": seed, "output": str(run),
                                    "reuse_from": [str(first)] if first else [], **extra})
            print(f"== {version}, seed {seed}: {run}", flush=True)
            results = run_job(spec)
            rows.append({**summarise(results, version, seed), "train_families": families})
            first = first or run
            generation = generation or generation_figures(results)
    figures = jsonable({"recipe": str(SPEC.relative_to(ROOT)), "overrides": extra, "data": sizes,
                      "train_families": versions, "generation": generation, "runs": rows,
                      "versions": aggregate(rows)})
    print(markdown(figures))
    print(f"results: {out.write(figures, markdown=markdown(figures), figure=figure(figures))}")
    levers = ["weight0.3"] if args.smoke else (args.levers or list(RECIPES)) if args.levers is not None else []
    if levers:
        if first is None:
            raise SystemExit("levers start from the first run: give at least one version and repeat")
        found = jsonable(run_levers(read_results(first), levers, base))
        print(levers_markdown(found))
        written = Results(f"{args.name}_levers", folder=out.folder).write(found, markdown=levers_markdown(found))
        print(f"results: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
