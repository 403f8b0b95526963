"""Synthetic data: the generative teacher writes pages of new families, the valid and novel ones train an
existing production student further, and a gate refuses the new model if it got worse on real traffic.

prepare -> production -> generate -> filter -> train_student -> evaluate -> export -> report

Rows: the real labelled rows (data.labelled, data.test) are prepared and split as in every workload; their
test split is the *regression set*. Every family gets `per_family` generated pages in the training layouts
and, with synthetic.holdout_layouts, `per_family` more in those layouts, which nothing trains on: for the
held-out families (not in synthetic.train_families) that is the stricter holdout (family and layout never
seen), for the training families a check of new layouts alone. Generation does not depend on which families
train, so one generation serves several training splits. The production model is student.init_from, or,
without one, a student trained here on the real training rows. The new model continues from it on the
accepted pages of the training families (a fifth of them, by id hash, kept for validation), their
counterparts without credential forms (with counterpart_class), plus `replay_rows` real training rows, and
picks its epoch on the real validation split plus those synthetic validation pages.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
from matplotlib.figure import Figure

from smallsec_ray import storage
from smallsec_ray.data import schema
from smallsec_ray.evaluation import ClassMetrics, class_metrics, evaluate_model, pick_threshold
from smallsec_ray.prepare import PreparedData, run_prepare
from smallsec_ray.report import save_plot, write_report
from smallsec_ray.spec import DistillationSpec, JobSpec, SyntheticSpec
from smallsec_ray.stages import Stage, StageContext
from smallsec_ray.students.folder import Lineage
from smallsec_ray.synthetic.checks import check_html, without_credential_forms
from smallsec_ray.synthetic.generate import Family
from smallsec_ray.synthetic.pipeline import (
    ACCEPTED,
    TEMPLATE,
    FamilyCounts,
    FamilyPlan,
    filter_families,
    generate_families,
    generation_figures,
)
from smallsec_ray.synthetic.templates import layouts
from smallsec_ray.training.trainer import TrainedModel, train_student
from smallsec_ray.workloads.common import (
    ExportedModel,
    binary,
    ctx_paths,
    dataset,
    read_rows,
    run_export,
    score_student,
    stage_rows,
    strings,
)

VALIDATION_SHARE = 0.2  # of each training family's accepted pages, by id hash
GATE_METRICS = ("accuracy", "roc_auc_macro", "macro_f1")
GATE_AT = ("argmax", "threshold")  # where accuracy and macro-F1 are taken (synthetic.gate_at)


# ---------------------------------------------------------------- plans


def family_plans(spec: JobSpec) -> list[FamilyPlan]:
    """Every family in the training layouts, and in the held-out layouts when there are any."""
    syn = spec.synthetic
    holdout = [x.template for x in layouts(syn.holdout_layouts)] if syn.holdout_layouts else []
    main = [x.template for x in layouts(syn.layouts)] if syn.layouts else [
        x.template for x in layouts() if x.template not in holdout]
    plans = []
    for f in syn.families:
        family = Family(f.name, f.description, f.label or spec.positive_class)
        plans.append(FamilyPlan(family, main))
        if holdout:
            plans.append(FamilyPlan(family, holdout, part="strict"))
    return plans


def train_families(spec: JobSpec) -> list[str]:
    syn = spec.synthetic
    return list(syn.train_families) if syn.train_families is not None else [f.name for f in syn.families[:-1]]


# ---------------------------------------------------------------- generate, filter


@dataclass
class Generation:
    folder: str  # relative to the run folder: candidates/, then accepted/ and rejected/
    figures: dict[str, dict]  # plan key -> generator identity, sampling parameters, prompts, seconds


def run_generate(ctx: StageContext) -> Generation:
    spec, syn = ctx.spec, ctx.spec.synthetic
    teacher_cfg = {**spec.teacher.model_dump(exclude={"finetune", "ensemble"}), "artifact": spec.artifact,
                   "classes": spec.classes}
    params = {"seed": syn.seed, "temperature": syn.temperature, "max_tokens": syn.max_tokens, "retries": syn.retries}
    figures = generate_families(family_plans(spec), ctx.store_dir, teacher_cfg, syn.per_family, params,
                                spec.labeling.replicas, spec.labeling.cpus_per_replica, spec.labeling.gpus_per_replica,
                                spec.labeling.resources)
    return Generation(ctx.relative(ctx.stage_dir), figures)


@dataclass
class Filtered:
    folder: str  # the generate stage's folder, now with accepted/ and rejected/
    families: list[FamilyCounts]

    @property
    def candidates(self) -> int:
        return sum(c.candidates for c in self.families)

    @property
    def accepted(self) -> int:
        return sum(c.accepted for c in self.families)


def run_filter(ctx: StageContext, generation: Generation) -> Filtered:
    spec, syn = ctx.spec, ctx.spec.synthetic
    seeds = [t for p in syn.seeds for t in storage.read_table(p, columns=[schema.TEXT]).column(schema.TEXT).to_pylist()
             if t] if syn.seeds else []
    counts = filter_families(family_plans(spec), ctx.store(generation.folder), spec.artifact, seeds,
                             syn.min_text_chars, syn.near_duplicate, syn.seed_similarity)
    return Filtered(generation.folder, counts)


def accepted_rows(ctx: StageContext, filtered: Filtered, keys: list[str]) -> pa.Table:
    paths = [ctx.store(f"{filtered.folder}/{ACCEPTED}/{k}.parquet") for k in keys]
    return pa.concat_tables([storage.read_table(p) for p in paths if storage.is_file(p)])


# ---------------------------------------------------------------- production and training


@dataclass
class Production:
    model_dir: str  # student.init_from as given (absolute or relative to the working folder), or the one trained here
    trained_here: bool
    training: TrainedModel | None = None


def run_production(ctx: StageContext, data: PreparedData) -> Production:
    """The production model the new one starts from and is gated against: student.init_from, or, without
    one, a student trained here on the real training rows (so that a demo or an experiment holds it all)."""
    spec = ctx.spec
    if spec.student.init_from:
        return Production(spec.student.init_from, trained_here=False)
    labelled = ctx_paths(ctx, data.shards("labelled"))
    lineage = Lineage(job=spec.name, workload=spec.workload, stage=ctx.stage_dir.name,
                      data={"input_runs": ctx.input_runs})
    trained = train_student(spec.training, spec.student, spec.classes, dataset(labelled, "train", with_probs=False),
                            dataset(labelled, "validation", with_probs=False), ctx.stage_dir, lineage=lineage,
                            name=ctx.stage_dir.name, store_dir=ctx.store_dir)
    trained = replace(trained, model_dir=ctx.relative(trained.model_dir))
    return Production(trained.model_dir, trained_here=True, training=trained)


def production_folder(ctx: StageContext, production: Production) -> Path:
    return ctx.path(production.model_dir) if production.trained_here else Path(production.model_dir)


def _share(row_id: str, seed: int) -> float:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{row_id}".encode(), digest_size=8).digest(), "big") / 2**64


def run_train_student(ctx: StageContext, data: PreparedData, filtered: Filtered,
                      production: Production) -> TrainedModel:
    spec, syn = ctx.spec, ctx.spec.synthetic
    labelled = ctx_paths(ctx, data.shards("labelled"))
    columns = [schema.ID, schema.TEXT, schema.LABEL]
    pages = accepted_rows(ctx, filtered, train_families(spec)).select(columns)
    is_val = np.array([_share(i, syn.seed) < VALIDATION_SHARE for i in strings(pages, schema.ID)], dtype=bool)
    twins = 0
    if syn.counterpart_class:  # a counterpart goes where its page goes: training or validation
        counterpart_rows, source = counterparts(pages, syn.counterpart_class, syn.min_text_chars)
        pages, is_val = pa.concat_tables([pages, counterpart_rows]), np.concatenate([is_val, is_val[source]])
        twins = counterpart_rows.num_rows
    real_train = read_rows(labelled, "train").select(columns)
    order = np.argsort([_share(i, syn.seed) for i in strings(real_train, schema.ID)])
    replay = real_train.take(pa.array(order[:syn.replay_rows])) if syn.replay_rows else real_train.slice(0, 0)
    production_dir = production_folder(ctx, production)
    train, distillation = training_rows(spec, pages.filter(pa.array(~is_val)), replay, production_dir)
    val = pa.concat_tables([pages.filter(pa.array(is_val)), read_rows(labelled, "validation").select(columns)])
    lineage = Lineage(job=spec.name, workload=spec.workload, stage=ctx.stage_dir.name,
                      data={"input_runs": ctx.input_runs, "synthetic_rows": int((~is_val).sum()),
                            "counterpart_rows": twins, "replay_rows": replay.num_rows,
                            "train_families": train_families(spec)})
    student = spec.student.model_copy(update={"init_from": str(production_dir)})
    trained = train_student(syn.training or spec.training, student, spec.classes, ray.data.from_arrow(train),
                            ray.data.from_arrow(val), ctx.stage_dir, distillation=distillation, lineage=lineage,
                            name=ctx.stage_dir.name, store_dir=ctx.store_dir)
    return replace(trained, model_dir=ctx.relative(trained.model_dir))


def counterparts(pages: pa.Table, label: str, min_text_chars: int) -> tuple[pa.Table, np.ndarray]:
    """Each page with its password and payment-card forms taken out, as a row of class `label` (id: the page's
    id + ".counterpart"), where what is left still passes the HTML checks (a body, enough visible text, no
    markers); and the index in `pages` of the page each comes from."""
    ids, texts, source = [], [], []
    for i, (row_id, html) in enumerate(zip(strings(pages, schema.ID), strings(pages, schema.TEXT), strict=True)):
        twin = without_credential_forms(html)
        if check_html(twin, phishing=False, min_text_chars=min_text_chars) is None:
            ids.append(f"{row_id}.counterpart")
            texts.append(twin)
            source.append(i)
    table = pa.table({schema.ID: ids, schema.TEXT: texts, schema.LABEL: [label] * len(ids)}, schema=pages.schema)
    return table, np.array(source, dtype=np.int64)


def training_rows(spec: JobSpec, synthetic: pa.Table, replay: pa.Table,
                  production_dir: Path) -> tuple[pa.Table, DistillationSpec | None]:
    """The synthetic pages and the replayed real rows as the trainer takes them: with a weight column when
    synthetic rows weigh less than real ones; with replay_targets production, the production model's
    probabilities on the replayed rows (the synthetic ones keep their label, as a one-hot distribution) and
    the distillation spec that mixes them with the labels."""
    syn = spec.synthetic
    if syn.row_weight < 1:
        synthetic = synthetic.append_column(schema.WEIGHT, pa.array(np.full(synthetic.num_rows, syn.row_weight,
                                                                             dtype=np.float32)))
        replay = replay.append_column(schema.WEIGHT, pa.array(np.ones(replay.num_rows, dtype=np.float32)))
    if syn.replay_targets == "labels":
        return pa.concat_tables([synthetic, replay]), None
    labels = [spec.classes.index(x) for x in strings(synthetic, schema.LABEL)]
    one_hot = np.eye(len(spec.classes), dtype=np.float32)[labels]
    kept = score_student(production_dir, strings(replay, schema.TEXT))
    probs_type = pa.list_(pa.float32())
    synthetic = synthetic.append_column(schema.PROBS, pa.array(list(one_hot), type=probs_type))
    replay = replay.append_column(schema.PROBS, pa.array(list(kept), type=probs_type))
    return pa.concat_tables([synthetic, replay]), spec.distillation


# ---------------------------------------------------------------- evaluate and gate


@dataclass
class Gate:
    passed: bool
    reasons: list[str]  # one per regression metric that dropped by more than the tolerance
    before: dict[str, float]
    after: dict[str, float]


@dataclass
class Evaluation:
    gate: Gate  # the one that decides: synthetic.gate_at
    families: list[dict]  # per family and part: pages, mean score of production and of the new model
    regression_rows: int
    gates: dict[str, Gate] = field(default_factory=dict)  # argmax and threshold (GATE_AT)
    thresholds: dict[str, float] = field(default_factory=dict)  # production, new: picked on the validation rows


def gate(before: ClassMetrics, after: ClassMetrics, tolerance: float) -> Gate:
    """The new model passes unless accuracy, ROC AUC or macro-F1 on the regression set dropped by more than
    `tolerance`. A metric the regression set cannot give (no rows, or rows of one class only) fails it: an
    unmeasured model is not shipped."""
    missing = [m for m in GATE_METRICS if not before.n or getattr(before, m) is None or getattr(after, m) is None]
    b = {m: float(getattr(before, m) or 0.0) for m in GATE_METRICS}
    a = {m: float(getattr(after, m) or 0.0) for m in GATE_METRICS}
    reasons = [f"{m} cannot be measured on the regression set (it needs test rows of every class: give data.test "
               "or a larger data.split.test)" for m in missing]
    reasons += [f"{m} fell from {b[m]:.4f} to {a[m]:.4f} ({a[m] - b[m]:+.4f}, tolerance {tolerance:g})"
                for m in GATE_METRICS if m not in missing and a[m] < b[m] - tolerance]
    return Gate(not reasons, reasons, b, a)


def run_evaluate(ctx: StageContext, data: PreparedData, filtered: Filtered, production: Production,
                 student: TrainedModel) -> Evaluation:
    spec = ctx.spec
    models = {"production": production_folder(ctx, production), "new": ctx.path(student.model_dir)}
    test = read_rows(ctx_paths(ctx, data.shards("labelled", "test")), "test")
    texts, labels = strings(test, schema.TEXT), strings(test, schema.LABEL)
    positive = spec.classes.index(spec.positive_class)
    thresholds = validation_thresholds(ctx, data, models)
    probs = {name: score_student(folder, texts) for name, folder in models.items()}
    gates = {}
    for at in GATE_AT:
        regression = {name: class_metrics(p, labels, spec.classes,
                                          at=(positive, thresholds[name]) if at == "threshold" else None)
                      for name, p in probs.items()}
        gates[at] = gate(regression["production"], regression["new"], spec.synthetic.tolerance)
    trained_on = set(train_families(spec))
    families = []
    for plan in family_plans(spec):
        rows = accepted_rows(ctx, filtered, [plan.key])
        if rows.num_rows == 0:
            continue
        scores = {name: score_student(folder, strings(rows, schema.TEXT))[:, positive]
                  for name, folder in models.items()}
        families.append({"family": plan.family.name, "holdout": holdout_kind(plan.family.name in trained_on, plan),
                         "pages": rows.num_rows, "templates": sorted(set(strings(rows, TEMPLATE))),
                         **{name: float(s.mean()) for name, s in scores.items()}})
    return Evaluation(gates[spec.synthetic.gate_at], families, test.num_rows, gates, thresholds)


def validation_thresholds(ctx: StageContext, data: PreparedData, models: dict[str, Path]) -> dict[str, float]:
    """Each model's threshold of the positive class, picked on the real validation rows at the largest
    evaluation FPR, as the export picks the one it ships: both models judged at the decision they would ship."""
    spec = ctx.spec
    val = read_rows(ctx_paths(ctx, data.shards("labelled")), "validation")
    is_positive = binary(strings(val, schema.LABEL), spec.positive_class)
    positive = spec.classes.index(spec.positive_class)
    return {name: pick_threshold(score_student(folder, strings(val, schema.TEXT))[:, positive], is_positive,
                                 max(spec.evaluation.fprs))
            for name, folder in models.items()}


HELD_OUT = "held out, training layouts"  # the published holdout: new families, layouts seen in training
STRICT = "held out, layouts held out"  # the stricter one: new families in layouts never trained on


def holdout_kind(trained: bool, plan: FamilyPlan) -> str:
    if trained:
        return "trained on, layouts held out" if plan.part else "trained on"
    return STRICT if plan.part else HELD_OUT


@dataclass
class Shipped:
    exported: ExportedModel | None  # None: the gate refused the new model; production stays the shipped one
    shipped_model: str  # the folder to ship: the export, or the production model


def run_gated_export(ctx: StageContext, student: TrainedModel, data: PreparedData, production: Production,
                     evaluation: Evaluation) -> Shipped:
    if not evaluation.gate.passed:
        return Shipped(None, production.model_dir)
    exported = run_export(ctx, student, data)
    return Shipped(exported, exported.model_dir)


# ---------------------------------------------------------------- report


@dataclass
class SyntheticReport:
    report_json: str
    report_md: str
    summary: str
    gate_passed: bool


def run_report(ctx: StageContext, data: PreparedData, generation: Generation, filtered: Filtered,
               production: Production, student: TrainedModel, evaluation: Evaluation,
               shipped: Shipped) -> SyntheticReport:
    spec = ctx.spec
    test = read_rows(ctx_paths(ctx, data.shards("labelled", "test")), "test")
    val = read_rows(ctx_paths(ctx, data.shards("labelled")), "validation")
    texts, val_texts = strings(test, schema.TEXT), strings(val, schema.TEXT)
    models = {"production": production_folder(ctx, production), "new": ctx.path(student.model_dir)}
    groups = {column: strings(test, column) for column in spec.evaluation.group_by if column in test.column_names}
    reports = [evaluate_model(f"{name} model", score_student(folder, texts), strings(test, schema.LABEL),
                              spec.classes, spec.positive_class, score_student(folder, val_texts),
                              strings(val, schema.LABEL), spec.evaluation.fprs, groups)
               for name, folder in models.items()]
    g = evaluation.gate
    summary = (f"Gate {'passed' if g.passed else 'FAILED'}: "
               + ("the new model is exported." if g.passed else "; ".join(g.reasons) + "; production stays shipped."))
    for kind, words in ((HELD_OUT, "Held-out families"), (STRICT, "in held-out layouts")):
        held = [f for f in evaluation.families if f["holdout"] == kind]
        if held:
            summary += (f" {words}: mean score {np.mean([f['production'] for f in held]):.3f} (production) -> "
                        f"{np.mean([f['new'] for f in held]):.3f} (new).")
    plot = _plot_families(ctx, evaluation.families)
    sections = [f"**{summary}**", _families_section(evaluation.families, plot),
                _gate_section(evaluation, spec.synthetic), _generation_section(filtered, generation)]
    stages = [{"stage": "prepare", **stage_rows(data.rows)},
              {"stage": "filter", "rows_in": filtered.candidates, "rows_out": filtered.accepted,
               "rows_quarantined": filtered.candidates - filtered.accepted}]
    extra = {"gate": g, "gate_at": spec.synthetic.gate_at, "gates": evaluation.gates,
             "thresholds": evaluation.thresholds, "families": evaluation.families,
             "generation": generation_figures(filtered.families),
             "generation_parameters": generation.figures, "shipped_model": shipped.shipped_model,
             "export": shipped.exported,
             "production": production,
             "training": {"best_epoch": student.best_epoch, "epochs": student.epochs}}
    job = {"name": spec.name, "workload": spec.workload, "artifact": spec.artifact, "classes": spec.classes,
           "positive_class": spec.positive_class, "resolved_spec": "spec.resolved.json"}
    json_path, md_path = write_report(ctx.run_dir, job, stages, reports, [], None, extra, sections)
    return SyntheticReport(ctx.relative(json_path), ctx.relative(md_path), summary, g.passed)


def _families_section(families: list[dict], plot: str) -> str:
    lines = ["### Generated families: mean score of the positive class", "",
             "| family | holdout | pages | production | new |", "|---|---|---:|---:|---:|"]
    lines += [f"| {f['family']} | {f['holdout']} | {f['pages']} | {f['production']:.4f} | {f['new']:.4f} |"
              for f in families]
    return "\n".join([*lines, "", f"![families]({plot})"])


def _gate_section(evaluation: Evaluation, syn: SyntheticSpec) -> str:
    """The regression metrics at argmax and at each model's validation threshold; the one that decides first."""
    lines = [f"### Regression set (real test rows): the gate, tolerance {syn.tolerance:g}", "",
             f"It decides at {syn.gate_at} (synthetic.gate_at). Thresholds picked on the validation rows: "
             + ", ".join(f"{name} {t:.4f}" for name, t in evaluation.thresholds.items()) + ".", "",
             "| metric | taken at | production | new | change |", "|---|---|---:|---:|---:|"]
    gates = evaluation.gates or {syn.gate_at: evaluation.gate}
    for at in sorted(gates, key=lambda a: a != syn.gate_at):
        g = gates[at]
        lines += [f"| {m} | {at}{' (decides)' if at == syn.gate_at else ''} | {g.before[m]:.4f} | {g.after[m]:.4f} | "
                  f"{g.after[m] - g.before[m]:+.4f} |" for m in GATE_METRICS]
    return "\n".join(lines)


def _generation_section(filtered: Filtered, generation: Generation) -> str:
    reasons = sorted({r for c in filtered.families for r in c.rejected})
    lines = ["### Generation", "", "| family | candidates | accepted | " + " | ".join(reasons) + " | pages/s |",
             "|---|---:|---:|" + "---:|" * len(reasons) + "---:|"]
    for c in filtered.families:
        lines.append(f"| {c.family} | {c.candidates} | {c.accepted} | "
                     + " | ".join(str(c.rejected.get(r, 0)) for r in reasons) + f" | {c.pages_per_s:.2f} |")
    some = next(iter(generation.figures.values()), {})
    if some:
        lines += ["", f"Generator: `{some.get('generator', {}).get('model')}`, temperature {some.get('temperature')}, "
                  f"max_tokens {some.get('max_tokens')}, retries {some.get('retries')}."]
    return "\n".join(lines)


def _plot_families(ctx: StageContext, families: list[dict]) -> str:
    fig = Figure(figsize=(8, 0.4 * len(families) + 1.5))
    ax = fig.subplots()
    names = [f"{f['family']} ({f['holdout']})" for f in families]
    y = np.arange(len(families))
    ax.barh(y - 0.2, [f["production"] for f in families], height=0.4, label="production")
    ax.barh(y + 0.2, [f["new"] for f in families], height=0.4, label="new")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("mean score of the positive class")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_plot(fig, ctx.run_dir, "families.png")


GENERATION_KEYS = ("artifact", "classes", "positive_class", "teacher.kind", "teacher.model", "teacher.backend",
                   "teacher.dtype", "synthetic.families", "synthetic.layouts",
                   "synthetic.holdout_layouts", "synthetic.per_family", "synthetic.temperature",
                   "synthetic.max_tokens", "synthetic.retries", "synthetic.seed")
FILTER_KEYS = ("synthetic.min_text_chars", "synthetic.near_duplicate", "synthetic.seed_similarity", "synthetic.seeds")

STAGES = [
    Stage("prepare", run_prepare, reads=("classes", "data", "!data.noise"),
          about="read the real shards, quarantine bad rows, split by group"),
    Stage("production", run_production, reads=("classes", "student", "training"), inputs={"data": "prepare"},
          about="the production model: student.init_from, or one trained here on the real rows (Ray Train)"),
    Stage("generate", run_generate, reads=GENERATION_KEYS,
          about="the generative teacher writes each family's pages into templates (Ray Data + vLLM)"),
    Stage("filter", run_filter, reads=("artifact", *FILTER_KEYS), inputs={"generation": "generate"},
          about="check each page for its artifact type, drop duplicates and copies of seeds"),
    Stage("train_student", run_train_student,
          reads=("classes", "student", "training", "synthetic.training", "synthetic.train_families",
                 "synthetic.replay_rows", "synthetic.replay_targets", "synthetic.row_weight", "synthetic.seed",
                 "synthetic.counterpart_class", "synthetic.min_text_chars",
                 "distillation.alpha", "distillation.temperature"),
          inputs={"data": "prepare", "filtered": "filter", "production": "production"},
          about="continue the production student on the training families' pages plus replayed real rows"),
    Stage("evaluate", run_evaluate, reads=("positive_class", "synthetic.tolerance", "synthetic.gate_at",
                                           "evaluation.fprs"),
          inputs={"data": "prepare", "filtered": "filter", "production": "production", "student": "train_student"},
          about="held-out families and the regression set, production against new; the gate"),
    Stage("export", run_gated_export, reads=("positive_class", "evaluation.fprs", "export"),
          inputs={"student": "train_student", "data": "prepare", "production": "production",
                  "evaluation": "evaluate"},
          about="ONNX export of the new model if the gate passed; otherwise production stays shipped"),
    Stage("report", run_report, reads=("evaluation",),
          inputs={"data": "prepare", "generation": "generate", "filtered": "filter", "production": "production",
                  "student": "train_student", "evaluation": "evaluate", "shipped": "export"},
          about="tables per family, the gate, generation figures, plots"),
]
