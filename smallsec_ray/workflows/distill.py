"""Knowledge distillation: a teacher fine-tuned on clean labels relabels a large noisy set with soft
labels; the student learns from both and is compared with a student trained on the noisy labels alone.

prepare -> finetune_teacher -> label -> train_student -> train_baseline -> export -> evaluate

Rows: the teacher learns from the labelled part's train split and picks its epoch on the labelled
validation split. Both students train on the train split of the labelled and noisy parts (same rows,
same budget); the distilled one also sees the teacher's probabilities. Everything is evaluated on the
same test rows (the labelled part's test split plus the test part).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch
from ray.data.expressions import col

from smallsec_ray.data import schema
from smallsec_ray.evaluation import compare_at_threshold, evaluate_model, label_audit, pick_threshold
from smallsec_ray.export import OnnxScorer, export_onnx
from smallsec_ray.labeling import label_shards
from smallsec_ray.prepare import prepared_paths, run_prepare
from smallsec_ray.report import write_report
from smallsec_ray.stages import Stage, StageContext, StageOutput
from smallsec_ray.teachers.bundled import resolve_model
from smallsec_ray.teachers.finetune import finetune_teacher
from smallsec_ray.training.trainer import METRICS_FILE, load_student, train_student

LABELLED_PARTS = ("labelled", "noisy", "test")  # parts the teacher labels
TRAIN_PARTS = ("labelled", "noisy")
TRAIN_COLUMNS = [schema.ID, schema.TEXT, schema.LABEL, schema.SPLIT, schema.PROBS]


def run_finetune_teacher(ctx: StageContext) -> StageOutput:
    spec, teacher = ctx.spec, ctx.spec.teacher
    if teacher.kind != "classifier" or not teacher.finetune.enabled:
        return StageOutput(outputs={"model": str(resolve_model(teacher.model)), "finetuned": False})
    paths = prepared_paths(ctx, "labelled")
    train, val = (_dataset(paths, split) for split in ("train", "validation"))
    folder = finetune_teacher(resolve_model(teacher.model), spec.classes, train, val, teacher.finetune,
                              spec.training, teacher.max_length, ctx.stage_dir)
    metrics = json.loads((ctx.stage_dir / METRICS_FILE).read_text())
    return StageOutput(outputs={"model": str(folder.relative_to(ctx.run_dir)), "finetuned": True,
                                "epochs": metrics["metrics"], "best_epoch": metrics["best_epoch"],
                                "samples_per_s": round(metrics["samples_per_s"], 1)})


def run_label(ctx: StageContext) -> StageOutput:
    spec = ctx.spec
    teacher_cfg = {**spec.teacher.model_dump(exclude={"finetune"}), "model": _teacher_model(ctx),
                   "artifact": spec.artifact}
    part_of = {path: part for part in LABELLED_PARTS for path in prepared_paths(ctx, part)}
    # One pipeline over every part's shards: the replicas start once.
    result = label_shards(list(part_of), str(ctx.stage_dir), teacher_cfg, spec.classes, spec.labeling.replicas,
                          spec.labeling.cpus_per_replica, spec.labeling.gpus_per_replica, spec.labeling.batch_size,
                          spec.labeling.on_too_long)
    counts: dict = {"rows_in": result.rows_in, "rows_out": result.rows_labelled,
                    "rows_quarantined": result.rows_quarantined, "rows_truncated": result.rows_truncated,
                    "rows_per_s": round(result.rows_per_s, 1)}
    outputs: dict = {"teacher": result.teacher, **{part: [] for part in LABELLED_PARTS}}
    for shard in result.shards:
        part = part_of[shard.input]
        block = counts.setdefault(part, {"rows_in": 0, "rows_out": 0, "rows_quarantined": 0})
        block["rows_in"] += shard.rows_in
        block["rows_out"] += shard.rows_labelled
        block["rows_quarantined"] += shard.rows_quarantined
        outputs[part].append(str(Path(shard.output).relative_to(ctx.run_dir)))
    return StageOutput(counts=counts, outputs=outputs)


def _train(ctx: StageContext, distilled: bool) -> StageOutput:
    spec = ctx.spec
    paths = _labelled_paths(ctx, TRAIN_PARTS)
    train = _dataset(paths, "train")
    val = _dataset(_labelled_paths(ctx, ("labelled",)), "validation")
    # Same rows, model and budget; the baseline only sees the hard (noisy) labels.
    training = spec.training if distilled else spec.training.model_copy(update={"alpha": 1.0})
    result = train_student(training, spec.student, spec.classes, train, val, ctx.stage_dir,
                           use_soft_labels=distilled)
    return StageOutput(outputs={"model": str(result.checkpoint_dir.relative_to(ctx.run_dir)),
                                "epochs": result.metrics, "best_epoch": result.best_epoch,
                                "samples_per_s": round(result.samples_per_s, 1)})


def run_train_student(ctx: StageContext) -> StageOutput:
    return _train(ctx, distilled=True)


def run_train_baseline(ctx: StageContext) -> StageOutput:
    return _train(ctx, distilled=False)


def run_export(ctx: StageContext) -> StageOutput:
    spec = ctx.spec
    folder = ctx.run_dir / ctx.outputs_of("train_student")["model"]
    model, encoder, classes = load_student(folder)
    val = _labelled_rows(ctx, ("labelled",), "validation")
    val_scores = score_student(folder, _strings(val, schema.TEXT))[:, classes.index(spec.positive_class)]
    # The detection threshold shipped with the model: picked on validation at the largest FPR asked.
    fpr = max(spec.evaluation.fprs)
    threshold = pick_threshold(val_scores, _binary(_strings(val, schema.LABEL), spec.positive_class), fpr)
    texts = _strings(_labelled_rows(ctx, ("labelled", "test"), "test"), schema.TEXT)
    result = export_onnx(model, encoder, ctx.stage_dir / "model", classes, {spec.positive_class: threshold},
                         texts[:256])
    return StageOutput(outputs={"model_dir": str(result.model_dir.relative_to(ctx.run_dir)),
                                "threshold": threshold, "threshold_fpr_on_validation": fpr,
                                "parity_max_abs_diff": result.max_abs_diff, "parity_rows": result.parity_rows,
                                "events_per_s_one_thread": round(_events_per_s(result.model_dir, texts[:2000]), 1),
                                "parameters": sum(p.numel() for p in model.parameters())})


def run_evaluate(ctx: StageContext) -> StageOutput:
    spec = ctx.spec
    test = _labelled_rows(ctx, ("labelled", "test"), "test")
    val = _labelled_rows(ctx, ("labelled",), "validation")
    groups = {col: _strings(test, col) for col in spec.evaluation.group_by if col in test.column_names}
    labels, val_labels = _strings(test, schema.LABEL), _strings(val, schema.LABEL)
    probs = {"teacher": (_probs(test), _probs(val))}
    for name, stage in (("baseline student", "train_baseline"), ("distilled student", "train_student")):
        folder = ctx.run_dir / ctx.outputs_of(stage)["model"]
        probs[name] = (score_student(folder, _strings(test, schema.TEXT)),
                       score_student(folder, _strings(val, schema.TEXT)))
    reports = [evaluate_model(name, p, labels, spec.classes, spec.positive_class, vp, val_labels,
                              spec.evaluation.fprs, groups) for name, (p, vp) in probs.items()]
    comparison = compare_at_threshold(reports[1], reports[2], fpr=max(spec.evaluation.fprs))

    # The label audit: noisy rows whose given label the teacher confidently disputes.
    noisy = _labelled_rows(ctx, ("noisy",), None)
    true_labels = _strings(noisy, schema.TRUE_LABEL) if schema.TRUE_LABEL in noisy.column_names else None
    audit = label_audit(_strings(noisy, schema.ID), _strings(noisy, schema.TEXT), _strings(noisy, schema.LABEL),
                        _probs(noisy), spec.classes, spec.evaluation.audit_top_k, true_labels)

    stages = [{"stage": name, **m["counts"]} for name, m in ctx.manifests.items()]
    extra = {"teacher": ctx.outputs_of("label").get("teacher"), "export": ctx.outputs_of("export"),
             "training": {s: {k: ctx.outputs_of(s)[k] for k in ("best_epoch", "samples_per_s", "epochs")}
                          for s in ("finetune_teacher", "train_student", "train_baseline")
                          if "best_epoch" in ctx.outputs_of(s)}}
    job = {"name": spec.name, "workload": spec.workload, "artifact": spec.artifact, "classes": spec.classes,
           "positive_class": spec.positive_class, "resolved_spec": "spec.resolved.json"}
    json_path, md_path = write_report(ctx.run_dir, job, stages, reports, [comparison], audit, extra)
    return StageOutput(counts={"test_rows": test.num_rows, "validation_rows": val.num_rows},
                       outputs={"report_json": json_path.name, "report_md": md_path.name,
                                "comparison": comparison.sentence})


STAGES = [
    Stage("prepare", run_prepare, reads=("data", "classes"),
          about="read shards, quarantine bad rows, split by group"),
    Stage("finetune_teacher", run_finetune_teacher, reads=("teacher", "training"),
          about="fine-tune the teacher on the clean labelled rows (Ray Train)"),
    Stage("label", run_label, reads=("teacher", "labeling", "artifact"),
          about="the teacher labels every shard with class probabilities (Ray Data + vLLM)"),
    Stage("train_student", run_train_student, reads=("student", "training"),
          about="train the student on hard labels and the teacher's soft labels (Ray Train)"),
    Stage("train_baseline", run_train_baseline, reads=("student", "training"),
          about="train the same student on the noisy hard labels alone, same budget"),
    Stage("export", run_export, reads=("evaluation", "positive_class"),
          about="ONNX export of the student with its threshold, parity check, throughput"),
    Stage("evaluate", run_evaluate, reads=("evaluation", "positive_class"),
          about="teacher, baseline and student on the same test rows; label audit; report"),
]


# --- helpers -------------------------------------------------------------------------------------------------


def _teacher_model(ctx: StageContext) -> str:
    model = ctx.outputs_of("finetune_teacher")["model"]
    return str(ctx.run_dir / model) if ctx.outputs_of("finetune_teacher")["finetuned"] else model


def _labelled_paths(ctx: StageContext, parts: tuple[str, ...]) -> list[str]:
    return [str(ctx.run_dir / p) for part in parts for p in ctx.outputs_of("label").get(part, [])]


def _dataset(paths: list[str], split: str) -> ray.data.Dataset:
    columns = [c for c in TRAIN_COLUMNS if c in pq.read_schema(paths[0]).names] if paths else TRAIN_COLUMNS
    return ray.data.read_parquet(paths, columns=columns).filter(expr=col(schema.SPLIT) == split)


def _labelled_rows(ctx: StageContext, parts: tuple[str, ...], split: str | None) -> pa.Table:
    tables = [pq.read_table(p) for p in _labelled_paths(ctx, parts)]
    table = pa.concat_tables(tables, promote_options="permissive")
    return table if split is None else table.filter(pc.equal(table.column(schema.SPLIT), split))


def _strings(table: pa.Table, column: str) -> list:
    return table.column(column).to_pylist()


def _probs(table: pa.Table) -> np.ndarray:
    return np.asarray(table.column(schema.PROBS).to_pylist(), dtype=np.float32)


def _binary(labels: list[str], positive: str) -> np.ndarray:
    return np.array([label == positive for label in labels], dtype=np.int64)


@torch.no_grad()
def score_student(folder: Path, texts: list[str], batch_size: int = 512) -> np.ndarray:
    """Class probabilities of a trained student (torch, in this process)."""
    model, encoder, _ = load_student(folder)
    parts = [torch.softmax(model(torch.from_numpy(encoder.encode(texts[i:i + batch_size]))), -1).numpy()
             for i in range(0, len(texts), batch_size)]
    return np.concatenate(parts).astype(np.float32)


def _events_per_s(model_dir: Path, texts: list[str]) -> float:
    scorer = OnnxScorer(model_dir, intra_op_num_threads=1)
    scorer.predict_proba(texts[:64])  # warm-up
    start = time.perf_counter()
    scorer.predict_proba(texts)
    return len(texts) / (time.perf_counter() - start)
