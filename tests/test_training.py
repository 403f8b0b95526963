"""Student training on Ray Train with real command lines: learning, restart after a killed worker,
continued training, and the plain model folder that evaluation and export read without Ray."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from drills import FailOnce

from smallsec_ray.errors import DataError, StageError
from smallsec_ray.spec import DistillationSpec, StudentSpec, TrainingSpec
from smallsec_ray.students import build_student, student_config
from smallsec_ray.students.folder import Lineage, ModelConfig, load_model
from smallsec_ray.training.trainer import EncodeBatch, StudentTask, length_grouped, train_student

CLASSES = ["benign", "malicious"]
SOURCES = {"atomic_red_team.jsonl": 450, "gtfobins.jsonl": 350, "tldr.jsonl.gz": 600, "nl2bash.jsonl": 600}


def cmdline_slice(data_dir, sources: dict[str, int], seed: int = 0) -> pd.DataFrame:
    """`n` rows of each named cmdline file (text, label), shuffled."""
    frames = [pd.read_json(data_dir / "cmdline" / name, lines=True)[["text", "label"]].sample(n, random_state=seed)
              for name, n in sources.items()]
    return pd.concat(frames).sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="module")
def rows(shared_data):
    """2,000 real rows: 800 malicious (Atomic Red Team, GTFOBins), 1,200 benign (tldr, NL2Bash)."""
    frame = cmdline_slice(shared_data, SOURCES)
    return frame.iloc[:1600].reset_index(drop=True), frame.iloc[1600:].reset_index(drop=True)


def accuracy_without_ray(folder, val: pd.DataFrame) -> tuple[float, list[str]]:
    model, encoder, config = load_model(folder)
    with torch.no_grad():
        predicted = model(torch.from_numpy(encoder.encode(list(val["text"])))).argmax(dim=1).numpy()
    return float(np.mean(np.array(config.classes)[predicted] == val["label"].to_numpy())), config.classes


def spec(scaling: dict | None = None, **overrides) -> TrainingSpec:
    base = dict(epochs=3, batch_size=64, learning_rate=3e-3, early_stopping_patience=0,
                scaling={"strategy": "deepspeed", "zero_stage": 2, "workers": 2, "cpus_per_worker": 1.0,
                         "max_failures": 1, **(scaling or {})})
    return TrainingSpec(**{**base, **overrides})


@pytest.fixture(scope="module")
def trained(ray_local, rows, tmp_path_factory):
    """A student trained once with DeepSpeed ZeRO-2 on 2 workers; half the rows carry soft labels."""
    train, val = rows
    train = train.assign(probs=[[0.9, 0.1] if label == "benign" else [0.1, 0.9] for label in train["label"]])
    out = tmp_path_factory.mktemp("student")
    result = train_student(spec(), StudentSpec(preset="tiny"), CLASSES,
                           ray_local.data.from_pandas(train), ray_local.data.from_pandas(val), out,
                           distillation=DistillationSpec(alpha=0.5), lineage=Lineage(job="unit"))
    return result, out


@pytest.mark.timeout(300)
def test_deepspeed_two_workers_learns_and_saves_a_plain_model_folder(trained, rows):
    result, out = trained
    _, val = rows
    majority = val["label"].value_counts(normalize=True).max()
    best = result.epochs[result.best_epoch - 1]
    assert [m["epoch"] for m in result.epochs] == [1, 2, 3]
    assert best["val_loss"] == min(m["val_loss"] for m in result.epochs)
    assert best["val_accuracy"] > majority + 0.15, (best, majority)
    assert 0.7 < best["val_auc"] <= 1.0  # AUC over both workers' validation rows
    assert result.samples_per_s > 0
    # The saved folder is the best epoch's model, and it scores the same without Ray.
    accuracy, classes = accuracy_without_ray(result.model_dir, val)
    assert classes == CLASSES
    assert accuracy == pytest.approx(best["val_accuracy"], abs=0.01)
    assert result.model_dir == str(out / "model") and result.train_rows == len(rows[0])
    assert load_model(result.model_dir)[2].lineage.job == "unit"


@pytest.mark.timeout(300)
def test_killed_worker_restarts_from_last_checkpoint_and_finishes(ray_local, rows, tmp_path):
    train, val = rows
    marker = tmp_path / "worker-killed"
    steps_per_epoch = math.ceil(len(train) / 2 / 64)  # 13: each worker gets half the rows
    # Checkpoints after epoch 1 (step 13) and at steps 5, 10, 15; a worker dies at step 16.
    # With a warmup and cosine decay: the schedule's state is part of the checkpoint it resumes from.
    # Ids: the resumed epoch leaves out the rows it trained on by id.
    train = train.assign(id=[f"row-{i}" for i in range(len(train))])
    result = train_student(spec(epochs=2, checkpoint_every_steps=5, schedule="cosine", warmup=0.2),
                           StudentSpec(preset="tiny"), CLASSES,
                           ray_local.data.from_pandas(train), ray_local.data.from_pandas(val), tmp_path / "out",
                           distillation=DistillationSpec(), callbacks=[FailOnce(steps_per_epoch + 3, str(marker))])
    assert marker.exists(), "the drill did not kill a worker"
    assert [m["epoch"] for m in result.epochs] == [1, 2]
    # The restarted group resumed mid-epoch 2 from the step-15 checkpoint, not from scratch, and left out
    # the rows of the 2 batches of epoch 2 it had already trained on (test_node_loss checks them by id).
    assert [m["resumed_at_step"] for m in result.epochs] == [0, 15]
    assert result.epochs[-1]["global_step"] == 2 * steps_per_epoch
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()


@pytest.mark.timeout(300)
def test_continued_training_starts_from_the_saved_model_with_ddp_bf16(ray_local, trained, rows, tmp_path):
    result, out = trained
    train, val = rows
    more = train_student(spec({"strategy": "ddp", "precision": "bf16"}, epochs=1, select_by="auc"),
                         StudentSpec(preset="default", init_from=str(out / "model")), CLASSES,
                         ray_local.data.from_pandas(train), ray_local.data.from_pandas(val), tmp_path,
                         lineage=Lineage(job="more"))
    first_epoch_from_scratch = result.epochs[0]["val_loss"]
    assert more.epochs[0]["val_loss"] < first_epoch_from_scratch
    assert more.epochs[0]["val_accuracy"] >= result.epochs[result.best_epoch - 1]["val_accuracy"] - 0.05
    # The preset is ignored: the architecture is the parent's; the lineage names the parent.
    _, _, config = load_model(more.model_dir)
    assert config.architecture == load_model(result.model_dir)[2].architecture
    assert config.lineage.job == "more" and config.lineage.parent["job"] == "unit"


def test_rows_are_encoded_with_labels_by_class_name():
    from smallsec_ray.students import build_student, student_config

    model, encoder = build_student("char_cnn", "tiny", 2)
    task = StudentTask(ModelConfig(student_config(model), encoder.config(), CLASSES, Lineage()), DistillationSpec())
    task.build()
    batch = EncodeBatch(task)({"text": np.array(["whoami", "ls -la"], dtype=object),
                               "label": np.array(["malicious", None], dtype=object),
                               "probs": np.array([np.array([0.2, 0.8]), np.array([0.7, 0.3])], dtype=object)})
    assert batch["labels"].tolist() == [1, -1]
    assert batch["probs"].shape == (2, 2) and batch["ids"].shape == (2, 64)
    with pytest.raises(DataError, match="'phishing' is not one of the classes"):
        EncodeBatch(task)({"text": np.array(["x"], dtype=object), "label": np.array(["phishing"], dtype=object)})


def test_learning_rate_warms_up_then_decays_to_zero_at_the_last_step():
    from smallsec_ray.training.engine import lr_factor

    linear = lr_factor(TrainingSpec(schedule="linear", warmup=0.1), total_steps=100)
    assert [round(linear(s), 3) for s in (0, 4, 9, 10, 55, 100)] == [0.1, 0.5, 1.0, 1.0, 0.5, 0.0]
    cosine = lr_factor(TrainingSpec(schedule="cosine", warmup=0.0), total_steps=100)
    assert cosine(0) == 1.0 and abs(cosine(50) - 0.5) < 1e-9 and cosine(100) < 1e-12
    assert lr_factor(TrainingSpec(), total_steps=10)(7) == 1.0  # constant, no warmup


def test_deepspeed_on_cpu_does_not_compile_its_inference_all_reduce(tmp_path):
    """The op costs 30-60 s of compiling on a fresh machine (a user's first `make run`, every CI run) and
    training never calls it. In a fresh process, with an empty extensions folder."""
    import subprocess
    import sys

    code = ("from smallsec_ray.training.engine import skip_inference_comm_op; skip_inference_comm_op(); "
            "from deepspeed.comm.torch import build_shm_op; print(build_shm_op())")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "DS_ACCELERATOR": "cpu"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "None" and not list(tmp_path.iterdir())


def test_checkpoint_folders_hold_no_glob_characters():
    import glob

    from smallsec_ray.training.trainer import storage_name

    for name in ("finetune_teacher[round 2]", "train_students[r=0.5]", "label[1]", "train_student"):
        assert glob.escape(storage_name(name)) == storage_name(name), name


def test_length_grouped_batches_hold_every_row_once_in_rows_of_similar_length(ray_local):
    texts = ["x" * n for n in np.random.default_rng(0).permutation(np.arange(1, 301))]
    frame = pd.DataFrame({"text": texts, "label": ["benign"] * 300})
    model, encoder = build_student("char_cnn", "tiny", len(CLASSES), 400)
    task = StudentTask(ModelConfig(student_config(model), encoder.config(), CLASSES, Lineage()), None)
    task.build()
    encode = EncodeBatch(task)
    dataset = ray_local.data.from_pandas(frame)

    def lengths(seed):
        batches = length_grouped(dataset, 10, encode, shuffle_seed=seed, group=5, device=torch.device("cpu"))
        return [sorted((b["ids"] > 0).sum(dim=1).tolist()) for b in batches]

    first = lengths(0)
    assert sorted(n for b in first for n in b) == list(range(1, 301))  # every row once
    assert len(first) == 30 and all(len(b) == 10 for b in first)
    spans = [b[-1] - b[0] for b in first]
    assert np.mean(spans) < 60  # a random batch of 10 from 1..300 spans ~245
    assert lengths(0) == first and lengths(1) != first  # a seeded order, another each epoch


def test_mid_epoch_checkpoints_without_row_ids_are_refused(ray_local, rows, tmp_path):
    train, val = rows
    with pytest.raises(StageError, match="checkpoint_every_steps needs an 'id' column"):
        train_student(spec(checkpoint_every_steps=5), StudentSpec(preset="tiny"), CLASSES,
                      ray_local.data.from_pandas(train), ray_local.data.from_pandas(val), tmp_path)
