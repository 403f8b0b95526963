"""Teacher fine-tuning on Ray Train (DeepSpeed ZeRO-2 fp32 and ZeRO-3 bf16, 2 workers) with real command
lines: the result is a Hugging Face folder that transformers loads, names its labels by class, and beats
chance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny_models import make_tiny_classifier
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from smallsec_ray.spec import FinetuneSpec
from smallsec_ray.teachers.finetune import finetune_teacher

CLASSES = ["benign", "malicious"]


@pytest.fixture(scope="module")
def rows(shared_data):
    """1,200 real rows, half malicious (Atomic Red Team, GTFOBins), half benign (tldr, NL2Bash); 100
    training rows have no label (fine-tuning reads only the labelled ones)."""
    from test_training import cmdline_slice

    frame = cmdline_slice(shared_data, {"atomic_red_team.jsonl": 300, "gtfobins.jsonl": 300,
                                        "tldr.jsonl.gz": 300, "nl2bash.jsonl": 300}, seed=1)
    train, val = frame.iloc[:1000].copy(), frame.iloc[1000:].reset_index(drop=True)
    train.loc[train.index[:100], "label"] = None
    return train, val


def accuracy_with_transformers(folder, val) -> float:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    enc = tokenizer(list(val["text"]), padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**enc).logits.argmax(dim=1).tolist()
    names = [model.config.id2label[i] for i in predicted]
    return sum(n == label for n, label in zip(names, val["label"], strict=True)) / len(val)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("zero_stage", "precision", "group_by_length"), [(2, "fp32", False), (3, "bf16", True)])
def test_finetuned_teacher_folder_loads_in_transformers_and_beats_chance(ray_local, rows, tmp_path, zero_stage,
                                                                         precision, group_by_length):
    train, val = rows
    teacher = make_tiny_classifier(tmp_path / "tiny", CLASSES)
    finetune = FinetuneSpec(epochs=3, batch_size=32, learning_rate=1e-3, early_stopping_patience=0,
                            group_by_length=group_by_length,
                            scaling={"strategy": "deepspeed", "zero_stage": zero_stage, "precision": precision,
                                     "workers": 2, "cpus_per_worker": 1.0})
    trained = finetune_teacher(teacher, CLASSES, ray_local.data.from_pandas(train), ray_local.data.from_pandas(val),
                               finetune, max_length=64, out_dir=tmp_path / "out")
    folder = Path(trained.model_dir)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    config = AutoModelForSequenceClassification.from_pretrained(folder).config
    assert config.id2label == {0: "benign", 1: "malicious"}  # by our class order, not the base model's
    # ZeRO-3 shards are gathered whole (one module at a time), and a teacher trained in bf16 is saved in bf16.
    with safe_open(folder / "model.safetensors", "pt") as weights:
        tensors = {k: weights.get_tensor(k) for k in weights.keys()}
    assert tensors["classifier.weight"].shape == (2, 64)
    assert set(tensors) == set(AutoModelForSequenceClassification.from_pretrained(folder).state_dict())
    saved = torch.bfloat16 if precision == "bf16" else torch.float32
    assert all(t.dtype == saved for t in tensors.values() if t.is_floating_point())
    assert accuracy_with_transformers(folder, val) > 0.7


VLLM_CLASSIFY = """
import json, sys
import numpy as np
from smallsec_ray.teachers.backends import make_teacher
folder, texts, classes, out = json.loads(sys.argv[1])
np.save(out, make_teacher("classifier", "vllm", folder, classes, max_length=64).probs(texts))
"""


@pytest.mark.timeout(600)
def test_a_decoder_without_pad_token_becomes_a_classifier_teacher_that_vllm_serves(ray_local, rows, tmp_path):
    """SmolLM2's path: a causal LM with no pad token gets a classification head, learns on Ray Train, and
    vLLM's pooling runner serves it with the same probabilities as transformers."""
    import json
    import os
    import subprocess
    import sys

    import numpy as np
    from tiny_models import make_tiny_causal_lm

    from smallsec_ray.runtime import CPU_ENGINE_ENV, RUNTIME_ENV_VARS
    from smallsec_ray.teachers.backends import make_teacher

    train, val = rows
    lm = make_tiny_causal_lm(tmp_path / "lm", CLASSES)
    tokenizer = AutoTokenizer.from_pretrained(lm)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(lm)
    finetune = FinetuneSpec(epochs=2, batch_size=32, learning_rate=1e-3, early_stopping_patience=0,
                            scaling={"strategy": "ddp", "workers": 1, "cpus_per_worker": 1.0})
    trained = finetune_teacher(lm, CLASSES, ray_local.data.from_pandas(train), ray_local.data.from_pandas(val),
                               finetune, max_length=64, out_dir=tmp_path / "out")
    folder = Path(trained.model_dir)
    config = AutoModelForSequenceClassification.from_pretrained(folder).config
    assert config.architectures == ["LlamaForSequenceClassification"] and config.pad_token_id is not None
    assert AutoTokenizer.from_pretrained(folder).pad_token is not None
    assert trained.epochs[-1]["val_accuracy"] > 0.6

    texts = list(val["text"][:40])
    hf = make_teacher("classifier", "hf", str(folder), CLASSES, max_length=64).probs(texts)
    out = tmp_path / "vllm.npy"
    env = {**os.environ, **RUNTIME_ENV_VARS, **CPU_ENGINE_ENV}
    proc = subprocess.run([sys.executable, "-c", VLLM_CLASSIFY, json.dumps([str(folder), texts, CLASSES, str(out)])],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(out), hf, atol=1e-4)
