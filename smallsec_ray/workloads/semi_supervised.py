"""Semi-supervised learning: a teacher fine-tuned on the labelled rows pseudo-labels the unlabelled pool,
over one or more rounds, and small students learn from mixes of labelled and pseudo-labelled rows.

prepare -> finetune_teacher -> label -> rounds -> train_students -> export -> evaluate

Rows: the teacher learns from the labelled part's train split and picks its epoch on the labelled
validation split; the pool is the unlabelled part's train split (rows whose groups hold no labelled row
all train, see data/splits.py). Two curves of students (semi_supervised.ratios and .added_rows):
* fixed size: N training rows, a share r of them pseudo-labelled, the rest labelled (r = 0: labelled only);
* growing: all labelled rows plus n pseudo-labelled ones.
Every student and every round's teacher is scored on the same test rows. Where the pool's true labels are
known (a `true_label` column, experiments only; never used in training), the report gives the accuracy of
each round's pseudo-labels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.figure import Figure
from pydantic import TypeAdapter

from smallsec_ray import storage
from smallsec_ray.data import schema
from smallsec_ray.evaluation import ModelMetrics, ModelReport, class_metrics, evaluate_model
from smallsec_ray.prepare import PreparedData, run_prepare
from smallsec_ray.reference import fit_linear_reference
from smallsec_ray.report import save_plot, write_report
from smallsec_ray.stages import Stage, StageContext
from smallsec_ray.students.folder import Lineage
from smallsec_ray.teachers.bundled import resolve_model
from smallsec_ray.teachers.finetune import finetune_teacher
from smallsec_ray.training.trainer import TrainedModel, train_student
from smallsec_ray.workloads.common import (
    SCORING_KEYS,
    STUDENT_KEYS,
    TEACHER_KEYS,
    ExportedModel,
    TeacherLabels,
    TeacherModel,
    Teachers,
    ctx_paths,
    dataset,
    label_parts,
    probs_of,
    read_rows,
    run_export,
    run_finetune_teacher,
    score_student,
    stage_rows,
    strings,
)

SCORED_PARTS = ("labelled", "unlabelled", "test")  # each round's teacher scores these
POOL = "unlabelled"
ROW_COLUMNS = [schema.ID, schema.TEXT, schema.LABEL, schema.SPLIT, schema.PROBS]  # what models learn from
DONE = "done.json"  # a finished round or student inside its stage: a resumed stage reads it back


# ---------------------------------------------------------------- teacher rounds


@dataclass
class Round:
    round: int  # 1 = the teacher fine-tuned on the labelled rows alone
    teachers: Teachers  # one teacher (rounds > 1 are single teachers), or round 1's ensemble
    labels: TeacherLabels  # its probabilities on the labelled, pool and test rows
    validation: dict[str, float | None]  # accuracy, macro_f1, auc on the labelled validation rows
    pool_rows_used: int  # pseudo-labelled rows in its fine-tuning (0 in round 1)
    gain: float | None  # its round_metric minus the best earlier round's (None in round 1)


@dataclass
class Rounds:
    rounds: list[Round]
    best: int  # the round whose labels the students learn (highest round_metric on validation)
    stopped: str  # why no further round ran

    @property
    def chosen(self) -> Round:
        return self.rounds[self.best - 1]


def run_label(ctx: StageContext, data: PreparedData, teachers: Teachers) -> TeacherLabels:
    return label_parts(ctx, data, teachers, SCORED_PARTS)


def run_rounds(ctx: StageContext, data: PreparedData, teachers: Teachers, labels: TeacherLabels) -> Rounds:
    """Round 1 is the finetune_teacher and label stages' teacher; each further round fine-tunes the teacher
    again (from the pretrained model) on the labelled rows plus the pool as the best round so far labelled
    it, and relabels, until semi_supervised.rounds or a gain below min_gain. Each round keeps its teacher
    and labels under round-K/, and a round that finished is read back when the stage resumes."""
    semi = ctx.spec.semi_supervised
    rounds = [Round(1, teachers, labels, _validation(ctx, labels), 0, None)]
    stopped = f"semi_supervised.rounds is {semi.rounds}" if semi.rounds == 1 else ""
    for k in range(2, semi.rounds + 1):
        best = max(rounds, key=lambda r: _metric(r, semi.round_metric))
        done = ctx.stage_dir / f"round-{k}" / DONE
        if ctx.fetch(done):
            this = TypeAdapter(Round).validate_python(json.loads(done.read_text()))
        else:
            this = _one_round(ctx, data, best, k)
            done.write_text(json.dumps(asdict(this), default=str))
            ctx.sync()  # a remote output gets the round now: a rerun on any machine resumes after it
        rounds.append(this)
        if this.gain is None or this.gain < semi.min_gain:
            stopped = (f"round {k} gained {this.gain:+.4f} in validation {semi.round_metric}, below min_gain "
                       f"{semi.min_gain:g}")
            break
    else:
        stopped = stopped or f"all {semi.rounds} rounds ran"
    best = max(rounds, key=lambda r: _metric(r, semi.round_metric))
    return Rounds(rounds, best.round, stopped)


def _one_round(ctx: StageContext, data: PreparedData, previous: Round, k: int) -> Round:
    spec, semi = ctx.spec, ctx.spec.semi_supervised
    folder = ctx.stage_dir / f"round-{k}"
    labelled = ctx_paths(ctx, data.shards("labelled"))
    pool = ctx_paths(ctx, previous.labels.shards(POOL))
    keep = _pool_sample(pool, spec.classes, semi.round_max_rows, semi.round_confidence if semi.round_targets ==
                        "hard" else 0.0, seed=semi.seed + k)
    # Ray types a map_batches function as taking the batch alone; fn_kwargs passes the rest.
    train = dataset(labelled, "train", with_probs=False).map_batches(
        with_one_hot, batch_format="pyarrow", fn_kwargs={"classes": spec.classes})  # type: ignore[arg-type]
    if keep:
        train = train.union(dataset(pool, "train").map_batches(
            pool_targets, batch_format="pyarrow",  # type: ignore[arg-type]
            fn_kwargs={"keep": keep, "classes": spec.classes, "hard": semi.round_targets == "hard"}))
    trained = finetune_teacher(resolve_model(spec.teacher.model), spec.classes, train, dataset(labelled, "validation"),
                               spec.teacher.finetune, spec.teacher.max_length, folder / "teacher",
                               name=f"finetune_teacher[round {k}]", seed=k, pseudo_labelled=True,
                               store_dir=ctx.store_of(folder / "teacher"))
    teacher = TeacherModel(ctx.relative(trained.model_dir), finetuned=True,
                           training=replace(trained, model_dir=ctx.relative(trained.model_dir)))
    labels = label_parts(ctx, data, Teachers([teacher]), SCORED_PARTS, out_dir=ctx.store_of(folder / "labels"),
                         name=f"label[round {k}]")
    validation = _validation(ctx, labels)
    this = Round(k, Teachers([teacher]), labels, validation, len(keep), None)
    this.gain = _metric(this, semi.round_metric) - _metric(previous, semi.round_metric)
    return this


def _validation(ctx: StageContext, labels: TeacherLabels) -> dict[str, float | None]:
    val = read_rows(ctx_paths(ctx, labels.shards("labelled")), "validation")
    m = class_metrics(probs_of(val), strings(val, schema.LABEL), ctx.spec.classes)
    return {"accuracy": m.accuracy, "macro_f1": m.macro_f1, "auc": m.roc_auc_macro}


def _metric(r: Round, name: str) -> float:
    value = r.validation.get(name)
    return -1.0 if value is None else value


# ---------------------------------------------------------------- students


@dataclass
class StudentPoint:
    name: str  # "r=0.25" (fixed size) or "+10000" (growing)
    curve: str  # "fixed" or "growing"
    x: float  # r, or pseudo-labelled rows added
    labelled_rows: int
    pseudo_rows: int
    model: TrainedModel
    seed: int = 0  # its training seed: semi_supervised.repeats trains one student per seed 0, 1, ...

    @property
    def label(self) -> str:
        return student_label(self.name, self.seed)


def student_label(point: str, seed: int) -> str:
    """A student's own name: its point's, with its seed after the first ("r=0.5 seed 2")."""
    return point if seed == 0 else f"{point} seed {seed}"


@dataclass
class Students:
    points: list[StudentPoint]
    labelled_train_rows: int
    pool_rows: int  # pool train rows the teacher labelled
    eligible_rows: int  # of which at or above semi_supervised.confidence
    eligible_by_class: dict[str, int]  # by the teacher's most likely class
    from_round: int
    chosen: str  # the student exported (its label): the best validation ROC AUC

    def point(self, label: str) -> StudentPoint:
        return next(p for p in self.points if p.label == label)


def run_train_students(ctx: StageContext, data: PreparedData, rounds: Rounds) -> Students:
    """semi_supervised.repeats students per point of the two curves (one per training seed), each point on its
    own rows (nested samples: a larger share holds the smaller one's rows), picked by a seeded hash of the row
    id so that a rerun trains on the same rows. Points with the same rows train once."""
    spec, semi = ctx.spec, ctx.spec.semi_supervised
    labelled = ctx_paths(ctx, data.shards("labelled"))
    pool = ctx_paths(ctx, rounds.chosen.labels.shards(POOL))
    labelled_train = read_rows(labelled, "train")
    labelled_ids = _ids_by_hash(labelled_train, semi.seed)
    pool_table = read_rows(pool, "train") if pool else None
    pool_n = pool_table.num_rows if pool_table is not None else 0
    shares = class_shares(semi.balance, spec.classes, strings(labelled_train, schema.LABEL))
    eligible = _eligible(pool_table, spec.classes, semi.confidence, shares, semi.seed)
    size = min(semi.train_rows or len(labelled_ids), len(labelled_ids))
    plan = [(f"r={r:g}", "fixed", r, size - round(r * size), round(r * size)) for r in semi.ratios]
    plan += [(f"+{n}" if n >= 0 else "+all", "growing", float(n if n >= 0 else len(eligible)), len(labelled_ids),
              n if n >= 0 else len(eligible)) for n in semi.added_rows]
    trained: dict[tuple[int, int, int], TrainedModel] = {}
    points = []
    for name, curve, x, n_labelled, n_pseudo in plan:
        n_pseudo = min(n_pseudo, len(eligible))
        for seed in range(semi.repeats):
            key = (n_labelled, n_pseudo, seed)
            if key not in trained:
                trained[key] = _train_point(ctx, student_label(name, seed), labelled, pool,
                                            labelled_ids[:n_labelled], eligible[:n_pseudo], seed)
            points.append(StudentPoint(name, curve, x, n_labelled, n_pseudo, trained[key], seed))
    chosen = max(points, key=lambda p: _best_val_auc(p.model))
    predicted = (np.asarray(pool_table.column(schema.PROBS).to_pylist()).argmax(1) if pool_table is not None and pool_n
                 else np.zeros(0))
    keep = set(eligible)
    by_class = {c: int(sum(1 for i, p in zip(strings(pool_table, schema.ID), predicted, strict=True)
                           if p == k and i in keep)) for k, c in enumerate(spec.classes)} if pool_n else {}
    return Students(points, len(labelled_ids), pool_n, len(eligible), by_class, rounds.best, chosen.label)


def _train_point(ctx: StageContext, name: str, labelled: list[str], pool: list[str], labelled_ids: list[str],
                 pool_ids: list[str], seed: int) -> TrainedModel:
    spec = ctx.spec
    folder = ctx.stage_dir / _slug(name)
    done = folder / DONE
    if ctx.fetch(done):
        return TypeAdapter(TrainedModel).validate_python(json.loads(done.read_text()))
    parts = []
    # Ray types a map_batches function as taking the batch alone; fn_kwargs passes the rest.
    if labelled_ids:
        parts.append(dataset(labelled, "train", with_probs=False).map_batches(
            with_one_hot, batch_format="pyarrow",  # type: ignore[arg-type]
            fn_kwargs={"classes": spec.classes, "keep": set(labelled_ids)}))
    if pool_ids:
        parts.append(dataset(pool, "train").map_batches(
            pool_targets, batch_format="pyarrow",  # type: ignore[arg-type]
            fn_kwargs={"keep": set(pool_ids), "classes": spec.classes, "hard": spec.semi_supervised.targets == "hard"}))
    train = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    lineage = Lineage(job=spec.name, workload=spec.workload, stage=f"{ctx.stage_dir.name}/{_slug(name)}",
                      data={"input_runs": ctx.input_runs, "labelled_rows": len(labelled_ids),
                            "pseudo_labelled_rows": len(pool_ids)})
    model = train_student(spec.training, spec.student, spec.classes, train, dataset(labelled, "validation"),
                          folder, distillation=spec.distillation, lineage=lineage,
                          name=f"train_students[{name}]", seed=seed, store_dir=ctx.store_of(folder))
    model = replace(model, model_dir=ctx.relative(model.model_dir))
    done.write_text(json.dumps(asdict(model), default=str))
    ctx.sync()
    return model


def _best_val_auc(model: TrainedModel) -> float:
    aucs = [auc for e in model.epochs if (auc := e.get("val_auc")) is not None]
    return max(aucs) if aucs else -1.0


# ---------------------------------------------------------------- rows


def _hash(row_id: str, seed: int) -> bytes:
    return hashlib.blake2b(f"{seed}\x1f{row_id}".encode(), digest_size=8).digest()


def _ids_by_hash(table: pa.Table, seed: int) -> list[str]:
    """Row ids in the order of a seeded hash: any prefix is a seeded sample, and prefixes nest."""
    return sorted(strings(table, schema.ID), key=lambda i: _hash(i, seed))


def _eligible(pool: pa.Table | None, classes: list[str], confidence: float, shares: list[float] | None,
              seed: int) -> list[str]:
    """Pool row ids a student may learn, in the order students take them: at or above `confidence`, by seeded
    hash; with class `shares`, interleaved over the teacher's most likely classes so that any first n rows
    hold the classes in those shares (a class that runs out leaves the rest to the others)."""
    if pool is None or pool.num_rows == 0:
        return []
    probs = probs_of(pool)
    ids = np.array(strings(pool, schema.ID), dtype=object)
    ok = probs.max(axis=1) >= confidence
    if shares is None:
        return _ids_by_hash(pa.table({schema.ID: ids[ok].tolist()}), seed)
    # The i-th row of class k is due at (i + 1) / share_k: sorting by that time interleaves the classes.
    due, order = [], []
    for k, share in enumerate(shares):
        queue = _ids_by_hash(pa.table({schema.ID: ids[ok & (probs.argmax(1) == k)].tolist()}), seed)
        due += [(i + 1) / share if share > 0 else np.inf for i in range(len(queue))]
        order += queue
    return [order[i] for i in np.argsort(np.array(due), kind="stable")]


def class_shares(balance: str, classes: list[str], labels: list[str]) -> list[float] | None:
    """The class shares of semi_supervised.balance: None (as the pool has them), even, or the labelled rows'."""
    if balance == "none":
        return None
    if balance == "even" or not labels:
        return [1.0 / len(classes)] * len(classes)
    return [labels.count(c) / len(labels) for c in classes]


def _pool_sample(pool: list[str], classes: list[str], max_rows: int | None, confidence: float,
                 seed: int) -> list[str]:
    if not pool:
        return []
    table = pa.concat_tables([storage.read_table(p, columns=[schema.ID, schema.SPLIT, schema.PROBS]) for p in pool])
    table = table.filter(pc.equal(table[schema.SPLIT], "train"))
    eligible = _eligible(table, classes, confidence, None, seed)
    return eligible[:max_rows] if max_rows else eligible


def with_one_hot(batch: pa.Table, classes: list[str], keep: set[str] | None = None) -> pa.Table:
    """Labelled rows with their label as one-hot `probs` (so that they mix with pseudo-labelled rows)."""
    if keep is not None:
        batch = batch.filter(pc.is_in(batch[schema.ID], pa.array(sorted(keep), pa.string())))
    index = {c: i for i, c in enumerate(classes)}
    one_hot = np.zeros((batch.num_rows, len(classes)), np.float32)
    one_hot[np.arange(batch.num_rows), [index[label] for label in strings(batch, schema.LABEL)]] = 1.0
    batch = batch.drop_columns([c for c in (schema.PROBS,) if c in batch.column_names])
    return batch.append_column(schema.PROBS, pa.array(list(one_hot), pa.list_(pa.float32()))).select(ROW_COLUMNS)


def pool_targets(batch: pa.Table, keep: set[str], classes: list[str], hard: bool) -> pa.Table:
    """Pool rows in `keep` with what a model learns from them: the teacher's probabilities and no label
    (soft), or its most likely class as the label and as one-hot probabilities (hard)."""
    batch = batch.filter(pc.is_in(batch[schema.ID], pa.array(sorted(keep), pa.string())))
    probs = probs_of(batch).reshape(batch.num_rows, len(classes))
    if hard:
        top = probs.argmax(axis=1)
        labels = pa.array([classes[k] for k in top], pa.string())
        probs = np.eye(len(classes), dtype=np.float32)[top]
    else:
        labels = pa.nulls(batch.num_rows, pa.string())
    batch = batch.drop_columns([schema.LABEL, schema.PROBS])
    return batch.append_column(schema.LABEL, labels).append_column(
        schema.PROBS, pa.array(list(probs), pa.list_(pa.float32()))).select(ROW_COLUMNS)


def _slug(name: str) -> str:
    return "student-" + "".join(c if c.isalnum() or c in "-._" else "_" for c in name.replace("=", "-"))


# ---------------------------------------------------------------- export, evaluate


def run_export_chosen(ctx: StageContext, students: Students, data: PreparedData) -> ExportedModel:
    return run_export(ctx, students.point(students.chosen).model, data)


@dataclass
class SemiReport:
    report_json: str
    report_md: str
    summary: str  # one sentence: how close the students came to the teacher
    gap_closed: dict[str, float | None]  # metric -> share of the teacher-minus-r=0 gap the largest r closed
    test_rows: int
    models: dict[str, ModelMetrics] = field(default_factory=dict)  # every teacher round, student, reference
    curves: list[dict] = field(default_factory=list)  # per point: its students' mean, range and own figures
    pseudo_label_accuracy: list[dict] = field(default_factory=list)  # per round, where the pool has true labels


def run_evaluate(ctx: StageContext, data: PreparedData, rounds: Rounds, students: Students,
                 export: ExportedModel) -> SemiReport:
    spec = ctx.spec
    first = rounds.rounds[0].labels
    test = read_rows(ctx_paths(ctx, first.shards("labelled", "test")), "test")
    val = read_rows(ctx_paths(ctx, first.shards("labelled")), "validation")
    texts, val_texts = strings(test, schema.TEXT), strings(val, schema.TEXT)
    probs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for r in rounds.rounds:
        t = read_rows(ctx_paths(ctx, r.labels.shards("labelled", "test")), "test")
        v = read_rows(ctx_paths(ctx, r.labels.shards("labelled")), "validation")
        if strings(t, schema.ID) != strings(test, schema.ID) or strings(v, schema.ID) != strings(val, schema.ID):
            t, v = _in_order(t, test), _in_order(v, val)
        probs[f"teacher round {r.round}"] = (probs_of(t), probs_of(v))
    extra: dict = {}
    if spec.evaluation.linear_reference:  # the linear model on the labelled rows alone
        rows = read_rows(ctx_paths(ctx, data.shards("labelled")), "train")
        reference, fit = fit_linear_reference(strings(rows, schema.TEXT), strings(rows, schema.LABEL),
                                              strings(rows, schema.ID), val_texts, strings(val, schema.LABEL),
                                              spec.classes, spec.positive_class, spec.evaluation.reference_max_rows)
        probs["linear reference (labelled rows)"] = (reference.predict_proba(texts), reference.predict_proba(val_texts))
        extra["linear_reference"] = fit
    seen: dict[str, str] = {}
    for p in students.points:
        if p.model.model_dir in seen:
            continue
        seen[p.model.model_dir] = p.label
        folder = ctx.path(p.model.model_dir)
        probs[f"student {p.label}"] = (score_student(folder, texts), score_student(folder, val_texts))
    groups = {column: strings(test, column) for column in spec.evaluation.group_by if column in test.column_names}
    labels, val_labels = strings(test, schema.LABEL), strings(val, schema.LABEL)
    reports = {name: evaluate_model(name, p, labels, spec.classes, spec.positive_class, vp, val_labels,
                                    spec.evaluation.fprs, groups)
               for name, (p, vp) in probs.items()}

    curves = _curves(students, reports, seen)
    teacher_best = reports[f"teacher round {rounds.best}"].by_class
    gap = _gap_closed(curves, teacher_best)
    accuracy = [_pseudo_label_accuracy(ctx, r) for r in rounds.rounds]
    plot = _plot_curves(ctx, curves, reports, rounds, spec.student.preset)
    summary = _summary(curves, teacher_best, gap, rounds)
    sections = [f"**{summary}**", _curve_section(curves, reports, rounds, gap, plot),
                _rounds_section(rounds, accuracy, spec.semi_supervised.round_metric)]
    stages = [{"stage": "prepare", **stage_rows(data.rows)}] + [
        {"stage": f"label (round {r.round})", **stage_rows(r.labels.rows)} for r in rounds.rounds]
    extra |= {"rounds": [{"round": r.round, "validation": r.validation, "gain": r.gain,
                          "pool_rows_used": r.pool_rows_used, "teachers": [t.model for t in r.teachers.members]}
                         for r in rounds.rounds],
              "best_round": rounds.best, "rounds_stopped": rounds.stopped, "pseudo_label_accuracy": accuracy,
              "curves": curves, "gap_closed": gap, "exported_student": students.chosen, "export": export,
              "pool": {"rows": students.pool_rows, "eligible": students.eligible_rows,
                       "eligible_by_class": students.eligible_by_class,
                       "labelled_train_rows": students.labelled_train_rows}}
    job = {"name": spec.name, "workload": spec.workload, "artifact": spec.artifact, "classes": spec.classes,
           "positive_class": spec.positive_class, "resolved_spec": "spec.resolved.json"}
    json_path, md_path = write_report(ctx.run_dir, job, stages, list(reports.values()), [], None, extra, sections)
    return SemiReport(report_json=ctx.relative(json_path), report_md=ctx.relative(md_path), summary=summary,
                      gap_closed=gap, test_rows=test.num_rows,
                      models={name: r.metrics() for name, r in reports.items()}, curves=curves,
                      pseudo_label_accuracy=accuracy)


def _in_order(table: pa.Table, like: pa.Table) -> pa.Table:
    index = {i: k for k, i in enumerate(strings(table, schema.ID))}
    return table.take(pa.array([index[i] for i in strings(like, schema.ID)]))


def _curves(students: Students, reports: dict[str, ModelReport], seen: dict[str, str]) -> list[dict]:
    """One entry per point: the mean of its students' test figures (one student per seed), their range, and
    each student's own figures under `runs`."""
    by_point: dict[str, list[StudentPoint]] = {}
    for p in students.points:
        by_point.setdefault(p.name, []).append(p)
    out = []
    for name, group in by_point.items():
        runs = []
        for p in group:
            m = reports[f"student {seen[p.model.model_dir]}"].by_class
            runs.append({"seed": p.seed, "macro_f1": m.macro_f1, "auc": m.roc_auc_macro, "accuracy": m.accuracy,
                         "best_epoch": p.model.best_epoch})
        first = group[0]
        entry = {"point": name, "curve": first.curve, "x": first.x, "labelled_rows": first.labelled_rows,
                 "pseudo_rows": first.pseudo_rows, "best_epoch": first.model.best_epoch, "runs": runs}
        for metric in ("macro_f1", "auc", "accuracy"):
            values = [value for r in runs if (value := r[metric]) is not None]
            known = len(values) == len(runs)
            entry[metric] = float(np.mean(values)) if known else None
            entry[f"{metric}_range"] = [min(values), max(values)] if known else None
        out.append(entry)
    return out


def _gap_closed(curves: list[dict], teacher) -> dict[str, float | None]:
    """Share of the gap between the r = 0 student and the best teacher round that the largest r closed."""
    fixed = sorted((c for c in curves if c["curve"] == "fixed"), key=lambda c: c["x"])
    if len(fixed) < 2 or fixed[0]["x"] != 0:
        return {"macro_f1": None, "auc": None}
    out = {}
    for metric, t in (("macro_f1", teacher.macro_f1), ("auc", teacher.roc_auc_macro)):
        low, high = fixed[0][metric], fixed[-1][metric]
        out[metric] = None if None in (low, high, t) or t <= low else (high - low) / (t - low)
    return out


def _pseudo_label_accuracy(ctx: StageContext, r: Round) -> dict:
    """How often the round's most likely class is the pool row's true label (rows with a known one)."""
    paths = ctx_paths(ctx, r.labels.shards(POOL))
    if not paths or schema.TRUE_LABEL not in storage.read_schema(paths[0]).names:
        return {"round": r.round, "rows_with_true_label": 0}
    pool = read_rows(paths, "train")
    pool = pool.filter(pc.is_valid(pool[schema.TRUE_LABEL]))
    if pool.num_rows == 0:
        return {"round": r.round, "rows_with_true_label": 0}
    m = class_metrics(probs_of(pool), strings(pool, schema.TRUE_LABEL), ctx.spec.classes)
    conf = probs_of(pool).max(axis=1)
    confident = conf >= ctx.spec.semi_supervised.confidence
    return {"round": r.round, "rows_with_true_label": pool.num_rows, "accuracy": m.accuracy,
            "macro_f1": m.macro_f1, "auc": m.roc_auc_macro,
            "confident_share": float(confident.mean()),
            "confident_accuracy": float((probs_of(pool).argmax(1) == np.array(
                [ctx.spec.classes.index(t) for t in strings(pool, schema.TRUE_LABEL)]))[confident].mean())
            if confident.any() else None}


def _plot_curves(ctx: StageContext, curves: list[dict], reports: dict[str, ModelReport], rounds: Rounds,
                 preset: str) -> str:
    growing = [c for c in curves if c["curve"] == "growing"]
    panels = [("fixed", "share r of pseudo-labelled training rows (fixed size)")]
    if growing:
        panels.append(("growing", "pseudo-labelled rows added to the labelled rows"))
    fig = Figure(figsize=(5.5 * len(panels), 7.5))
    axes = fig.subplots(2, len(panels), squeeze=False)
    for col_i, (curve, xlabel) in enumerate(panels):
        points = sorted((c for c in curves if c["curve"] == curve), key=lambda c: c["x"])
        for row_i, (metric, title) in enumerate((("macro_f1", "macro-F1"), ("auc", "ROC AUC (one-vs-rest, macro)"))):
            ax = axes[row_i][col_i]
            xs = [c["x"] for c in points]
            repeats = max(len(c["runs"]) for c in points)
            ax.plot(xs, [c[metric] for c in points], marker="o", color="C0",
                    label=f"student ({preset})" + (f", mean of {repeats} seeds" if repeats > 1 else ""))
            if repeats > 1:  # every student as a dot: the spread the mean hides
                ax.scatter([c["x"] for c in points for _ in c["runs"]],
                           [r[metric] for c in points for r in c["runs"]], s=12, color="C0", alpha=0.45)
            for k, r in enumerate(rounds.rounds):
                m = reports[f"teacher round {r.round}"].by_class
                value = m.macro_f1 if metric == "macro_f1" else m.roc_auc_macro
                if value is not None:
                    ax.axhline(value, color=f"C{k + 1}", linestyle="--", linewidth=1.2,
                               label=f"teacher round {r.round}" + (" (used)" if r.round == rounds.best else ""))
            ref = reports.get("linear reference (labelled rows)")
            if ref is not None:
                value = ref.by_class.macro_f1 if metric == "macro_f1" else ref.by_class.roc_auc_macro
                if value is not None:
                    ax.axhline(value, color="grey", linestyle=":", linewidth=1.2, label="linear, labelled rows")
            if curve == "growing" and xs and max(xs) > 0:
                ax.set_xscale("symlog", linthresh=max(1.0, min(x for x in xs if x > 0)))
            ax.set_xlabel(xlabel)
            ax.set_ylabel(title)
            ax.grid(alpha=0.3)
            if row_i == 0 and col_i == 0:
                ax.legend(fontsize=8)
    fig.suptitle("Student quality against pseudo-labelled data, teacher rounds as lines", fontsize=11)
    fig.tight_layout()
    return save_plot(fig, ctx.run_dir, "semi_supervised_curves.png")


def _summary(curves: list[dict], teacher, gap: dict, rounds: Rounds) -> str:
    fixed = sorted((c for c in curves if c["curve"] == "fixed"), key=lambda c: c["x"])
    low, high = fixed[0], fixed[-1]

    def pct(v):
        return "n/a" if v is None else f"{v:.0%}"

    repeats = len(low["runs"])
    students = f"Students (means of {repeats} seeds)" if repeats > 1 else "Student"
    return (f"Teacher (round {rounds.best}): macro-F1 {teacher.macro_f1:.4f}, AUC {_f(teacher.roc_auc_macro)}. "
            f"{students} {low['point']}: macro-F1 {low['macro_f1']:.4f}, AUC {_f(low['auc'])}; {high['point']}: "
            f"macro-F1 {high['macro_f1']:.4f}, AUC {_f(high['auc'])}; share of the gap to the teacher closed: "
            f"{pct(gap['macro_f1'])} (macro-F1), {pct(gap['auc'])} (AUC).")


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _spread(curve: dict, metric: str) -> str:
    """A point's mean, and with several students their range: "0.8406 (0.8213-0.8590)"."""
    span = curve.get(f"{metric}_range")
    if len(curve["runs"]) < 2 or span is None:
        return _f(curve[metric])
    return f"{_f(curve[metric])} ({span[0]:.4f}-{span[1]:.4f})"


def _curve_section(curves: list[dict], reports: dict[str, ModelReport], rounds: Rounds, gap: dict,
                   plot: str) -> str:
    repeats = max(len(c["runs"]) for c in curves)
    lines = ["## Students against pseudo-labelled data", ""]
    if repeats > 1:
        lines += [f"Each point: the mean of {repeats} students, one per training seed (the same rows), and in "
                  "brackets the lowest and highest of them.", ""]
    lines += ["| point | curve | labelled rows | pseudo-labelled rows | macro-F1 | ROC AUC | accuracy |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for c in curves:
        lines.append(f"| {c['point']} | {c['curve']} | {c['labelled_rows']:,} | {c['pseudo_rows']:,} | "
                     f"{_spread(c, 'macro_f1')} | {_spread(c, 'auc')} | {_spread(c, 'accuracy')} |")
    for r in rounds.rounds:
        m = reports[f"teacher round {r.round}"].by_class
        lines.append(f"| teacher round {r.round} | teacher | | | {m.macro_f1:.4f} | {_f(m.roc_auc_macro)} | "
                     f"{m.accuracy:.4f} |")
    lines += ["", f"![Student quality against pseudo-labelled data]({plot})"]
    return "\n".join(lines)


def _rounds_section(rounds: Rounds, accuracy: list[dict], metric: str) -> str:
    lines = ["## Teacher rounds", "",
             f"Rounds stopped: {rounds.stopped}. The students learn round {rounds.best}'s labels (best validation "
             f"{metric}). Pseudo-label accuracy is measured against the pool's true labels where the data has them; "
             "they are never used in training.", "",
             "| round | pool rows in its fine-tuning | validation macro-F1 | validation AUC | gain | "
             "pseudo-label accuracy | pseudo-label macro-F1 | rows with a true label |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r, a in zip(rounds.rounds, accuracy, strict=True):
        gain = "" if r.gain is None else f"{r.gain:+.4f}"
        lines.append(f"| {r.round} | {r.pool_rows_used:,} | {_f(r.validation.get('macro_f1'))} | "
                     f"{_f(r.validation.get('auc'))} | {gain} | {_f(a.get('accuracy'))} | {_f(a.get('macro_f1'))} | "
                     f"{a['rows_with_true_label']:,} |")
    return "\n".join(lines)


ROUND_KEYS = (*TEACHER_KEYS, *SCORING_KEYS, "semi_supervised.rounds", "semi_supervised.min_gain",
              "semi_supervised.round_metric", "semi_supervised.round_targets", "semi_supervised.round_confidence",
              "semi_supervised.round_max_rows", "semi_supervised.seed")
MIX_KEYS = ("semi_supervised.ratios", "semi_supervised.train_rows", "semi_supervised.added_rows",
            "semi_supervised.repeats", "semi_supervised.confidence", "semi_supervised.balance",
            "semi_supervised.targets", "semi_supervised.seed")

STAGES = [
    Stage("prepare", run_prepare, reads=("classes", "data", "!data.noise"),
          about="read shards, quarantine bad rows, split by group"),
    Stage("finetune_teacher", run_finetune_teacher, reads=TEACHER_KEYS, inputs={"data": "prepare"},
          about="fine-tune the teacher on the labelled rows (Ray Train): round 1"),
    Stage("label", run_label, reads=SCORING_KEYS, inputs={"data": "prepare", "teachers": "finetune_teacher"},
          about="the teacher scores the labelled, unlabelled and test rows (Ray Data + vLLM): round 1"),
    Stage("rounds", run_rounds, reads=ROUND_KEYS,
          inputs={"data": "prepare", "teachers": "finetune_teacher", "labels": "label"},
          about="further rounds: fine-tune on labelled + pseudo-labelled rows, relabel, until budget or plateau"),
    Stage("train_students", run_train_students, reads=(*STUDENT_KEYS, "distillation", *MIX_KEYS),
          inputs={"data": "prepare", "rounds": "rounds"},
          about="one student per share of pseudo-labelled rows (Ray Train)"),
    Stage("export", run_export_chosen, reads=("positive_class", "evaluation.fprs", "export"),
          inputs={"students": "train_students", "data": "prepare"},
          about="ONNX export of the student with the best validation AUC, parity check, throughput"),
    Stage("evaluate", run_evaluate, reads=("positive_class", "evaluation"),
          inputs={"data": "prepare", "rounds": "rounds", "students": "train_students", "export": "export"},
          about="every student and every round's teacher on the same test rows; curves; report"),
]
