"""The noisy-label experiment on real command lines: does a student distilled from a teacher beat the
same student trained on the noisy labels alone?

Data: ../shared/data/cmdline (see cmdline_data.py for every policy). A clean "analyst-labelled" 10% of
the training groups fine-tunes the MiniLM teacher; the other 90% get class-conditional label noise
(malicious -> benign at rate n, benign -> malicious at n/10), swept over n = 0, 0.15, 0.30. The teacher
is fine-tuned once (at n = 0) and reused: its rows carry no noise, so it is the same teacher at every n.

Run (about 25 minutes on 2 cores):
    .venv/bin/python benchmarks/quality/cmdline_distill.py
    .venv/bin/python benchmarks/quality/cmdline_distill.py --quick      # smaller slice, ~10 minutes
Writes runs/quality/cmdline/ (one job per noise level) and benchmarks/quality/cmdline_results.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cmdline_data import write_experiment_shards  # noqa: E402

from smallsec_ray.job import run_job  # noqa: E402
from smallsec_ray.spec import parse_spec  # noqa: E402

SHARED = HERE.parents[2] / "shared" / "data"


def job_spec(data: Path, out: Path, noise: float, teacher: str | None, quick: bool) -> dict:
    return {
        "name": f"cmdline-distill-noise-{noise:g}",
        "workload": "distill",
        "artifact": "cmdline",
        "data": {
            "labelled": [str(data / "labelled")], "noisy": [str(data / "noisy")], "test": [str(data / "test")],
            "split": {"validation": 0.15, "test": 0.0, "seed": 0},
            "noise": {"flip_rates": {"malicious": noise, "benign": noise / 10}, "seed": 0},
        },
        "teacher": {"model": teacher or "bundled:all-minilm-l6-v2", "max_length": 64,
                    "finetune": {"enabled": teacher is None, "epochs": 3, "batch_size": 32, "learning_rate": 1e-4}},
        "labeling": {"replicas": 1, "cpus_per_replica": 1.0, "batch_size": 64},
        "student": {"model": "char_cnn", "preset": "small"},
        "training": {"epochs": 4 if quick else 8, "batch_size": 128, "learning_rate": 2e-3,
                     "early_stopping_patience": 3,
                     "scaling": {"strategy": "deepspeed", "zero_stage": 1, "workers": 2, "cpus_per_worker": 0.5}},
        "distillation": {"alpha": 0.3, "temperature": 2.0},
        "evaluation": {"fprs": [0.001, 0.01], "group_by": ["source", "platform"], "audit_top_k": 200},
        "resources": {"num_cpus": 4},
        "output": str(out / f"noise-{noise:g}"),
    }


def summarise(report: dict, noise: float) -> dict:
    models = {m["name"]: m["overall"] for m in report["models"]}
    comp = report["comparisons"][0]
    row = {"noise": noise, "comparison": comp["sentence"], "meets_target": comp["meets_target"]}
    for name, m in models.items():
        row[name] = {"auc": m["roc_auc"], "macro_f1": m["macro_f1"],
                     "tpr_at_fpr_0.001": m["at_threshold"]["val_fpr_0.001"]["tpr"],
                     "tpr_at_fpr_0.01": m["at_threshold"]["val_fpr_0.01"]["tpr"],
                     "fp_at_fpr_0.01": m["at_threshold"]["val_fpr_0.01"]["fp"],
                     "tp_at_fpr_0.01": m["at_threshold"]["val_fpr_0.01"]["tp"]}
    row["at_baseline_threshold"] = {k: {"tp": v["tp"], "fp": v["fp"]} for k, v in comp["at_baseline_threshold"].items()}
    row["at_equal_tpr"] = {k: {"tp": v["tp"], "fp": v["fp"]} for k, v in comp["at_equal_tpr"].items()}
    row["fp_change_at_equal_tpr"] = comp["fp_change_at_equal_tpr"]
    row["tpr_change_points_at_fpr_0.01"] = comp["tpr_change_points"]
    audit = report["audit"] or {}
    row["audit"] = {k: audit.get(k) for k in ("top_k", "n_wrong_labels", "precision", "recall")}
    row["per_source"] = {name: {src: g["roc_auc"] for src, g in m_groups.get("source", {}).items()}
                         for name, m_groups in ((m["name"], m["groups"]) for m in report["models"])}
    return row


def markdown(rows: list[dict], stats: dict, seconds: float, command: str) -> str:
    lines = [f"Command: `{command}`  ", f"Machine: {platform.node()} ({platform.machine()}, 2 cores), "
             f"date {date.today()}, stage time {seconds / 60:.1f} min (sum of the stages' own seconds).  ",
             f"Data: {json.dumps(stats)}", "",
             "| noise | model | AUC | macro-F1 | TPR@0.1% FPR | TPR@1% FPR | TP / FP @1% FPR (val thr.) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        for name in ("teacher", "baseline student", "distilled student"):
            m = r[name]
            lines.append(f"| {r['noise']:g} | {name} | {m['auc']:.4f} | {m['macro_f1']:.4f} | "
                         f"{m['tpr_at_fpr_0.001']:.3f} | {m['tpr_at_fpr_0.01']:.3f} | "
                         f"{m['tp_at_fpr_0.01']} / {m['fp_at_fpr_0.01']} |")
    lines += ["", "| noise | TP/FP at baseline's threshold (baseline -> distilled) | FP at equal TPR | "
              "TPR@1% FPR change | audit precision / recall @k | target met |", "|---|---|---|---:|---|---|"]
    for r in rows:
        b, d = r["at_baseline_threshold"]["baseline student"], r["at_baseline_threshold"]["distilled student"]
        eb, ed = r["at_equal_tpr"]["baseline student"], r["at_equal_tpr"]["distilled student"]
        a = r["audit"]
        audit = (f"{a['precision']:.2f} / {a['recall']:.2f} @{a['top_k']}" if a.get("recall") is not None
                 else f"n/a (no wrong labels; {a.get('precision', 0):.2f} of the top {a['top_k']} are false alarms)")
        lines.append(f"| {r['noise']:g} | {b['tp']}/{b['fp']} -> {d['tp']}/{d['fp']} | {eb['fp']} -> {ed['fp']} | "
                     f"{r['tpr_change_points_at_fpr_0.01']:+.1f} pts | {audit} | {r['meets_target']} |")
    lines += ["", *[f"* noise {r['noise']:g}: {r['comparison']}" for r in rows]]
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4))
    for ax, key, title in ((fig.add_subplot(1, 2, 1), "tp", "True positives"),
                           (fig.add_subplot(1, 2, 2), "fp", "False positives")):
        xs = range(len(rows))
        for offset, name, color in ((-0.2, "baseline student", "C1"), (0.2, "distilled student", "C2")):
            values = [r["at_baseline_threshold"][name][key] for r in rows]
            bars = ax.bar([x + offset for x in xs], values, width=0.4, label=name, color=color)
            ax.bar_label(bars, fontsize=8)
        ax.set_xticks(list(xs), [f"noise {r['noise']:.0%}" for r in rows])
        ax.set_title(f"{title} at the baseline's threshold (1% FPR on validation)", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller slice and fewer epochs")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.15, 0.30])
    parser.add_argument("--out", default="runs/quality/cmdline")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    stats = write_experiment_shards(SHARED, out / "data", scale=0.4 if args.quick else 1.0)
    rows, teacher = [], None
    for noise in sorted(args.noise):
        spec = parse_spec(job_spec(out / "data", out, noise, teacher, args.quick), f"noise {noise:g}")
        run_job(spec)
        run_dir = Path(spec.output)
        if teacher is None:
            teacher = str(run_dir / json.loads((run_dir / "finetune_teacher" / "manifest.json").read_text())
                          ["result"]["model"])
        rows.append(summarise(json.loads((run_dir / "report.json").read_text()), noise))
    # Stage seconds from the manifests: the same figure whether the stages ran now or in an earlier call.
    seconds = sum(json.loads(m.read_text())["seconds"] for m in out.glob("noise-*/*/manifest.json"))
    command = "python benchmarks/quality/cmdline_distill.py" + (" --quick" if args.quick else "")
    name = "cmdline_results_quick" if args.quick else "cmdline_results"
    (HERE / f"{name}.json").write_text(json.dumps(rows, indent=1))
    (HERE / f"{name}.md").write_text(markdown(rows, stats, seconds, command))
    bar_chart(rows, HERE / f"{name}.png")
    print((HERE / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
