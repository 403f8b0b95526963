"""A student model folder: one format for training further and for shipping (Magika's shape).

    config.json        ModelConfig: format, architecture, encoder, classes, thresholds, lineage, onnx
    model.safetensors  the weights, fp32: `load_model` rebuilds the torch model (training, evaluation)
    model.onnx         the exported graph (after export): `OnnxScorer` scores with ONNX Runtime alone

Training writes the first two; export copies the folder and adds the graph and the thresholds, so a
shipped folder can be trained further (student.init_from) and a trained one scored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import TypeAdapter, ValidationError
from safetensors.torch import load_file, save_file

from smallsec_ray.errors import DataError
from smallsec_ray.students import Student, build_from_config
from smallsec_ray.students.encoders import Encoder, encoder_from_config

FORMAT = "smallsec-student/2"
CONFIG_FILE, WEIGHTS_FILE, ONNX_FILE = "config.json", "model.safetensors", "model.onnx"
MODEL_DIR = "model"  # the model folder inside a training output folder


@dataclass
class Lineage:
    """Where a model comes from: the job and stage that trained it, its rows, its teacher, its parent."""

    job: str = ""
    workload: str = ""
    stage: str = ""
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    data: dict[str, Any] = field(default_factory=dict)  # run ids and row counts of the data it learned from
    teacher: list[dict[str, Any]] = field(default_factory=list)  # identities of the teachers it learned from
    parent: dict[str, Any] | None = None  # the lineage of the folder training continued from


@dataclass
class OnnxInfo:
    file: str
    opset: int
    input: str
    output: str
    parity_rows: int
    max_abs_diff: float  # largest |p_onnx - p_torch| over the parity rows and classes
    tolerance: float
    versions: dict[str, str]  # torch and onnxruntime versions that made and checked the graph
    int8: dict[str, Any] | None = None  # the int8 graph's file and its agreement check (export.quantize_int8)


@dataclass
class ModelConfig:
    architecture: dict[str, Any]  # students.student_config(): rebuilds the network
    encoder: dict[str, Any]  # encoders: turns text into ids
    classes: list[str]  # in the order of the model's outputs
    lineage: Lineage
    thresholds: dict[str, float] = field(default_factory=dict)  # class -> probability that makes a detection
    onnx: OnnxInfo | None = None
    format: str = FORMAT


def save_model(folder: Path, state_dict: dict[str, torch.Tensor], config: ModelConfig) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous()
               for k, v in state_dict.items()}, str(folder / WEIGHTS_FILE))
    write_config(folder, config)


def write_config(folder: Path, config: ModelConfig) -> None:
    (folder / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=1) + "\n", encoding="utf-8")


def read_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable student model config ({err}); give a folder written by "
                        "training or export") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise DataError(f"{path}: format {found!r}, expected {FORMAT!r}; give a folder written by training or "
                        "export with this version")
    try:
        return TypeAdapter(ModelConfig).validate_python(raw)
    except ValidationError as err:  # its own message spans several lines: the first problem, on one
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" and {err.error_count() - 1} more" if err.error_count() > 1 else ""
        raise DataError(f"{path}: not a valid student model config ({where}: {first['msg']}{more}); give a folder "
                        "written by training or export") from None


def model_folder(path: str | Path) -> Path:
    """A model folder itself, or the model/ folder inside a training output folder."""
    path = Path(path)
    for folder in (path, path / MODEL_DIR):
        if (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
            return folder
    raise DataError(f"{path}: no student model here (expected {CONFIG_FILE} and {WEIGHTS_FILE}, or a "
                    f"{MODEL_DIR}/ folder holding them); give the model folder that training or export wrote")


def load_model(path: str | Path) -> tuple[Student, Encoder, ModelConfig]:
    """(model in eval mode, its encoder, its config) from a model folder; no Ray needed."""
    folder = model_folder(path)
    config = read_config(folder)
    model, _ = build_from_config(config.architecture)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model.eval(), encoder_from_config(config.encoder), config
