"""The semi-supervised experiment on real URLs: does a small student approach its teacher as the share of
pseudo-labelled rows grows?

Data: ../shared/data/url in three classes (url_data.py holds every policy: scheme removed, registered-
domain groups, caps on the crawl, the campaign and IP hosts). Test rows: registered domains found nowhere
else. The labelled set is small (`--labelled`, of which `--validation` whole domains are the validation
split); the pool (`--pool`) keeps its labels only as `true_label`, to score pseudo-labels.

One run of the semi_supervised workload with the ~3M-parameter default student, then the same teacher
rounds (copied stage folders: the tool skips them) with the small preset. Both curves: the published one
(a fixed training size, share r pseudo-labelled) and the growing one (all labelled rows plus 0, 5k and
all pool rows). A style-only control (logistic regression on the URL's form, length, dots, slashes, query
and TLD, no characters) shows how much the source style alone explains.

Students train with the recipe chosen on validation rows by url_student_recipe.py (2 DDP workers x 32 rows,
lr 1e-3, patience 3); the teacher groups rows by length (bench_teacher_finetune.py). Timings of the last run
are in benchmarks/RESULTS.md.
Run:
    .venv/bin/python benchmarks/quality/url_semi.py
    .venv/bin/python benchmarks/quality/url_semi.py --quick      # fewer rows and epochs
    # three students per point (seeds), the points the goals name, ~45 min:
    .venv/bin/python benchmarks/quality/url_semi.py --repeats 3 --ratios 0,0.5,1 --added none --presets default \
        --out runs/quality/url-repeats
Writes runs/quality/url/ and benchmarks/quality/url_semi_results{,_quick,_repeats3}.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from url_data import CLASSES, write_experiment_shards  # noqa: E402

from smallsec_ray.job import run_job  # noqa: E402
from smallsec_ray.spec import parse_spec  # noqa: E402
from smallsec_ray.students.folder import load_model  # noqa: E402

SHARED = HERE.parents[2] / "shared" / "data"
SHARED_STAGES = ("prepare", "finetune_teacher", "label", "rounds")


def job_spec(args: argparse.Namespace, data: Path, out: Path, preset: str, growing: bool) -> dict:
    return {
        "name": f"url-semi-{preset}", "workload": "semi_supervised", "artifact": "url", "classes": CLASSES,
        "positive_class": "phishing",
        "data": {"labelled": [str(data / "labelled")], "unlabelled": [str(data / "pool")],
                 "test": [str(data / "test")], "columns": {"split": ["fixed_split"]},
                 "split": {"validation": 0.0, "test": 0.0, "seed": 0}},
        "teacher": {"model": "bundled:all-minilm-l6-v2", "max_length": 64,
                    "finetune": {"epochs": args.teacher_epochs, "batch_size": 32, "learning_rate": args.teacher_lr,
                                 "schedule": "linear", "warmup": 0.1, "select_by": "auc",
                                 "early_stopping_patience": 2, "group_by_length": True,
                                 "scaling": {"strategy": "ddp", "workers": 2, "cpus_per_worker": 0.5}}},
        "labeling": {"replicas": 1, "cpus_per_replica": 1.0, "batch_size": 64},
        "semi_supervised": {"rounds": args.rounds, "min_gain": 0.002, "round_targets": "soft",
                            "round_max_rows": args.round_rows, "ratios": args.ratios,
                            "added_rows": args.added if growing else [], "repeats": args.repeats,
                            "confidence": 0.0, "balance": args.balance, "targets": "soft"},
        "student": {"model": "char_cnn", "preset": preset, "max_length": args.student_length},
        "training": {"epochs": args.epochs, "batch_size": args.batch, "learning_rate": args.lr,
                     "schedule": "cosine", "warmup": 0.1, "early_stopping_patience": args.patience,
                     "select_by": "auc", "scaling": {"strategy": "ddp", "workers": args.workers,
                                                     "cpus_per_worker": 2.0 / args.workers}},
        "distillation": {"alpha": 0.5, "temperature": args.temperature},
        "evaluation": {"fprs": [0.01, 0.05], "group_by": ["source", "form"]},
        "resources": {"num_cpus": 4},
        "output": str(out),
    }


def style_features(url: str) -> dict:
    host = re.split(r"[/?#]", url, maxsplit=1)[0]
    tld = host.rsplit(".", 1)[-1] if "." in host else ""
    return {"ip": bool(re.match(r"^\d+(\.\d+){3}(:\d+)?$", host)), "path": "/" in url, "query": "?" in url,
            "port": ":" in host, "len": min(len(url) // 10, 20), "dots": min(host.count("."), 6),
            "slashes": min(url.count("/"), 8), "tld=" + (tld if tld.isalpha() else "num"): 1}


def style_control(data: Path) -> dict:
    """Macro-F1 and AUC of a model that sees only the URL's style (no characters)."""
    labelled, test = pd.read_parquet(data / "labelled"), pd.read_parquet(data / "test")
    train = labelled[labelled["fixed_split"] == "train"]
    vec = DictVectorizer()
    x, tx = vec.fit_transform(train["text"].map(style_features)), vec.transform(test["text"].map(style_features))
    model = LogisticRegression(max_iter=2000).fit(x, train["label"])
    probs = model.predict_proba(tx)
    order = [list(model.classes_).index(c) for c in CLASSES]
    probs = probs[:, order]
    y = test["label"].map(CLASSES.index).to_numpy()
    return {"macro_f1": float(f1_score(y, probs.argmax(1), average="macro")),
            "auc": float(np.mean([roc_auc_score(y == k, probs[:, k]) for k in range(len(CLASSES))]))}


def stage_minutes(run: Path) -> dict[str, float]:
    """Minutes each stage took when it ran (a stage skipped in this call keeps its first run's time)."""
    out = {}
    for manifest in sorted(run.glob("*/manifest.json")):
        m = json.loads(manifest.read_text())
        out[m["stage"]] = round(m["seconds"] / 60, 1)
    return out


def parameters(folder: Path) -> int:
    net, _, _ = load_model(folder)
    return sum(p.numel() for p in net.parameters())


def teacher_parameters(folder: Path) -> int:
    from transformers import AutoModelForSequenceClassification

    return sum(p.numel() for p in AutoModelForSequenceClassification.from_pretrained(folder).parameters())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--labelled", type=int, default=3600)
    p.add_argument("--validation", type=int, default=600)
    p.add_argument("--pool", type=int, default=24000)
    p.add_argument("--test", type=int, default=6000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--round-rows", type=int, default=1000)
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--teacher-lr", type=float, default=1e-4)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="student training workers")
    p.add_argument("--batch", type=int, default=32, help="student rows per step per worker")
    p.add_argument("--lr", type=float, default=1e-3, help="student peak learning rate")
    p.add_argument("--patience", type=int, default=3, help="student early stopping patience (epochs)")
    p.add_argument("--student-length", type=int, default=128, help="characters (94%% of the URLs here fit whole)")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--balance", default="labelled", choices=["none", "even", "labelled"],
                   help="semi_supervised.balance: the pool is 7%% malware, the labelled rows 25%%")
    p.add_argument("--presets", default="default,small")
    p.add_argument("--ratios", default="0,0.25,0.5,0.75,1", help="the fixed-size curve's shares r")
    p.add_argument("--added", default=None, help="the growing curve's added pool rows, -1 = all, 'none' = no "
                   "such curve (default 0,5000,-1; --quick 0,2000,-1)")
    p.add_argument("--repeats", type=int, default=1, help="students per point, one per training seed: each point "
                   "gives the mean and range (semi_supervised.repeats)")
    p.add_argument("--out", type=Path, default=Path("runs/quality/url"))
    args = p.parse_args()
    if args.quick:
        args.labelled, args.validation, args.pool, args.test = 1500, 300, 6000, 2000
        args.teacher_epochs, args.epochs, args.round_rows = 2, 4, 1000
    args.ratios = [float(r) for r in args.ratios.split(",")]
    args.added = ([] if args.added == "none" else [int(n) for n in args.added.split(",")] if args.added
                  else [0, 2_000 if args.quick else 5_000, -1])
    suffix = ("_quick" if args.quick else "") + (f"_repeats{args.repeats}" if args.repeats > 1 else "")
    started = time.time()
    data = args.out / "data"
    sizes = write_experiment_shards(SHARED, data, args.labelled, args.validation, args.pool, args.test)
    print(f"data: {sizes}", flush=True)
    style = style_control(data)
    print(f"style-only control: {style}", flush=True)

    runs, timings = {}, {}
    presets = args.presets.split(",")
    for i, preset in enumerate(presets):
        out = args.out / f"run-{preset}"
        if i > 0:  # the same teacher rounds: copy their stage folders, the tool skips them
            for stage in SHARED_STAGES:
                if not (out / stage).exists():
                    shutil.copytree(args.out / f"run-{presets[0]}" / stage, out / stage)
        t0 = time.time()
        # The growing curve for the first preset only: on 2 cores its largest student alone takes ~20 min.
        run_job(parse_spec(job_spec(args, data, out, preset, growing=i == 0), f"url-semi-{preset}"))
        timings[preset] = round(time.time() - t0, 1)
        runs[preset] = json.loads((out / "report.json").read_text())

    first = runs[presets[0]]
    extra = first["extra"]
    models = {m["name"]: m for m in first["models"]}
    best = f"teacher round {extra['best_round']}"
    teacher_dir = args.out / f"run-{presets[0]}" / extra["rounds"][extra["best_round"] - 1]["teachers"][0]
    results = {
        "command": "python " + " ".join(["benchmarks/quality/url_semi.py", *sys.argv[1:]]),
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {platform.python_version()}",
        "minutes_this_call": round((time.time() - started) / 60, 1), "job_seconds_this_call": timings,
        "stage_minutes": {preset: stage_minutes(args.out / f"run-{preset}") for preset in presets}, "data": sizes,
        "style_only_control": style,
        "teacher": {"rounds": extra["rounds"], "best_round": extra["best_round"], "stopped": extra["rounds_stopped"],
                    "pseudo_label_accuracy": extra["pseudo_label_accuracy"],
                    "test": {name: m["by_class"] for name, m in models.items() if name.startswith("teacher")},
                    "parameters": teacher_parameters(teacher_dir)},
        "linear_reference_labelled": models.get("linear reference (labelled rows)", {}).get("by_class"),
        "presets": {},
    }
    for preset, report in runs.items():
        ms = {m["name"]: m for m in report["models"]}
        run_dir = args.out / f"run-{preset}"
        some_student = next(m for m in json.loads((run_dir / "train_students" / "manifest.json").read_text())
                            ["result"]["points"])
        results["presets"][preset] = {
            "parameters": parameters(run_dir / some_student["model"]["model_dir"]),
            "curves": report["extra"]["curves"], "gap_closed": report["extra"]["gap_closed"],
            "by_source_form": {name: {col: {v: {"n": g["n"], "auc_phishing": g["roc_auc"]} for v, g in groups.items()}
                                      for col, groups in ms[name]["groups"].items()}
                               for name in ms if name.startswith("student r=") or name == best},
        }
    name = f"url_semi_results{suffix}"
    (HERE / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, HERE / f"{name}.png")
    (HERE / f"{name}.md").write_text(markdown(results, name))
    print((HERE / f"{name}.md").read_text())
    return 0


def plot(results: dict, path: Path) -> None:
    fig = Figure(figsize=(11, 7.5))
    axes = fig.subplots(2, 2)
    teachers = results["teacher"]["test"]
    for row, (metric, key, title) in enumerate((("macro_f1", "macro_f1", "macro-F1"),
                                                 ("auc", "roc_auc_macro", "ROC AUC (one-vs-rest, macro)"))):
        for col, curve in enumerate(("fixed", "growing")):
            ax = axes[row][col]
            for k, (preset, r) in enumerate(results["presets"].items()):
                pts = sorted((c for c in r["curves"] if c["curve"] == curve), key=lambda c: c["x"])
                seeds = max((len(c.get("runs", [])) for c in pts), default=1)
                ax.plot([c["x"] for c in pts], [c[metric] for c in pts], marker="o", color=f"C{k}",
                        label=f"student {preset} ({r['parameters'] / 1e6:.2f}M)"
                        + (f", mean of {seeds} seeds" if seeds > 1 else ""))
                if seeds > 1:
                    ax.scatter([c["x"] for c in pts for _ in c["runs"]], [s[metric] for c in pts for s in c["runs"]],
                               s=12, color=f"C{k}", alpha=0.45)
            for k, (name, m) in enumerate(teachers.items()):
                ax.axhline(m[key], color=f"C{k + 3}", linestyle="--",
                           label=f"{name} ({results['teacher']['parameters'] / 1e6:.1f}M)")
            ref = results.get("linear_reference_labelled")
            if ref:
                ax.axhline(ref[key], color="grey", linestyle=":", label="linear, labelled rows")
            ax.axhline(results["style_only_control"][metric], color="black", linestyle="-.", linewidth=0.8,
                       label="style-only control")
            if curve == "growing":
                ax.set_xscale("symlog", linthresh=1000)
                xs = sorted({c["x"] for r in results["presets"].values() for c in r["curves"]
                             if c["curve"] == "growing"})
                ax.set_xticks(xs, [f"{x / 1000:.0f}k" if x else "0" for x in xs])
                ax.minorticks_off()
            ax.set_xlabel("share r of pseudo-labelled rows (fixed size)" if curve == "fixed"
                          else "pseudo-labelled rows added to the labelled rows")
            ax.set_ylabel(title)
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    fig.suptitle("URLs, 3 classes, test domains unseen in training", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)


def markdown(results: dict, name: str) -> str:
    lines = [f"# URL semi-supervised experiment ({results['date']})", "",
             f"`{results['command']}`; stage minutes {results['stage_minutes']}; data {results['data']}", "",
             "| model | params | point | labelled | pseudo | macro-F1 | AUC |", "|---|---:|---|---:|---:|---:|---:|"]
    for tname, m in results["teacher"]["test"].items():
        lines.append(f"| {tname} | {results['teacher']['parameters']:,} | | | | {m['macro_f1']:.4f} | "
                     f"{m['roc_auc_macro']:.4f} |")
    for preset, r in results["presets"].items():
        for c in r["curves"]:
            lines.append(f"| student {preset} | {r['parameters']:,} | {c['point']} | {c['labelled_rows']:,} | "
                         f"{c['pseudo_rows']:,} | {_spread(c, 'macro_f1')} | {_spread(c, 'auc')} |")
    ref = results.get("linear_reference_labelled")
    if ref:
        lines.append(f"| linear, labelled rows | | | | | {ref['macro_f1']:.4f} | {ref['roc_auc_macro']:.4f} |")
    s = results["style_only_control"]
    lines.append(f"| style-only control | | | | | {s['macro_f1']:.4f} | {s['auc']:.4f} |")
    lines += ["", "Gap closed (r = 1 vs r = 0, against the best teacher round): "
              + "; ".join(f"{p}: {_pct(r['gap_closed']['macro_f1'])} macro-F1, {_pct(r['gap_closed']['auc'])} AUC"
                          for p, r in results["presets"].items()), "",
              "Pseudo-label accuracy per round: "
              + "; ".join(f"round {a['round']}: {a.get('accuracy', float('nan')):.4f} (macro-F1 "
                          f"{a.get('macro_f1', float('nan')):.4f}, {a['rows_with_true_label']:,} rows)"
                          for a in results["teacher"]["pseudo_label_accuracy"]), "",
              f"Rounds: {results['teacher']['stopped']}; best round {results['teacher']['best_round']}.", "",
              f"![curves]({name}.png)"]
    return "\n".join(lines) + "\n"


def _spread(c: dict, metric: str) -> str:
    """The mean, and with several seeds the lowest and highest student."""
    span = c.get(f"{metric}_range")
    if len(c.get("runs", [])) < 2 or not span:
        return f"{c[metric]:.4f}"
    return f"{c[metric]:.4f} ({span[0]:.4f}-{span[1]:.4f})"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


if __name__ == "__main__":
    sys.exit(main())
