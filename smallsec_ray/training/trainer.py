"""Training on Ray Train: a TorchTrainer runs `train_loop_per_worker` on every worker, with DeepSpeed
or DDP (see engine.py) as the spec says.

Each worker reads its shard of the rows, encodes the text, computes the distillation loss against the
hard labels and the teacher's probabilities, and steps. After every epoch (and every N steps if set)
the workers validate, save a checkpoint and report it; Ray Train keeps the best (by validation loss)
and the latest. A worker that dies makes Ray Train restart the group, which resumes from the latest
checkpoint. The best model is copied out as a plain folder that `load_student` reads without Ray.

Resuming mid-epoch: Ray Data need not hand the rows out in the same order after a restart (the split over
workers is dynamic, and the group may come back on other nodes), so a checkpoint keeps which rows of the
current epoch were trained on, as 64-bit keys of their ids (8 bytes a row, each rank its own file), and the
resumed epoch drops those rows before batching: every row is trained on once per epoch.

Out folder:  model/ (config.json + model.safetensors)   metrics.json   checkpoints/ (Ray Train storage)
A rerun into the same out folder continues from its latest checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import ray.train
import torch
import torch.distributed as dist
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from sklearn.metrics import roc_auc_score
from torch import nn

from smallsec_ray import console, storage
from smallsec_ray.data.schema import ID, LABEL, PROBS, TEXT, WEIGHT
from smallsec_ray.errors import DataError, StageError
from smallsec_ray.label_policy import PolicyReport
from smallsec_ray.placement import check_request
from smallsec_ray.spec import DistillationSpec, FitSpec, StudentSpec
from smallsec_ray.students import build_from_config, build_student, student_config
from smallsec_ray.students.encoders import encoder_from_config
from smallsec_ray.students.folder import MODEL_DIR, Lineage, ModelConfig, load_model, save_model
from smallsec_ray.training.engine import build_engine
from smallsec_ray.training.loss import distillation_loss

CHECKPOINTS_DIR, METRICS_FILE, PROGRESS_FILE = "checkpoints", "metrics.json", "progress.json"
TRAINED_FILES = "trained-rows.rank-{rank}.npy"  # in a checkpoint: keys of the rows its epoch has trained on
ROW_KEYS = "row_keys"  # in an encoded batch: the rows' keys (when the rows have ids)
SHUFFLE_BUFFER = 10_000  # rows; shard files often hold one source (one class) each


class Task(Protocol):
    """What the loop needs to know about a model: how to build it, feed it, score its loss and save it."""

    @property
    def classes(self) -> list[str]: ...

    @property
    def use_soft_labels(self) -> bool: ...

    def build(self) -> nn.Module: ...

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]: ...

    def logits(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def save(self, state_dict: dict[str, torch.Tensor], folder: Path) -> None: ...

    def save_dtype(self, precision: str) -> torch.dtype: ...


@dataclass
class StudentTask:
    config: ModelConfig  # the model being trained: architecture, encoder, classes, lineage
    distillation: DistillationSpec | None  # None: hard labels only (the baseline)
    init_state: dict[str, torch.Tensor] | None = None  # weights to continue training from

    @property
    def classes(self) -> list[str]:
        return self.config.classes

    @property
    def use_soft_labels(self) -> bool:
        return self.distillation is not None

    def build(self) -> nn.Module:
        model, _ = build_from_config(self.config.architecture)
        self._encoder = encoder_from_config(self.config.encoder)
        if self.init_state is not None:
            model.load_state_dict(self.init_state)
        return model

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return {"ids": torch.from_numpy(self._encoder.encode(texts))}

    def logits(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(batch["ids"])

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.distillation is None:
            return distillation_loss(logits, batch["labels"], None, 1.0, 1.0, batch.get("weights"))
        return distillation_loss(logits, batch["labels"], batch.get("probs"), self.distillation.alpha,
                                 self.distillation.temperature, batch.get("weights"))

    def save(self, state_dict: dict[str, torch.Tensor], folder: Path) -> None:
        save_model(folder, state_dict, self.config)

    def save_dtype(self, precision: str) -> torch.dtype:
        return torch.float32  # students are small; their folders stay fp32 whatever the training precision


class EncodeBatch(NumpyBatchCollateFn):
    """Rows -> model inputs plus targets: labels (class index, -1 where none), probs, weights."""

    def __init__(self, task: Task):
        self.task = task
        self.index = {name: i for i, name in enumerate(task.classes)}

    # Ray types the result as CollatedData, a TypeVar bound to nothing, which no concrete type overrides.
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        out = self.task.encode([str(t) for t in batch[TEXT]])
        out["labels"] = torch.tensor([self._label_id(x) for x in batch[LABEL]], dtype=torch.long)
        if self.task.use_soft_labels and PROBS in batch:
            if any(p is None for p in batch[PROBS]):
                raise DataError(f"some rows have no {PROBS!r} while others do; label every row with the "
                                f"teacher, or train with use_soft_labels=False")
            out["probs"] = torch.from_numpy(np.stack(list(batch[PROBS])).astype(np.float32))
        if WEIGHT in batch:
            out["weights"] = torch.from_numpy(batch[WEIGHT].astype(np.float32))
        if ID in batch:
            out[ROW_KEYS] = torch.from_numpy(row_keys(batch[ID]))
        return out

    def _label_id(self, label: Any) -> int:
        if label is None or label != label:  # null (None, or NaN from pandas)
            return -1
        if label not in self.index:
            raise DataError(f"row label {label!r} is not one of the classes {list(self.index)}; fix the rows "
                            "or add the class to `classes` in the spec")
        return self.index[label]


def row_keys(ids: Any) -> np.ndarray:
    """64-bit keys (blake2b) of row ids: what a checkpoint keeps of the rows an epoch has trained on. Two of
    n ids share a key with odds of about n^2 / 2^65 (3e-8 at a million rows)."""
    digests = b"".join(hashlib.blake2b(str(i).encode(), digest_size=8).digest() for i in ids)
    return np.frombuffer(digests, dtype="<i8").copy()


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so a restarted worker group resumes."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # batches done in the current epoch
    global_step: int = 0
    best_score: float = float("inf")  # of fit.select_by, lower is better (AUC is kept negated)
    bad_epochs: int = 0  # epochs since the best validation loss
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, folder: Path) -> Progress:
        return cls(**json.loads((folder / PROGRESS_FILE).read_text()))

    def write(self, folder: Path) -> None:
        (folder / PROGRESS_FILE).write_text(json.dumps(asdict(self), indent=1))

    def out_of_patience(self, patience: int) -> bool:
        return patience > 0 and self.bad_epochs >= patience


def train_loop_per_worker(config: dict[str, Any]) -> None:
    task: Task = config["task"]
    training: FitSpec = config["fit"]
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(config.get("seed", 0))
    engine = build_engine(task.build(), training, config["total_steps"])
    encode = EncodeBatch(task)

    progress = Progress()
    trained = np.zeros(0, np.int64)  # keys of the rows the current epoch trained on before a restart (all ranks)
    checkpoint = ray.train.get_checkpoint()  # set after a restart, or when continuing a run
    if checkpoint:
        with checkpoint.as_directory() as folder:
            engine.load(Path(folder))
            progress = Progress.read(Path(folder))
            trained = read_trained(Path(folder))
    resumed_at_step = progress.global_step  # 0 for a fresh start; shows restarts in the metrics
    filler = no_signal_batch(encode, engine.device)

    train_rows = ray.train.get_dataset_shard("train")
    val_rows = ray.train.get_dataset_shard("validation")
    while progress.epoch < training.epochs and not progress.out_of_patience(training.early_stopping_patience):
        engine.train()
        sums = torch.zeros(2, dtype=torch.float64, device=engine.device)  # loss x rows, rows (no per-step sync)
        started = time.perf_counter()
        mine: list[np.ndarray] = [trained] if rank == 0 else []  # this epoch's keys in this rank's checkpoints
        batches = epoch_batches(train_rows, training, encode, progress.epoch, trained, config.get("seed", 0))
        if len(trained):  # ranks hold different numbers of rows not yet trained on: keep them in step
            batches = in_lockstep(batches, filler, engine.device)
        for batch in batches:
            logits = task.logits(engine, batch).float()
            loss = task.loss(logits, batch)
            engine.backward(loss)
            engine.step()
            progress.step_in_epoch += 1
            progress.global_step += 1
            rows = len(batch[ROW_KEYS]) if ROW_KEYS in batch else len(logits)
            sums[0] += loss.detach() * rows
            sums[1] += rows
            if ROW_KEYS in batch:
                mine.append(batch[ROW_KEYS].cpu().numpy())
            for callback in config["callbacks"]:
                callback(progress, resumed_at_step, batch)
            if training.checkpoint_every_steps and progress.global_step % training.checkpoint_every_steps == 0:
                metrics = validate(engine, task, encode, val_rows, training)
                save_and_report(engine, task, progress, metrics, training,
                                np.concatenate([np.zeros(0, np.int64), *mine]))

        seconds = time.perf_counter() - started
        train_loss_sum, rows = all_sum(sums, engine.device).tolist()
        metrics = validate(engine, task, encode, val_rows, training)
        progress.epoch += 1
        progress.step_in_epoch = 0
        trained = np.zeros(0, np.int64)
        if score(metrics, training) < progress.best_score:
            progress.best_score, progress.bad_epochs = score(metrics, training), 0
        else:
            progress.bad_epochs += 1
        metrics.update(epoch=progress.epoch, global_step=progress.global_step, resumed_at_step=resumed_at_step,
                       train_loss=train_loss_sum / max(rows, 1), train_rows=int(rows), train_seconds=seconds,
                       samples_per_s=rows / seconds)
        progress.history.append(metrics)
        if rank == 0:
            stop = progress.out_of_patience(training.early_stopping_patience) and progress.epoch < training.epochs
            console.post(config["relay"], f"    {config['name']}: " + epoch_line(metrics, training.epochs)
                         + ("  (early stop)" if stop else ""))
        save_and_report(engine, task, progress, metrics, training, trained)


def epoch_batches(rows: Any, training: FitSpec, encode: EncodeBatch, epoch: int,
                  trained: np.ndarray, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch's training batches, in an order set by the fit's seed and the epoch; without the rows whose
    keys are in `trained` (done before a restart), which are dropped before batching, so that batches stay
    full."""
    order = epoch + 100_003 * seed
    if training.group_by_length:
        return length_grouped(rows, training.batch_size, encode, shuffle_seed=order, skip=trained)
    if len(trained):
        return unseen_batches(rows, training.batch_size, encode, order, trained)
    return rows.iter_torch_batches(batch_size=training.batch_size, collate_fn=encode,
                                   local_shuffle_buffer_size=SHUFFLE_BUFFER, local_shuffle_seed=order)


def in_lockstep(batches: Iterator[dict[str, torch.Tensor]], filler: dict[str, torch.Tensor],
                device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """The batches, then `filler` until every rank has run out: data-parallel ranks must take the same
    steps, and after a restart each holds a different number of rows still to train on. Costs one small
    all-reduce a step, in the resumed epoch only."""
    batches = iter(batches)
    while True:
        batch = next(batches, None)
        if all_sum(torch.tensor([batch is not None], dtype=torch.float64), device).item() == 0:
            return
        yield filler if batch is None else batch


def no_signal_batch(encode: EncodeBatch, device: torch.device) -> dict[str, torch.Tensor]:
    """One empty row without a label: a step on it gives a zero loss that still runs backward (see loss.py)."""
    batch = encode({TEXT: np.array([""], dtype=object), LABEL: np.array([None], dtype=object)})
    batch[ROW_KEYS] = torch.zeros(0, dtype=torch.int64)  # counts as no row
    return {name: tensor.to(device) for name, tensor in batch.items()}


def read_trained(folder: Path) -> np.ndarray:
    """The keys of the rows a checkpoint's epoch has trained on, from every rank's file."""
    parts = [np.load(path) for path in folder.glob(TRAINED_FILES.format(rank="*"))]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def epoch_line(m: dict[str, Any], epochs: int) -> str:
    accuracy = "n/a" if m["val_accuracy"] is None else f"{m['val_accuracy']:.4f}"
    auc = "n/a" if m["val_auc"] is None else f"{m['val_auc']:.4f}"
    return (f"epoch {m['epoch']}/{epochs}  train_loss {m['train_loss']:.4f}  val_loss {m['val_loss']:.4f}  "
            f"val_accuracy {accuracy}  val_auc {auc}  {m['samples_per_s']:,.0f} samples/s")


def score(metrics: dict[str, Any], training: FitSpec) -> float:
    """The number the best epoch and early stopping minimise: validation loss, or minus validation AUC."""
    if training.select_by == "loss":
        return metrics["val_loss"]
    return -metrics["val_auc"] if metrics["val_auc"] is not None else float("inf")


def length_grouped(rows: Any, batch_size: int, encode: EncodeBatch, shuffle_seed: int | None = None,
                   group: int = 16, device: torch.device | None = None,
                   skip: np.ndarray | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of rows of similar length, so that little of each batch is padding: `group` batches at a time
    are sorted by text length and cut into batches, taken in a seeded random order (training) or in order
    (`shuffle_seed` None: validation). Every worker cuts the same number of batches from the same number of
    rows, so data-parallel steps stay in lockstep (rows left out by `skip`, row keys, break that: see
    in_lockstep)."""
    device = device or ray.train.torch.get_device()
    for i, chunk in enumerate(_chunks(rows, batch_size * group, shuffle_seed, skip)):
        by_length = np.argsort([len(str(t)) for t in chunk[TEXT]], kind="stable")
        cuts = [by_length[k:k + batch_size] for k in range(0, len(by_length), batch_size)]
        if shuffle_seed is not None:
            cuts = [cuts[k] for k in np.random.default_rng([shuffle_seed, i]).permutation(len(cuts))]
        for cut in cuts:
            batch = encode({name: values[cut] for name, values in chunk.items()})
            yield {name: tensor.to(device) for name, tensor in batch.items()}


def unseen_batches(rows: Any, batch_size: int, encode: EncodeBatch, shuffle_seed: int, skip: np.ndarray,
                   group: int = 16, device: torch.device | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of the rows whose keys are not in `skip`, in a seeded order: `group` batches' worth of rows at a
    time, less the skipped ones, cut into batches (the last of each group may be short)."""
    device = device or ray.train.torch.get_device()
    for chunk in _chunks(rows, batch_size * group, shuffle_seed, skip):
        for k in range(0, len(chunk[TEXT]), batch_size):
            batch = encode({name: values[k:k + batch_size] for name, values in chunk.items()})
            yield {name: tensor.to(device) for name, tensor in batch.items()}


def _chunks(rows: Any, size: int, shuffle_seed: int | None, skip: np.ndarray | None) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches of `size` rows (shuffled with a seed, if given), less the rows whose keys are in `skip`."""
    chunks = rows.iter_batches(batch_size=size, batch_format="numpy",
                               **({"local_shuffle_buffer_size": SHUFFLE_BUFFER, "local_shuffle_seed": shuffle_seed}
                                  if shuffle_seed is not None else {}))
    for chunk in chunks:
        if skip is not None and len(skip):
            keep = ~np.isin(row_keys(chunk[ID]), skip)
            chunk = {name: values[keep] for name, values in chunk.items()}
        yield chunk


def validate(engine: Any, task: Task, encode: EncodeBatch, rows: Any, training: FitSpec) -> dict[str, Any]:
    """Loss (the training objective), accuracy and ROC AUC (rows with a hard label; macro one-vs-rest for
    more than two classes) over all ranks' shards."""
    engine.train(False)
    sums = torch.zeros(4, dtype=torch.float64)  # loss x rows, rows, correct, labelled rows
    scored: list[tuple[np.ndarray, np.ndarray]] = []  # (probabilities, labels) of labelled rows
    with torch.no_grad():
        batches = (length_grouped(rows, training.batch_size, encode) if training.group_by_length else
                   rows.iter_torch_batches(batch_size=training.batch_size, collate_fn=encode))
        for batch in batches:
            logits = task.logits(engine, batch).float()
            labels = batch["labels"]
            loss = task.loss(logits, batch)
            labelled = labels >= 0
            correct = (logits.argmax(dim=1) == labels)[labelled].sum()
            sums += torch.tensor([loss.item() * len(labels), len(labels), correct.item(), labelled.sum().item()],
                                 dtype=torch.float64)
            scored.append((torch.softmax(logits[labelled], -1).cpu().numpy(), labels[labelled].cpu().numpy()))
    engine.train(True)
    loss_sum, n, correct, labelled = all_sum(sums, engine.device).tolist()
    if n == 0:
        raise StageError("the validation split reached the workers empty; give more validation rows")
    return {"val_loss": loss_sum / n, "val_accuracy": correct / labelled if labelled else None,
            "val_auc": roc_auc(all_gather(scored), len(task.classes)), "val_rows": int(n)}


def all_gather(parts: list[Any]) -> list[Any]:
    """Every rank's list items, on every rank (validation scores are small)."""
    if not dist.is_initialized():
        return parts
    gathered: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, parts)
    return [item for rank in gathered for item in rank]


def roc_auc(scored: list[tuple[np.ndarray, np.ndarray]], num_classes: int) -> float | None:
    """ROC AUC of (probabilities, label) pairs: of class 1 for two classes, macro one-vs-rest beyond; None
    when the labels hold one class only."""
    probs = np.concatenate([p for p, _ in scored]) if scored else np.zeros((0, num_classes))
    labels = np.concatenate([y for _, y in scored]) if scored else np.zeros(0, int)
    present = np.unique(labels)
    if len(present) < 2:
        return None
    if num_classes == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(np.mean([roc_auc_score(labels == c, probs[:, c]) for c in present]))


def all_sum(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sums `values` over the workers (NCCL needs them on the GPU)."""
    if not dist.is_initialized():
        return values
    values = values.to(device)
    dist.all_reduce(values)
    return values.cpu()


def save_and_report(engine: Any, task: Task, progress: Progress, metrics: dict[str, Any], training: FitSpec,
                    trained: np.ndarray) -> None:
    """Every rank writes its part (ZeRO shards, the keys of the rows it trained on in this epoch: `trained`)
    to its own folder; Ray Train merges them into one checkpoint: model/ (the rebuildable model), the
    engine's training state, progress.json, trained-rows.rank-*.npy."""
    state = engine.full_state_dict(task.save_dtype(training.scaling.precision))  # collective under ZeRO-3
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        engine.save(folder)
        if state is not None:
            task.save(state, folder / MODEL_DIR)
            progress.write(folder)
        if len(trained):
            np.save(folder / TRAINED_FILES.format(rank=ray.train.get_context().get_world_rank()), trained)
        has_files = any(folder.iterdir())
        report = {"global_step": progress.global_step, "epochs_done": progress.epoch, **metrics}
        ray.train.report(report, checkpoint=Checkpoint.from_directory(tmp) if has_files else None)


class StepCallback(Protocol):
    """Called by every rank after each optimizer step, in the worker (where ray.train.get_context() works): what
    a caller adds to the loop without changing it, e.g. the fault drills of the tests (tests/drills.py). It must
    pickle (Ray sends it to the workers)."""

    def __call__(self, progress: Progress, resumed_at_step: int, batch: dict[str, torch.Tensor]) -> None: ...


@dataclass
class TrainedModel:
    """A training stage's result."""

    model_dir: str  # the best epoch's model folder (students.folder format for students)
    epochs: list[dict[str, Any]]  # metrics of every epoch
    best_epoch: int  # 1-based epoch whose model model_dir holds (0: a mid-epoch checkpoint)
    samples_per_s: float  # training rows per second over all epochs (validation excluded)
    train_rows: int  # rows of one epoch, all workers
    label_policy: PolicyReport | None = None  # what a distilled student's label policy did to the noisy rows


def storage_name(name: str) -> str:
    """The checkpoint folder of a run named `name` ("finetune_teacher[round 2]" -> "finetune_teacher_round_2_"):
    DeepSpeed finds its checkpoint files with glob, and brackets in the path would match nothing on resume."""
    return re.sub(r"[^\w.=-]", "_", name)


def fit(task: Task, training: FitSpec, train_ds: Any, val_ds: Any, out_dir: str | Path, name: str,
        callbacks: Sequence[StepCallback] = (), seed: int = 0, store_dir: str | None = None,
        spec_key: str = "training") -> TrainedModel:
    """Runs `train_loop_per_worker` on Ray Train (Ray must be up) and copies the best model to out_dir/model
    (a local folder). The checkpoints go to `store_dir`/checkpoints: out_dir's place in the run's output
    (a shared path or an object-store URI that every worker writes to; default out_dir). `seed` tells apart
    the fits of one spec (ensemble members, repeats: 0, 1, ...); the fit spec's own seed sets the rest, so
    that every fit's initial weights and batch order are 1000 * training.seed + seed. `spec_key` is where `training`
    sits in the job spec, for errors."""
    seed = 1000 * training.seed + seed
    out_dir = Path(out_dir).resolve()
    checkpoints = storage.join(store_dir or str(out_dir), CHECKPOINTS_DIR)
    scaling = training.scaling
    if training.max_rows:
        train_ds = train_ds.limit(training.max_rows)
    if training.materialize:  # the files are read once, not once per epoch and per validation
        train_ds, val_ds = train_ds.materialize(), val_ds.materialize()
    val_count = val_ds.count()
    if val_count < scaling.workers:
        raise StageError(f"{name}: {val_count} validation rows for {scaling.workers} workers; each worker "
                         "validates on its own share, so give at least one validation row per worker")
    train_count = train_ds.count()
    if train_count < scaling.workers:
        raise StageError(f"{name}: {train_count} training rows for {scaling.workers} workers; give more rows")
    if training.checkpoint_every_steps and ID not in train_ds.schema().names:
        raise StageError(f"{name}: checkpoint_every_steps needs an {ID!r} column in the training rows (a run "
                         "that resumes mid-epoch leaves out the rows it trained on by id); give the rows ids, "
                         "or checkpoint at epoch ends only")
    steps_per_epoch = math.ceil(train_count / scaling.workers / training.batch_size)
    use_gpu = scaling.gpus_per_worker > 0
    best_by = ("val_loss", "min") if training.select_by == "loss" else ("val_auc", "max")
    resources = {"CPU": scaling.cpus_per_worker, **({"GPU": scaling.gpus_per_worker} if use_gpu else {}),
                 **scaling.resources}
    check_request(f"{spec_key}.scaling", "worker", resources, scaling.workers)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"task": task, "fit": training, "total_steps": steps_per_epoch * training.epochs,
                           "name": name, "relay": console.relay(), "callbacks": list(callbacks), "seed": seed},
        scaling_config=ScalingConfig(num_workers=scaling.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=storage_name(name), storage_path=checkpoints,
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=training.keep_checkpoints,
                                               checkpoint_score_attribute=best_by[0],
                                               checkpoint_score_order=best_by[1]),
            # ray.train's RunConfig is Train v2's at run time, but its typing is v1's, which lacks this key.
            worker_runtime_env={"env_vars": {"DS_ACCELERATOR": "cuda" if use_gpu else "cpu"}}),  # type: ignore[call-arg]
        datasets={"train": train_ds.randomize_block_order(seed=seed), "validation": val_ds},
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise StageError(f"{name}: training failed (after up to {scaling.max_failures} restarts): {err}") from err
    best = result.get_best_checkpoint(*best_by)
    if best is None or result.checkpoint is None:
        raise StageError(f"{name}: training reported no checkpoint; see the worker logs in the job log")
    model_dir = out_dir / MODEL_DIR
    shutil.rmtree(model_dir, ignore_errors=True)
    with best.as_directory() as folder:
        shutil.copytree(Path(folder) / MODEL_DIR, model_dir)
        best_progress = Progress.read(Path(folder))
    with result.checkpoint.as_directory() as folder:
        history = Progress.read(Path(folder)).history
    best_epoch = best_progress.epoch if best_progress.step_in_epoch == 0 else 0
    rows = sum(m["train_rows"] for m in history)
    seconds = sum(m["train_seconds"] for m in history)
    trained = TrainedModel(str(model_dir), history, best_epoch, rows / seconds if seconds else 0.0,
                           history[-1]["train_rows"] if history else 0)
    (out_dir / METRICS_FILE).write_text(json.dumps(asdict(trained), indent=1))
    return trained


def train_student(training: FitSpec, student: StudentSpec, classes: list[str], train_ds: Any, val_ds: Any,
                  out_dir: str | Path, distillation: DistillationSpec | None = None,
                  lineage: Lineage | None = None, name: str = "train_student",
                  callbacks: Sequence[StepCallback] = (), seed: int = 0, store_dir: str | None = None,
        spec_key: str = "training") -> TrainedModel:
    """Trains a student on `train_ds` (columns text, label, and probs when `distillation` is given; weight
    optional), picking the best epoch on `val_ds`. With student.init_from, training continues from that
    model folder (trained or shipped): its weights, architecture and encoder, e.g. a production model
    given new rows. `callbacks` run in every worker after each step (StepCallback: the tests' fault drills)."""
    lineage = lineage or Lineage()
    if student.init_from:
        model, _encoder, parent = load_model(student.init_from)
        if parent.classes != list(classes):
            raise StageError(f"student.init_from: {student.init_from} was trained on classes {parent.classes}, "
                             f"but this job has {list(classes)}; use the same classes in the same order")
        lineage.parent = asdict(parent.lineage)
        config = ModelConfig(parent.architecture, parent.encoder, list(classes), lineage)
        task = StudentTask(config, distillation, init_state=model.state_dict())
    else:
        model, encoder = build_student(student.model, student.preset, len(classes), student.max_length)
        config = ModelConfig(student_config(model), encoder.config(), list(classes), lineage)
        task = StudentTask(config, distillation)
    return fit(task, training, train_ds, val_ds, out_dir, name=name, callbacks=callbacks, seed=seed,
               store_dir=store_dir)
