"""The noisy-label experiment on real command lines: does a student distilled from a teacher beat the same
student trained on the noisy labels alone, by more than one run differs from the next?

The recipe is jobs/experiments/cmdline-distill.yaml; each configuration below is a few overrides of it (its
noise model), and each repeat a new draw: the split of ../shared/data/cmdline into test, clean validation, clean
training and noisy groups (cmdline_data.py, seed s), the noise (data.noise.seed s) and the training seeds of the
teacher and both students (s). Within a repeat the first configuration runs every stage and the others reuse
its prepare, teacher and labels (reuse_from): each configuration is a run folder of its own, with its own
models and thresholds, under runs/quality/cmdline/seed-S/CONFIG.

Noise models on the noisy set (its labels are true; data.noise spoils them where they are read):
  none; rows (uniform: malicious -> benign at n, benign -> malicious at n/10) at n = 0.15, 0.30;
  groups (whole groups: n of the malicious rows, n/3 of the benign ones) at n = 0.15, 0.30;
  rules (the labels of signature_rules.py, a documented set of regex detections).
A verdict compares the distilled student with the baseline of the same repeat (paired): "better" only where
the difference favours the distilled student in every repeat and its mean is larger than its spread
(results.Verdict). The students also score the malicious test rows with every letter in random case (seeded):
the uncased teacher cannot see case, the students read bytes.

    python benchmarks/quality/cmdline_distill.py                  # 6 noise models x 3 repeats, ~3 h on 2 cores
    python benchmarks/quality/cmdline_distill.py --smoke          # tiny rows and models: the same code, ~4 min
    python benchmarks/quality/cmdline_distill.py --configs groups-0.3 --repeats 1 --set distillation.alpha=0.3 \\
        --name cmdline_lever_alpha0.3 --out runs/quality/cmdline-levers       # a lever, on its own run folders
Writes benchmarks/quality/cmdline_distill.{json,md,png} (--name: another stem); rerun after a stop, it skips
every stage that is complete.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from cmdline_data import write_experiment_shards  # noqa: E402
from results import ROOT, SHARED, Results, Spread, Verdict, jsonable, table, tiny_teacher  # noqa: E402

from smallsec_ray.data import schema  # noqa: E402
from smallsec_ray.job import RunResults, run_job  # noqa: E402
from smallsec_ray.spec import load_spec, parse_override  # noqa: E402
from smallsec_ray.workloads.common import read_rows, score_student, strings  # noqa: E402

SPEC = ROOT / "jobs" / "experiments" / "cmdline-distill.yaml"
CONFIGS: dict[str, tuple[str, dict | None]] = {  # name -> (what it is, data.noise without its seed)
    "none": ("no noise", None),
    "rows-0.15": ("uniform 0.15", {"mode": "rows", "flip_rates": {"malicious": 0.15, "benign": 0.015}}),
    "rows-0.3": ("uniform 0.3", {"mode": "rows", "flip_rates": {"malicious": 0.30, "benign": 0.03}}),
    "groups-0.15": ("groups 0.15", {"mode": "groups", "flip_rates": {"malicious": 0.15, "benign": 0.05}}),
    "groups-0.3": ("groups 0.3", {"mode": "groups", "flip_rates": {"malicious": 0.30, "benign": 0.10}}),
    "rules": ("rules", {"mode": "column", "column": "rule_label"}),
}
MODELS = ("teacher", "linear reference", "baseline student", "distilled student")
STUDENTS = ("baseline student", "distilled student")
AT = "val_fpr_0.01"  # the operating point the tables read: 1% FPR on the clean validation rows
SMOKE = {  # tiny everything, the same stages and code (the teacher's folder is added in main)
    "teacher.max_length": 32, "teacher.finetune.epochs": 1, "teacher.finetune.batch_size": 16,
    "student.preset": "tiny", "student.max_length": 64, "training.epochs": 1, "training.batch_size": 64,
    "evaluation.audit_top_k": 20,
}


def overrides_for(config: str, seed: int, data: Path, run: Path, first: Path | None) -> dict:
    """The overrides of the recipe that make one configuration of one repeat."""
    _, noise = CONFIGS[config]
    return {
        "data.labelled": [str(data / "labelled")], "data.noisy": [str(data / "noisy")],
        "data.test": [str(data / "test")],
        "data.noise": None if noise is None else {**noise, "seed": seed},
        "teacher.finetune.seed": seed, "training.seed": seed,
        "output": str(run), "reuse_from": [] if first is None else [str(first)],
    }


def summarise(results: RunResults, config: str, seed: int) -> dict:
    """One configuration of one repeat: the figures the tables read, from the run's typed results."""
    report, versus = results["evaluate"].models, results["evaluate"].versus
    row: dict = {"config": config, "seed": seed, "run": results.output,
                 "meets_target": results["evaluate"].meets_target}
    for name in MODELS:
        m = report[name]
        at = m.overall.at_threshold[AT]
        row[name] = {"auc": m.overall.roc_auc, "tpr": at.tpr, "fpr_on_test": at.fpr, "tp": at.tp, "fp": at.fp,
                     "threshold_rests_on": m.threshold_support[AT],
                     "oracle_tpr": m.overall.oracle_tpr_at_fpr["0.01"]}
    for name in STUDENTS:  # at equal TPR: the baseline at its threshold, the distilled student at as many TPs
        row[name]["fp_at_equal_tpr"] = versus.at_equal_tpr[name].fp
    policy = results["train_student"].label_policy
    row["relabelled"] = sum(policy.changed.values()) if policy and policy.changed else 0
    audit = results["evaluate"].audit
    row["audit"] = {"top_k": audit.top_k, "precision": audit.precision, "recall": audit.recall} if audit else None
    row["case_randomised"] = case_randomised(results)
    return row


def case_randomised(results: RunResults) -> dict:
    """Detections of the malicious test rows at each student's 1%-FPR validation threshold, as they are and with
    every letter in random case (seed 0): the students read bytes and were never shown random case."""
    labels = results["label"]
    test = read_rows([results.location(s) for s in labels.shards("labelled", "test")], "test")
    texts = [t for t, label in zip(strings(test, schema.TEXT), strings(test, schema.LABEL), strict=True)
             if label == results.spec.positive_class]
    rng = random.Random(0)
    shuffled = ["".join(c.upper() if rng.random() < 0.5 else c.lower() for c in t) for t in texts]
    out = {}
    for name, stage in (("baseline student", "train_baseline"), ("distilled student", "train_student")):
        folder = Path(results.location(results[stage].model_dir))
        threshold = results["evaluate"].models[name].thresholds[AT]
        positive = results.spec.classes.index(results.spec.positive_class)
        before = score_student(folder, texts)[:, positive]
        after = score_student(folder, shuffled)[:, positive]
        out[name] = {"detected": int((before >= threshold).sum()), "detected_random_case": int((after >= threshold)
                                                                                               .sum()),
                     "rows": len(texts), "mean_abs_change": float(abs(after - before).mean()) if texts else 0.0}
    return out


def aggregate(rows: list[dict]) -> dict:
    """Per configuration: every model's figures over the repeats, and the paired verdicts distilled - baseline."""
    out = {}
    for config in dict.fromkeys(r["config"] for r in rows):
        mine = sorted((r for r in rows if r["config"] == config), key=lambda r: r["seed"])
        models = {name: {key: Spread.of([r[name][key] for r in mine]) for key in ("auc", "tpr", "fp")}
                  for name in MODELS}
        for name in STUDENTS:
            models[name]["fp_at_equal_tpr"] = Spread.of([r[name]["fp_at_equal_tpr"] for r in mine])
        base, dist = ([r[name] for r in mine] for name in STUDENTS)
        verdicts = {
            "auc": Verdict.of([d["auc"] for d in dist], [b["auc"] for b in base]),
            "tpr": Verdict.of([d["tpr"] for d in dist], [b["tpr"] for b in base]),
            "fp_at_equal_tpr": Verdict.of([d["fp_at_equal_tpr"] for d in dist], [b["fp_at_equal_tpr"] for b in base],
                                          higher_is_better=False),
        }
        out[config] = {"label": CONFIGS[config][0], "seeds": [r["seed"] for r in mine], "models": models,
                       "verdicts": verdicts}
    return out


def markdown(results: dict) -> str:
    """The experiment's tables, from a results file's figures (benchmarks/tables.py calls this too)."""
    configs = results["configs"]
    done, asked = results.get("repeats_done"), results.get("repeats_asked")
    partial = [f"**{done} of the {asked} repeats asked for**: the run stopped before the rest (rerun the command: "
               "it skips what is complete).", ""] if done and asked and done < asked else []
    lines = partial + ["Per model, over the repeats: mean [min, max]. TPR and FP at the threshold picked for 1% FPR "
                       "on the clean validation rows; students' FP at equal TPR: the baseline at that threshold, the "
                       "distilled student at the threshold that detects as many test positives.", ""]
    rows = []
    for c in configs.values():
        for name in MODELS:
            m = c["models"][name]
            equal = _spread(m["fp_at_equal_tpr"], 0) if "fp_at_equal_tpr" in m else "-"
            rows.append([c["label"], name, _spread(m["auc"]), _spread(m["tpr"]), _spread(m["fp"], 0), equal])
    lines.append(table(["noise", "model", "AUC", "TPR@1% FPR", "FP at that threshold", "FP at equal TPR"], rows,
                       right=(2, 3, 4, 5)))
    lines += ["Distilled - baseline, paired by repeat (seeds " + ", ".join(str(s) for s in _seeds(configs)) + "): "
              "\"better\" only where every repeat favours the distilled student and the mean is larger than the "
              "spread (max - min) of the differences.", ""]
    rows = []
    for c in configs.values():
        v = c["verdicts"]
        rows.append([c["label"], _verdict(v["auc"], 3), _verdict(v["tpr"], 3), _verdict(v["fp_at_equal_tpr"], 1)])
    lines.append(table(["noise", "AUC", "TPR@1% FPR", "FP at equal TPR"], rows))
    return "\n".join(lines)


def _spread(s: dict, digits: int = 3) -> str:
    return Spread(**s).text(digits)


def _verdict(v: dict, digits: int) -> str:
    diffs = Spread(**v["differences"])
    values = ", ".join(f"{x:+.{digits}f}" for x in diffs.values)
    return f"**{v['outcome']}**: {diffs.mean:+.{digits}f} ({values})"


def _seeds(configs: dict) -> list[int]:
    return sorted({s for c in configs.values() for s in c["seeds"]})


def figure(results: dict):  # noqa: ANN201 - a matplotlib Figure
    from matplotlib.figure import Figure

    configs = list(results["configs"].values())
    fig = Figure(figsize=(11, 4))
    xs = range(len(configs))
    names = [c["label"].replace(" ", "\n") for c in configs]
    ax = fig.add_subplot(1, 2, 1)
    for offset, name, color in ((-0.3, "teacher", "C0"), (-0.1, "linear reference", "C7"),
                                (0.1, "baseline student", "C1"), (0.3, "distilled student", "C2")):
        spreads = [Spread(**c["models"][name]["auc"]) for c in configs]
        ax.bar([x + offset for x in xs], [s.mean for s in spreads], width=0.2, label=name, color=color,
               yerr=[[s.mean - s.min for s in spreads], [s.max - s.mean for s in spreads]], capsize=2)
    ax.set_ylim(0.7, 1.0)
    ax.set_xticks(list(xs), names, fontsize=7)
    ax.set_title("ROC AUC on the test rows (mean, min-max over repeats)", fontsize=9)
    ax.legend(fontsize=6)
    ax = fig.add_subplot(1, 2, 2)
    for offset, name, color in ((-0.2, "baseline student", "C1"), (0.2, "distilled student", "C2")):
        spreads = [Spread(**c["models"][name]["fp_at_equal_tpr"]) for c in configs]
        ax.bar([x + offset for x in xs], [s.mean for s in spreads], width=0.4, label=name, color=color,
               yerr=[[s.mean - s.min for s in spreads], [s.max - s.mean for s in spreads]], capsize=2)
    ax.set_xticks(list(xs), names, fontsize=7)
    ax.set_title("False positives at equal TPR (baseline's threshold for 1% FPR)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=3, help="draws of split, noise and training seeds")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--clean-share", type=float, default=0.10, help="share of training groups the teacher sees")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the recipe in every configuration (a lever)")
    parser.add_argument("--out", type=Path, default=Path("runs/quality/cmdline"))
    parser.add_argument("--name", default="cmdline_distill", help="results file stem")
    parser.add_argument("--smoke", action="store_true", help="tiny rows and models, two configurations, one "
                        "repeat: checks that the recipe runs (results go to a temporary folder)")
    args = parser.parse_args()
    out = Results(args.name, folder=HERE, smoke=args.smoke)
    base = (out.folder / "runs" if args.smoke else args.out).resolve()
    extra = dict(parse_override(text) for text in args.set)
    configs, repeats, scale = args.configs, args.repeats, 1.0
    if args.smoke:
        configs, repeats, scale = ["groups-0.3", "rules"], 1, 0.04
        extra = {**SMOKE, "teacher.model": str(tiny_teacher(base / "tiny-teacher", ["benign", "malicious"])),
                 **extra}
    rows, data_stats = [], {}
    for seed in range(args.first_seed, args.first_seed + repeats):
        data = base / f"data-seed{seed}"
        data_stats[seed] = write_experiment_shards(SHARED, data, clean_share=args.clean_share, scale=scale,
                                                   split_seed=seed)
        first = None
        for config in configs:
            run = base / f"seed-{seed}" / config
            spec = load_spec(SPEC, {**overrides_for(config, seed, data, run, first), **extra})
            print(f"== {config}, seed {seed}: {run}", flush=True)
            rows.append(summarise(run_job(spec), config, seed))
            first = first or run
        # After every repeat, the results so far: a stopped run leaves the repeats it finished (and a rerun
        # skips their stages).
        results = {"recipe": str(SPEC.relative_to(ROOT)), "overrides": extra, "clean_share": args.clean_share,
                   "repeats_done": seed - args.first_seed + 1, "repeats_asked": repeats,
                   "data": data_stats, "runs": rows, "configs": aggregate(rows)}
        print(markdown(jsonable(results)))
        path = out.write(results, markdown=markdown(jsonable(results)), figure=figure(jsonable(results)))
        print(f"results ({seed - args.first_seed + 1} of {repeats} repeats): {path}", flush=True)


if __name__ == "__main__":
    main()
