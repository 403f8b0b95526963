"""Knowledge distillation: a teacher fine-tuned on clean labels relabels a large noisy set with soft
labels; the student learns from both and is compared with a student trained on the noisy labels alone.

prepare -> finetune_teacher -> label -> train_student -> export -> train_baseline -> evaluate

Rows: the teacher learns from the labelled part's train split and picks its epoch on the labelled
validation split. Both students train on the train split of the labelled and noisy parts (same rows,
same budget); the distilled one also sees the teacher's probabilities. Everything is evaluated on the
same test rows (the labelled part's test split plus the test part).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from smallsec_ray.audit import audit_shards
from smallsec_ray.data import schema
from smallsec_ray.data.noise import apply_noise
from smallsec_ray.evaluation import AuditSummary, Comparison, ModelMetrics, compare_at_threshold, evaluate_model
from smallsec_ray.prepare import PreparedData, run_prepare
from smallsec_ray.reference import fit_linear_reference
from smallsec_ray.report import write_report
from smallsec_ray.stages import Stage, StageContext
from smallsec_ray.training.trainer import TrainedModel
from smallsec_ray.workloads.common import (
    SCORING_KEYS,
    STUDENT_KEYS,
    TEACHER_KEYS,
    ExportedModel,
    TeacherLabels,
    Teachers,
    ctx_paths,
    label_parts,
    noise_plan,
    probs_of,
    read_rows,
    run_export,
    run_finetune_teacher,
    score_student,
    stage_rows,
    strings,
    train_on,
)

SCORED_PARTS = ("labelled", "noisy", "test")  # the teacher scores these; the students learn from the first two
TRAIN_PARTS = ("labelled", "noisy")


def run_label(ctx: StageContext, data: PreparedData, teachers: Teachers) -> TeacherLabels:
    return label_parts(ctx, data, teachers, SCORED_PARTS)


def run_train_student(ctx: StageContext, labels: TeacherLabels) -> TrainedModel:
    clean, noisy = (ctx_paths(ctx, labels.shards(part)) for part in TRAIN_PARTS)
    return train_on(ctx, clean, noisy, clean, distilled=True, teacher=labels.teacher)


def run_train_baseline(ctx: StageContext, data: PreparedData) -> TrainedModel:
    # Same rows, model and budget as the student; only the given (noisy) labels.
    clean, noisy = (ctx_paths(ctx, data.shards(part)) for part in TRAIN_PARTS)
    return train_on(ctx, clean, noisy, clean, distilled=False)


@dataclass
class DistillReport:
    report_json: str
    report_md: str
    comparison: str  # one sentence: did the distilled student beat the baseline
    meets_target: bool
    test_rows: int
    validation_rows: int
    models: dict[str, ModelMetrics] = field(default_factory=dict)  # by name: teacher, baseline student, ...
    versus: Comparison | None = None  # the distilled student against the baseline, at the largest FPR
    audit: AuditSummary | None = None  # the label audit's counts (its rows are in report.json)


def run_evaluate(ctx: StageContext, data: PreparedData, teachers: Teachers, labels: TeacherLabels,
                 student: TrainedModel, baseline: TrainedModel, export: ExportedModel) -> DistillReport:
    spec = ctx.spec
    test = read_rows(ctx_paths(ctx, labels.shards("labelled", "test")), "test")
    val = read_rows(ctx_paths(ctx, labels.shards("labelled")), "validation")
    groups = {column: strings(test, column) for column in spec.evaluation.group_by if column in test.column_names}
    texts, val_texts = strings(test, schema.TEXT), strings(val, schema.TEXT)
    probs = {"teacher": (probs_of(test), probs_of(val))}
    extra: dict = {}
    if spec.evaluation.linear_reference:
        # Same rows and labels as the baseline student.
        clean, noisy = (ctx_paths(ctx, data.shards(part)) for part in TRAIN_PARTS)
        plan = noise_plan(spec, noisy)
        columns = [schema.ID, schema.TEXT, schema.LABEL, schema.GROUP]
        parts = [read_rows(clean, "train").select(columns)]
        if noisy:
            noisy_rows = read_rows(noisy, "train")
            parts.append((noisy_rows if plan is None else apply_noise(noisy_rows, plan)).select(columns))
        rows = pa.concat_tables(parts)
        reference, fit = fit_linear_reference(strings(rows, schema.TEXT), strings(rows, schema.LABEL),
                                              strings(rows, schema.ID), val_texts, strings(val, schema.LABEL),
                                              spec.classes, spec.positive_class, spec.evaluation.reference_max_rows)
        probs["linear reference"] = (reference.predict_proba(texts), reference.predict_proba(val_texts))
        extra["linear_reference"] = fit
    for name, model in (("baseline student", baseline), ("distilled student", student)):
        folder = ctx.path(model.model_dir)
        probs[name] = (score_student(folder, texts), score_student(folder, val_texts))
    reports = {name: evaluate_model(name, p, strings(test, schema.LABEL), spec.classes, spec.positive_class, vp,
                                    strings(val, schema.LABEL), spec.evaluation.fprs, groups)
               for name, (p, vp) in probs.items()}
    comparison = compare_at_threshold(reports["baseline student"], reports["distilled student"],
                                      fpr=max(spec.evaluation.fprs))

    # The label audit: noisy rows whose given label the teacher confidently disputes (a top-k per shard, in
    # tasks; the driver merges the lists).
    noisy_paths = ctx_paths(ctx, labels.shards("noisy"))
    audit = audit_shards(noisy_paths, spec.classes, spec.evaluation.audit_top_k, noise_plan(spec, noisy_paths))

    stages = [{"stage": "prepare", **stage_rows(data.rows)}, {"stage": "label", **stage_rows(labels.rows)}]
    extra |= {"teacher": labels.teacher, "export": export,
             "label_policy": student.label_policy,
             "training": {name: {"best_epoch": t.best_epoch, "samples_per_s": t.samples_per_s, "epochs": t.epochs}
                          for name, t in [*((f"finetune_teacher[{i}]", m.training)
                                            for i, m in enumerate(teachers.members)),
                                          ("train_student", student), ("train_baseline", baseline)]
                          if t is not None}}
    job = {"name": spec.name, "workload": spec.workload, "artifact": spec.artifact, "classes": spec.classes,
           "positive_class": spec.positive_class, "resolved_spec": "spec.resolved.json"}
    json_path, md_path = write_report(ctx.run_dir, job, stages, list(reports.values()), [comparison], audit, extra)
    return DistillReport(report_json=ctx.relative(json_path), report_md=ctx.relative(md_path),
                         comparison=comparison.sentence, meets_target=comparison.meets_target,
                         test_rows=test.num_rows, validation_rows=val.num_rows,
                         models={name: r.metrics() for name, r in reports.items()}, versus=comparison,
                         audit=AuditSummary.of(audit) if audit is not None else None)


STAGES = [
    Stage("prepare", run_prepare, reads=("classes", "data", "!data.noise"),
          about="read shards, quarantine bad rows, split by group"),
    Stage("finetune_teacher", run_finetune_teacher, reads=TEACHER_KEYS, inputs={"data": "prepare"},
          about="fine-tune the teacher on the clean labelled rows (Ray Train)"),
    Stage("label", run_label, reads=SCORING_KEYS, inputs={"data": "prepare", "teachers": "finetune_teacher"},
          about="the teacher scores every shard with class probabilities (Ray Data + vLLM)"),
    Stage("train_student", run_train_student, reads=(*STUDENT_KEYS, "distillation"), inputs={"labels": "label"},
          about="train the student on the given labels and the teacher's probabilities (Ray Train)"),
    Stage("export", run_export, reads=("positive_class", "evaluation.fprs", "export"),
          inputs={"model": "train_student", "data": "prepare"},
          about="ONNX export of the student with its threshold, parity check, throughput"),
    Stage("train_baseline", run_train_baseline, reads=STUDENT_KEYS, inputs={"data": "prepare"},
          about="train the same student on the given (noisy) labels alone, same rows and budget"),
    Stage("evaluate", run_evaluate, reads=("positive_class", "evaluation", "data.noise"),
          inputs={"data": "prepare", "teachers": "finetune_teacher", "labels": "label", "student": "train_student",
                  "baseline": "train_baseline", "export": "export"},
          about="teacher, baseline and student on the same test rows; label audit; report"),
]
