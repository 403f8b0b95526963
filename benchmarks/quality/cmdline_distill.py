"""The noisy-label experiment on real command lines: does a student distilled from a teacher beat the same
student trained on the noisy labels alone?

Data: ../shared/data/cmdline (see cmdline_data.py for every policy). Test: whole held-out techniques,
binaries, pages and modules. The analysts' clean rows: a validation set drawn within each source, and
`--clean-share` of the other training groups, which the teacher learns from. The rest is the noisy set,
whose labels go through each noise model in turn (data.noise, applied where labels are read):
  none; rows (uniform: malicious -> benign at n, benign -> malicious at n/10) at n = 0.15, 0.30;
  groups (whole groups: n of the malicious rows, n/3 of the benign ones) at n = 0.15, 0.30;
  rules (the labels of signature_rules.py, a documented set of regex detections).
Every configuration runs the distill workload with the tool in one run folder: prepare, the teacher's
fine-tuning and its labels are made once and reused (the noise is applied where labels are read), the
students, the export and the evaluation run per configuration. Thresholds come from validation rows.

Run (about 45 minutes on 2 idle cores):
    .venv/bin/python benchmarks/quality/cmdline_distill.py
    .venv/bin/python benchmarks/quality/cmdline_distill.py --quick      # 40% of the rows, fewer epochs
    .venv/bin/python benchmarks/quality/cmdline_distill.py --configs groups-0.3 --policy soft --alpha 0.3
Writes runs/quality/cmdline/ and benchmarks/quality/cmdline_results{,_quick}.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cmdline_data import write_experiment_shards  # noqa: E402

from smallsec_ray.job import run_job  # noqa: E402
from smallsec_ray.spec import parse_spec  # noqa: E402

SHARED = HERE.parents[2] / "shared" / "data"
CONFIGS = {  # name -> (noise model, rate, data.noise)
    "none": ("none", 0.0, None),
    "rows-0.15": ("uniform", 0.15, {"mode": "rows", "flip_rates": {"malicious": 0.15, "benign": 0.015}}),
    "rows-0.3": ("uniform", 0.30, {"mode": "rows", "flip_rates": {"malicious": 0.30, "benign": 0.03}}),
    "groups-0.15": ("groups", 0.15, {"mode": "groups", "flip_rates": {"malicious": 0.15, "benign": 0.05}}),
    "groups-0.3": ("groups", 0.30, {"mode": "groups", "flip_rates": {"malicious": 0.30, "benign": 0.10}}),
    "rules": ("rules", None, {"mode": "column", "column": "rule_label"}),
}
MODELS = ("teacher", "linear reference", "baseline student", "distilled student")


def job_spec(args: argparse.Namespace, data: Path, noise: dict | None) -> dict:
    epochs = max(2, args.epochs // 2) if args.quick else args.epochs
    return {
        "name": "cmdline-distill",
        "workload": "distill",
        "artifact": "cmdline",
        "data": {
            "labelled": [str(data / "labelled")], "noisy": [str(data / "noisy")], "test": [str(data / "test")],
            "columns": {"split": ["fixed_split"]},
            "split": {"validation": 0.0, "test": 0.0, "seed": 0},
            "noise": noise,
        },
        "teacher": {"model": "bundled:all-minilm-l6-v2", "max_length": args.teacher_max_length,
                    "finetune": {"epochs": max(2, args.teacher_epochs // 2) if args.quick else args.teacher_epochs,
                                 "batch_size": 16, "learning_rate": args.teacher_lr, "schedule": "linear",
                                 "warmup": 0.1, "early_stopping_patience": 3, "select_by": "auc",
                                 "scaling": {"strategy": "ddp", "workers": 2, "cpus_per_worker": 0.5}},
                    "ensemble": {"size": args.ensemble, "split": "folds"}},
        "labeling": {"replicas": 1, "cpus_per_replica": 1.0, "batch_size": 64},
        "student": {"model": "char_cnn", "preset": args.preset, "max_length": args.student_length},
        "training": {"epochs": epochs, "batch_size": 128, "learning_rate": args.lr, "schedule": "cosine",
                     "warmup": 0.1, "early_stopping_patience": 3, "select_by": "auc",
                     "scaling": {"strategy": "ddp", "workers": 2, "cpus_per_worker": 0.5}},
        "distillation": {"policy": args.policy, "alpha": args.alpha, "temperature": args.temperature,
                         "relabel_precision": args.relabel_precision},
        "evaluation": {"fprs": [0.001, 0.01], "group_by": ["source", "platform"], "audit_top_k": 200},
        "resources": {"num_cpus": 4},
        "output": str(args.out / "run"),
    }


def summarise(report: dict, noise_model: str, noise: float | None, run: Path) -> dict:
    models = {m["name"]: m for m in report["models"]}
    comp = report["comparisons"][0]
    row = {"noise_model": noise_model, "noise": noise, "comparison": comp["sentence"],
           "meets_target": comp["meets_target"]}
    for name in MODELS:
        m = models[name]
        at = m["overall"]["at_threshold"]
        row[name] = {"auc": m["overall"]["roc_auc"], "macro_f1": m["overall"]["macro_f1"],
                     "tpr_at_fpr_0.001": at["val_fpr_0.001"]["tpr"], "tpr_at_fpr_0.01": at["val_fpr_0.01"]["tpr"],
                     "fpr_at_val_thr_0.01": at["val_fpr_0.01"]["fpr"], "tp_at_fpr_0.01": at["val_fpr_0.01"]["tp"],
                     "fp_at_fpr_0.01": at["val_fpr_0.01"]["fp"],
                     "threshold_rests_on": m["threshold_support"]["val_fpr_0.01"],
                     "oracle_tpr_at_fpr_0.01": m["overall"]["oracle_tpr_at_fpr"]["0.01"]}
    row["at_baseline_threshold"] = {k: {"tp": v["tp"], "fp": v["fp"]} for k, v in comp["at_baseline_threshold"].items()}
    row["at_equal_tpr"] = {k: {"tp": v["tp"], "fp": v["fp"]} for k, v in comp["at_equal_tpr"].items()}
    row["fp_change_at_equal_tpr"] = comp["fp_change_at_equal_tpr"]
    row["tpr_change_points_at_fpr_0.01"] = comp["tpr_change_points"]
    audit = report["audit"] or {}
    row["audit"] = {k: audit.get(k) for k in ("top_k", "n_wrong_labels", "precision", "recall")}
    row["label_policy"] = report["extra"].get("label_policy")
    row["per_source_auc"] = {m["name"]: {src: g["roc_auc"] for src, g in m["groups"].get("source", {}).items()}
                             for m in report["models"]}
    row["stage_seconds"] = {p.parent.name: json.loads(p.read_text())["seconds"] for p in run.glob("*/manifest.json")}
    return row


def goals(rows: list[dict]) -> dict:
    """Goals (a)-(e) of issue 9 from the measured rows."""
    by = {(r["noise_model"], r["noise"]): r for r in rows}
    out: dict = {}
    g30 = by.get(("groups", 0.30))
    if g30:
        t, b, d = g30["teacher"], g30["baseline student"], g30["distilled student"]
        out["a_teacher_beats_baseline_groups_0.3"] = {
            "met": t["auc"] > b["auc"] and t["tpr_at_fpr_0.01"] > b["tpr_at_fpr_0.01"],
            "teacher_auc": t["auc"], "baseline_auc": b["auc"],
            "teacher_tpr": t["tpr_at_fpr_0.01"], "baseline_tpr": b["tpr_at_fpr_0.01"]}
        out["b_distilled_beats_baseline_groups_0.3"] = {
            "met": g30["meets_target"], "fp_change_at_equal_tpr": g30["fp_change_at_equal_tpr"],
            "tpr_change_points": g30["tpr_change_points_at_fpr_0.01"], "distilled_tpr": d["tpr_at_fpr_0.01"],
            "baseline_tpr": b["tpr_at_fpr_0.01"]}
    uniform = [r for r in rows if r["noise_model"] == "uniform"]
    if uniform:
        out["c_not_worse_under_uniform"] = {
            "met": all(r["tpr_change_points_at_fpr_0.01"] >= -1.0 for r in uniform),
            "tpr_change_points": {r["noise"]: r["tpr_change_points_at_fpr_0.01"] for r in uniform}}
    out["d_distilled_auc_within_0.01_of_teacher"] = {
        f"{r['noise_model']}-{r['noise']}": {"met": r["distilled student"]["auc"] >= r["teacher"]["auc"] - 0.01,
                                             "distilled": r["distilled student"]["auc"], "teacher": r["teacher"]["auc"]}
        for r in rows}
    none = by.get(("none", 0.0))
    if none:
        b, ref = none["baseline student"], none["linear reference"]
        out["e_baseline_matches_linear_reference_at_0"] = {
            "met": b["auc"] >= ref["auc"] - 0.005 and b["tpr_at_fpr_0.01"] >= ref["tpr_at_fpr_0.01"] - 0.02,
            "baseline_auc": b["auc"], "reference_auc": ref["auc"], "baseline_tpr": b["tpr_at_fpr_0.01"],
            "reference_tpr": ref["tpr_at_fpr_0.01"]}
    return out


def markdown(rows: list[dict], stats: dict, goal: dict, seconds: float, command: str, recipe: dict) -> str:
    lines = [f"Command: `{command}`  ", f"Machine: {platform.node()} ({platform.machine()}, 2 cores), date "
             f"{date.today()}, wall time {seconds / 60:.1f} min.  ", f"Recipe: `{json.dumps(recipe)}`  ",
             f"Data: `{json.dumps(stats)}`", "",
             "| noise | model | AUC | TPR@0.1% FPR | TPR@1% FPR | FPR on test at that threshold | TP / FP | "
             "threshold rests on | oracle TPR@1% |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        noise = f"{r['noise_model']} {r['noise']:g}" if r["noise"] is not None else r["noise_model"]
        for name in MODELS:
            m = r[name]
            lines.append(f"| {noise} | {name} | {m['auc']:.4f} | {m['tpr_at_fpr_0.001']:.3f} | "
                         f"{m['tpr_at_fpr_0.01']:.3f} | {m['fpr_at_val_thr_0.01']:.3f} | "
                         f"{m['tp_at_fpr_0.01']} / {m['fp_at_fpr_0.01']} | {m['threshold_rests_on']} | "
                         f"{m['oracle_tpr_at_fpr_0.01']:.3f} |")
    lines += ["", "| noise | TP/FP at baseline's threshold (baseline -> distilled) | FP at equal TPR | "
              "TPR@1% FPR change | relabelled (correct) | audit precision / recall @k | target met |",
              "|---|---|---|---:|---|---|---|"]
    for r in rows:
        noise = f"{r['noise_model']} {r['noise']:g}" if r["noise"] is not None else r["noise_model"]
        b, d = r["at_baseline_threshold"]["baseline student"], r["at_baseline_threshold"]["distilled student"]
        eb, ed = r["at_equal_tpr"]["baseline student"], r["at_equal_tpr"]["distilled student"]
        a = r["audit"]
        audit = (f"{a['precision']:.2f} / {a['recall']:.2f} @{a['top_k']}" if a.get("recall") is not None
                 else "n/a (no wrong labels)")
        policy = r.get("label_policy") or {}
        changed = (f"{sum(policy['changed'].values())} ({sum((policy.get('changed_correctly') or {}).values())})"
                   if policy.get("changed") else "-")
        lines.append(f"| {noise} | {b['tp']}/{b['fp']} -> {d['tp']}/{d['fp']} | {eb['fp']} -> {ed['fp']} | "
                     f"{r['tpr_change_points_at_fpr_0.01']:+.1f} pts | {changed} | {audit} | {r['meets_target']} |")
    lines += ["", "Goals:", "", "```", json.dumps(goal, indent=1), "```", ""]
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    names = [f"{r['noise_model']}\n{r['noise']:g}" if r["noise"] is not None else r["noise_model"] for r in rows]
    xs = range(len(rows))
    for ax, key, title in ((fig.add_subplot(1, 3, 1), "tp", "True positives"),
                           (fig.add_subplot(1, 3, 2), "fp", "False positives")):
        for offset, name, color in ((-0.2, "baseline student", "C1"), (0.2, "distilled student", "C2")):
            values = [r["at_baseline_threshold"][name][key] for r in rows]
            bars = ax.bar([x + offset for x in xs], values, width=0.4, label=name, color=color)
            ax.bar_label(bars, fontsize=7)
        ax.set_xticks(list(xs), names, fontsize=7)
        ax.set_title(f"{title} at the baseline's threshold\n(1% FPR on validation)", fontsize=9)
        ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 3, 3)
    for offset, name, color in ((-0.3, "teacher", "C0"), (-0.1, "linear reference", "C7"),
                                (0.1, "baseline student", "C1"), (0.3, "distilled student", "C2")):
        ax.bar([x + offset for x in xs], [r[name]["auc"] for r in rows], width=0.2, label=name, color=color)
    ax.set_ylim(0.7, 1.0)
    ax.set_xticks(list(xs), names, fontsize=7)
    ax.set_title("ROC AUC on the test rows", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40%% of the rows and half the epochs")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=Path("runs/quality/cmdline"))
    parser.add_argument("--clean-share", type=float, default=0.10, help="share of training groups the teacher sees")
    parser.add_argument("--teacher-max-length", type=int, default=128)
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--teacher-lr", type=float, default=1e-4)
    parser.add_argument("--ensemble", type=int, default=1)
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "default"])
    parser.add_argument("--student-length", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--policy", default="relabel", choices=["soft", "relabel", "weighted"])
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--relabel-precision", type=float, default=0.8)
    parser.add_argument("--name", default=None, help="results file stem (default cmdline_results[_quick])")
    parser.add_argument("--resume", action="store_true",
                        help="reuse a configuration's kept summary when it was made with the same recipe")
    args = parser.parse_args()
    args.out = args.out.resolve()
    started = time.monotonic()
    data = args.out / (f"data-clean{args.clean_share:g}" + ("-quick" if args.quick else ""))
    stats = write_experiment_shards(SHARED, data, clean_share=args.clean_share, scale=0.4 if args.quick else 1.0)
    recipe = {k: v for k, v in vars(args).items() if k not in ("configs", "out", "name", "resume")}
    rows = []
    for config in args.configs:
        noise_model, rate, noise = CONFIGS[config]
        kept = args.out / ("configs" if args.name is None else f"configs-{args.name}") / config
        if args.resume and (kept / "summary.json").exists():
            summary = json.loads((kept / "summary.json").read_text())
            if summary["recipe"] == recipe:
                print(f"config {config}: kept summary of an earlier run with the same recipe, reused")
                rows.append(summary["row"])
                continue
        spec = parse_spec(job_spec(args, data, noise), f"config {config}")
        run_job(spec)
        run = Path(spec.output)
        shutil.rmtree(kept, ignore_errors=True)
        kept.mkdir(parents=True)
        for item in ("report.json", "report.md", "plots"):
            (shutil.copytree if (run / item).is_dir() else shutil.copy)(run / item, kept / item)
        rows.append(summarise(json.loads((run / "report.json").read_text()), noise_model, rate, run))
        (kept / "summary.json").write_text(json.dumps({"recipe": recipe, "row": rows[-1]}, indent=1))
    seconds = time.monotonic() - started
    goal = goals(rows)
    command = "python benchmarks/quality/cmdline_distill.py " + " ".join(sys.argv[1:])
    name = args.name or ("cmdline_results_quick" if args.quick else "cmdline_results")
    (HERE / f"{name}.json").write_text(json.dumps([{**row, "recipe": recipe} for row in rows], indent=1))
    (HERE / f"{name}_goals.json").write_text(json.dumps({"goals": goal, "seconds": seconds, "data": stats},
                                                        indent=1))
    (HERE / f"{name}.md").write_text(markdown(rows, stats, goal, seconds, command.strip(), recipe))
    bar_chart(rows, HERE / f"{name}.png")
    print((HERE / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
