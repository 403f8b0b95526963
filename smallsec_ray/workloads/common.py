"""The stages workloads share, and the helpers they read rows with.

Each stage is `run(ctx, **inputs) -> Result` (see stages.py): it takes earlier stages' results by name
and returns a small dataclass that the manifest keeps. A workload lists these (and its own) in order.

Words: the *labelled* part is the analysts' clean rows (data.labelled); the teacher *scores* rows,
writing its class probabilities (`probs`) next to them; a student trains on given labels, on the
teacher's probabilities, or on both.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch
from ray.data.expressions import col

from smallsec_ray import storage
from smallsec_ray.data import schema
from smallsec_ray.data.accounting import RowCounts
from smallsec_ray.data.noise import NoisePlan, apply_noise, plan_noise
from smallsec_ray.evaluation import pick_threshold
from smallsec_ray.export import OnnxScorer, export_onnx, quantize_int8
from smallsec_ray.label_policy import PolicyPlan, apply_policy, plan_policy
from smallsec_ray.labeling import average_runs, label_shards
from smallsec_ray.prepare import PreparedData
from smallsec_ray.spec import JobSpec
from smallsec_ray.stages import StageContext
from smallsec_ray.students.folder import Lineage, load_model
from smallsec_ray.teachers.bundled import resolve_model
from smallsec_ray.teachers.finetune import finetune_teacher
from smallsec_ray.training.trainer import TrainedModel, train_student

TRAIN_COLUMNS = [schema.ID, schema.TEXT, schema.LABEL, schema.SPLIT, schema.PROBS]

# The dotted spec keys each shared stage depends on (resources such as replicas and workers' CPUs
# change where a stage runs, not what it writes, so they are left out).
TEACHER_KEYS = ("classes", "teacher.kind", "teacher.model", "teacher.max_length", "teacher.finetune",
                "teacher.ensemble")
SCORING_KEYS = ("classes", "artifact", "teacher.kind", "teacher.backend", "teacher.max_length", "teacher.dtype",
                "teacher.prompt_template", "teacher.verbalizers", "labeling.on_too_long")
STUDENT_KEYS = ("classes", "student", "training", "data.noise")


# ---------------------------------------------------------------- teacher


@dataclass
class TeacherModel:
    """A teacher ready to label: a fine-tuned folder in the run, or the spec's model as it is."""

    model: str  # relative to the run folder when fine-tuned, else teacher.model (a folder or bundled:NAME)
    finetuned: bool
    training: TrainedModel | None = None


@dataclass
class Teachers:
    """The finetune_teacher stage's result: one teacher, or the members of an ensemble."""

    members: list[TeacherModel]


def run_finetune_teacher(ctx: StageContext, data: PreparedData) -> Teachers:
    spec, teacher = ctx.spec, ctx.spec.teacher
    if teacher.kind != "classifier" or not teacher.finetune.enabled:
        return Teachers([TeacherModel(teacher.model, finetuned=False)])
    paths = ctx_paths(ctx, data.shards("labelled"))
    size, members = teacher.ensemble.size, []
    folds = size > 1 and teacher.ensemble.split == "folds"
    for i in range(size):
        train = dataset(paths, "train", extra=(schema.GROUP,) if folds else ())
        if folds:  # Ray types a map_batches function as taking the batch alone; fn_kwargs passes the rest.
            train = train.map_batches(without_fold, batch_format="pyarrow",  # type: ignore[arg-type]
                                      fn_kwargs={"fold": i, "folds": size})
        out = ctx.stage_dir if size == 1 else ctx.stage_dir / f"member-{i}"
        trained = finetune_teacher(resolve_model(teacher.model), spec.classes, train, dataset(paths, "validation"),
                                   teacher.finetune, teacher.max_length, out,
                                   name="finetune_teacher" if size == 1 else f"finetune_teacher[{i}]", seed=i,
                                   store_dir=ctx.store_of(out))
        trained = replace(trained, model_dir=ctx.relative(trained.model_dir))
        members.append(TeacherModel(trained.model_dir, finetuned=True, training=trained))
    return Teachers(members)


def without_fold(batch: pa.Table, fold: int, folds: int) -> pa.Table:
    """The rows whose group is not in `fold` of `folds` (whole groups, by a hash of their name)."""
    keep = [int.from_bytes(hashlib.blake2b(str(g).encode(), digest_size=8).digest(), "big") % folds != fold
            for g in batch[schema.GROUP].to_pylist()]
    return batch.filter(pa.array(keep)).drop_columns([schema.GROUP])


@dataclass
class TeacherLabels:
    """The label stage's result: every shard of the scored parts with the teacher's `probs`."""

    teacher: dict  # the teacher's identity (model, fingerprint, kind, ...); {"ensemble": [...]} for several
    parts: dict[str, list[str]]  # part -> scored shards, relative to the run folder
    quarantine: list[str]
    rows: RowCounts
    by_part: dict[str, RowCounts]
    rows_truncated: int
    rows_per_s: float

    def shards(self, *parts: str) -> list[str]:
        return [shard for part in parts for shard in self.parts.get(part, [])]


def label_parts(ctx: StageContext, data: PreparedData, teachers: Teachers, parts: tuple[str, ...],
                out_dir: str | None = None, name: str = "label") -> TeacherLabels:
    """The teacher scores every prepared shard of `parts`, in one pipeline (the replicas start once), into
    `out_dir` (a folder in the output; default: the stage's). An ensemble's members score in turn, each into
    its own folder, and their probabilities are averaged."""
    spec = ctx.spec
    out_dir = out_dir or ctx.store_dir
    part_of = {ctx.store(shard): part for part in parts for shard in data.shards(part)}
    started = time.monotonic()
    runs = []
    for i, teacher in enumerate(teachers.members):
        model = ctx.store(teacher.model) if teacher.finetuned else teacher.model  # replicas fetch a remote one
        teacher_cfg = {**spec.teacher.model_dump(exclude={"finetune", "ensemble"}), "model": model,
                       "artifact": spec.artifact}
        out = out_dir if len(teachers.members) == 1 else storage.join(out_dir, f"member-{i}")
        runs.append(label_shards(list(part_of), out, teacher_cfg, spec.classes, spec.labeling.replicas,
                                 spec.labeling.cpus_per_replica, spec.labeling.gpus_per_replica,
                                 spec.labeling.batch_size, spec.labeling.on_too_long,
                                 name=name if len(teachers.members) == 1 else f"{name}[{i}]",
                                 resources=spec.labeling.resources))
    run = runs[0] if len(runs) == 1 else average_runs(runs, out_dir)
    seconds = time.monotonic() - started
    scored: dict[str, list[str]] = {part: [] for part in parts}
    by_part = {part: RowCounts() for part in parts}
    for shard in run.shards:
        part = part_of[shard.input]
        scored[part].append(ctx.relative(shard.output))
        by_part[part] += shard.rows
    fresh = sum(s.rows_in for r in runs for s in r.shards if not s.skipped)
    return TeacherLabels(teacher=run.teacher, parts=scored,
                         quarantine=[ctx.relative(s.quarantine) for s in run.shards if s.quarantine],
                         rows=run.rows, by_part=by_part, rows_truncated=run.rows_truncated,
                         rows_per_s=round(fresh / seconds, 1) if seconds else 0.0)


# ---------------------------------------------------------------- student


def train_on(ctx: StageContext, clean: list[str], noisy: list[str], val_paths: list[str], distilled: bool,
             teacher: dict | None = None) -> TrainedModel:
    """A student trained on the train split of the `clean` and `noisy` shards (with the teacher's
    probabilities when `distilled`; data.noise, if any, on the noisy shards' labels), its best epoch
    picked on the validation split of `val_paths`."""
    spec = ctx.spec
    noise = noise_plan(spec, noisy)
    policy, report = None, None
    if distilled and spec.distillation.policy != "soft":
        val = read_rows(val_paths, "validation")
        policy, report = plan_policy(spec.distillation, spec.classes, noisy, strings(val, schema.LABEL),
                                     probs_of(val), noise)
    weighted = policy is not None and policy.policy == "weighted"
    columns = training_columns(clean + noisy, distilled) + ([schema.WEIGHT] if weighted else [])
    train = dataset(clean, "train", distilled)
    if weighted:
        train = train.map_batches(with_weight, batch_format="pyarrow")  # the clean rows are trusted
    if noisy:
        noisy_rows = dataset(noisy, "train", distilled, extra=noise.columns if noise else ())
        if noise is not None or policy is not None:  # ignore: Ray types fn as taking the batch alone
            noisy_rows = noisy_rows.map_batches(with_targets, batch_format="pyarrow",  # type: ignore[arg-type]
                                                fn_kwargs={"noise": noise, "policy": policy})
        train = train.union(noisy_rows.select_columns(columns))
    lineage = Lineage(job=spec.name, workload=spec.workload, stage=ctx.stage_dir.name,
                      data={"input_runs": ctx.input_runs}, teacher=[teacher] if teacher else [])
    trained = train_student(spec.training, spec.student, spec.classes, train,
                            dataset(val_paths, "validation", distilled), ctx.stage_dir,
                            distillation=spec.distillation if distilled else None, lineage=lineage,
                            name=ctx.stage_dir.name, store_dir=ctx.store_dir)
    return replace(trained, model_dir=ctx.relative(trained.model_dir), label_policy=report)


def noise_plan(spec: JobSpec, noisy: list[str]) -> NoisePlan | None:
    """The plan of data.noise over the noisy shards (None without noise). Mode groups reads the shards'
    groups and labels here: noise is for experiments, whose data fits a driver."""
    noise = spec.data.noise
    if noise is None or not noisy or (noise.mode != "column" and not any(noise.flip_rates.values())):
        return None
    groups: list = []
    labels: list = []
    if noise.mode == "groups":
        table = pa.concat_tables([storage.read_table(p, columns=[schema.GROUP, schema.LABEL]) for p in noisy])
        groups, labels = strings(table, schema.GROUP), strings(table, schema.LABEL)
    return plan_noise(noise.mode, noise.flip_rates, spec.classes, noise.seed, groups, labels, noise.column)


def with_targets(batch: pa.Table, noise: NoisePlan | None, policy: PolicyPlan | None) -> pa.Table:
    """Noisy rows as the student learns them: data.noise on their labels, then the label policy."""
    if noise is not None:
        batch = apply_noise(batch, noise)
    if policy is not None:
        batch = apply_policy(batch, policy)
    return batch


def with_weight(batch: pa.Table) -> pa.Table:
    return batch.append_column(schema.WEIGHT, pa.array(np.ones(batch.num_rows, np.float32)))


@dataclass
class ExportedModel:
    model_dir: str  # the shipped model folder (weights, ONNX graph, thresholds), relative to the run folder
    threshold: float  # detection threshold of the positive class
    threshold_fpr_on_validation: float
    threshold_rests_on: int  # validation negatives at or above the threshold (how firm the FPR figure is)
    parity_max_abs_diff: float
    parity_rows: int
    events_per_s_one_thread: float  # the fp32 graph
    parameters: int
    int8: dict | None = None  # export.int8: the int8 graph's agreement check (quantize_int8), None when not asked
    events_per_s_one_thread_int8: float | None = None  # when the int8 graph was kept


def run_export(ctx: StageContext, model: TrainedModel, data: PreparedData) -> ExportedModel:
    """Ships `model`: its threshold picked on the labelled validation rows at the largest FPR asked, the
    ONNX graph checked against torch on test rows, and a throughput figure; with export.int8 also an int8
    graph, calibrated and checked on the validation rows, when it agrees with the fp32 one."""
    spec = ctx.spec
    net, _, config = load_model(ctx.path(model.model_dir))
    val = read_rows(ctx_paths(ctx, data.shards("labelled")), "validation")
    val_scores = score_student(ctx.path(model.model_dir), strings(val, schema.TEXT))[
        :, config.classes.index(spec.positive_class)]
    fpr = max(spec.evaluation.fprs)
    is_positive = binary(strings(val, schema.LABEL), spec.positive_class)
    threshold = pick_threshold(val_scores, is_positive, fpr)
    texts = strings(read_rows(ctx_paths(ctx, data.shards("labelled", "test")), "test"), schema.TEXT)
    config = replace(config, thresholds={spec.positive_class: threshold})
    result = export_onnx(net, config, ctx.stage_dir / "model", texts[:256])
    int8 = (quantize_int8(result.model_dir, strings(val, schema.TEXT), is_positive,
                          config.classes.index(spec.positive_class), threshold) if spec.export.int8 else None)
    return ExportedModel(model_dir=ctx.relative(result.model_dir), threshold=threshold,
                         threshold_fpr_on_validation=fpr,
                         threshold_rests_on=int(((val_scores >= threshold) & (is_positive == 0)).sum()),
                         parity_max_abs_diff=result.max_abs_diff, parity_rows=result.parity_rows,
                         events_per_s_one_thread=round(events_per_s(result.model_dir, texts[:2000], fp32=True), 1),
                         parameters=sum(p.numel() for p in net.parameters()), int8=int8,
                         events_per_s_one_thread_int8=(round(events_per_s(result.model_dir, texts[:2000]), 1)
                                                       if int8 and int8["accepted"] else None))


# ---------------------------------------------------------------- rows


def ctx_paths(ctx: StageContext, shards: list[str]) -> list[str]:
    """Shards of a stage result where they are read from (the output: a local path or a URI)."""
    return [ctx.store(s) for s in shards]


def training_columns(paths: list[str], with_probs: bool) -> list[str]:
    """The columns training reads that the shards have (probs only for a distilled student)."""
    wanted = [c for c in TRAIN_COLUMNS if with_probs or c != schema.PROBS]
    return [c for c in wanted if c in storage.read_schema(paths[0]).names] if paths else wanted


def dataset(paths: list[str], split: str, with_probs: bool = True, extra: tuple[str, ...] = ()) -> ray.data.Dataset:
    """Ray Data rows of one split of some shards: the columns training reads (and `extra` ones)."""
    columns = training_columns(paths, with_probs) + list(extra)
    return ray.data.read_parquet(paths).select_columns(columns).filter(expr=col(schema.SPLIT) == split)


def read_rows(paths: list[str], split: str | None = None) -> pa.Table:
    """The rows of some shards (one split, or all) as one table, for small driver-side work."""
    table = pa.concat_tables([storage.read_table(p) for p in paths], promote_options="permissive")
    return table if split is None else table.filter(pc.equal(table.column(schema.SPLIT), split))


def stage_rows(rows: RowCounts) -> dict:
    """A stage's row counts as the report's stage table shows them."""
    return {"rows_in": rows.rows_in, "rows_out": rows.rows_out, "rows_quarantined": rows.rows_quarantined}


def strings(table: pa.Table, column: str) -> list:
    return table.column(column).to_pylist()


def probs_of(table: pa.Table) -> np.ndarray:
    return np.asarray(table.column(schema.PROBS).to_pylist(), dtype=np.float32)


def binary(labels: list[str], positive: str) -> np.ndarray:
    return np.array([label == positive for label in labels], dtype=np.int64)


@torch.no_grad()
def score_student(folder: Path, texts: list[str], batch_size: int = 512) -> np.ndarray:
    """Class probabilities of a student model folder (torch, in this process)."""
    model, encoder, _ = load_model(folder)
    parts = [torch.softmax(model(torch.from_numpy(encoder.encode(texts[i:i + batch_size]))), -1).numpy()
             for i in range(0, len(texts), batch_size)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, model.num_classes), np.float32)


def events_per_s(model_dir: Path, texts: list[str], fp32: bool = False) -> float:
    scorer = OnnxScorer(model_dir, intra_op_num_threads=1, fp32=fp32)
    scorer.predict_proba(texts[:64])  # warm-up
    start = time.perf_counter()
    scorer.predict_proba(texts)
    return len(texts) / (time.perf_counter() - start)
