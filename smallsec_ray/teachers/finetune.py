"""Teacher fine-tuning: a Hugging Face sequence classifier learns the labelled rows on Ray Train, with the
same loop and engine as the student, under its own settings (teacher.finetune: epochs, schedule,
scaling). The loss is plain cross-entropy on the hard labels; with pseudo-labelled rows (a further
semi-supervised round), rows without a label learn the `probs` they carry (KL divergence at T = 1).

The result is a Hugging Face model folder (config with id2label by class name, safetensors weights,
tokenizer) that transformers and vLLM both load. Under ZeRO-3 each rank holds a shard of every
parameter; the engine gathers them (deepspeed.zero.GatheredParameters) before rank 0 saves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray.data.expressions import col
from torch import nn

from smallsec_ray.data.schema import LABEL
from smallsec_ray.spec import FinetuneSpec
from smallsec_ray.teachers.backends import bounded_length
from smallsec_ray.training.loss import distillation_loss
from smallsec_ray.training.trainer import TrainedModel, fit


@dataclass
class TeacherTask:
    model_dir: str
    classes: list[str]
    max_length: int
    use_soft_labels: bool = False

    def build(self) -> nn.Module:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        if self._tokenizer.pad_token is None:  # decoders (Llama, SmolLM2) ship none; batches need one
            self._tokenizer.pad_token = self._tokenizer.eos_token
        # A new head over our classes, named by class (a head the folder already has may differ in size).
        self._model = AutoModelForSequenceClassification.from_pretrained(
            self.model_dir, num_labels=len(self.classes), id2label=dict(enumerate(self.classes)),
            label2id={name: i for i, name in enumerate(self.classes)}, ignore_mismatched_sizes=True,
            pad_token_id=self._tokenizer.pad_token_id)
        return self._model

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        # Padding to the batch's longest row, not to max_length: command lines are far shorter.
        enc = self._tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def logits(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # alpha 1: a labelled row's loss is its cross-entropy alone; an unlabelled row's, KL to its probs.
        return distillation_loss(logits, batch["labels"], batch.get("probs"), 1.0, 1.0, batch.get("weights"))

    def save(self, state_dict: dict[str, torch.Tensor], folder: Path) -> None:
        self._model.config.dtype = next((t.dtype for t in state_dict.values() if t.is_floating_point()),
                                        torch.float32)
        self._model.save_pretrained(folder, state_dict=state_dict)
        self._tokenizer.save_pretrained(folder)

    def save_dtype(self, precision: str) -> torch.dtype:
        """A teacher trained in bf16 or fp16 is saved so (a 7B model: 14 GB, not 28); fp32 stays fp32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def finetune_teacher(model_dir: Path, classes: list[str], train_ds: Any, val_ds: Any, finetune: FinetuneSpec,
                     max_length: int, out_dir: str | Path, name: str = "finetune_teacher",
                     seed: int = 0, pseudo_labelled: bool = False, store_dir: str | None = None) -> TrainedModel:
    """Fine-tunes the classifier in `model_dir` on the labelled rows of `train_ds` (best epoch by validation
    loss on `val_ds`); the result's model_dir is a Hugging Face model folder (out_dir/model). `seed` seeds
    the new head and the dropout (ensemble members differ by it). With `pseudo_labelled`, every row of
    `train_ds` carries `probs` (one-hot for labelled rows) and the unlabelled ones learn them. Checkpoints go
    under `store_dir` (out_dir's place in the run's output; default out_dir)."""
    path = Path(model_dir).resolve()
    max_length = bounded_length(max_length, json.loads((path / "config.json").read_text()), path)
    task = TeacherTask(str(path), list(classes), max_length, use_soft_labels=pseudo_labelled)
    labelled = col(LABEL).is_not_null()
    train = train_ds if pseudo_labelled else train_ds.filter(expr=labelled)
    return fit(task, finetune, train, val_ds.filter(expr=labelled), out_dir, name=name, seed=seed,
               store_dir=store_dir, spec_key="teacher.finetune")
