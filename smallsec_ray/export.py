"""Shipping a student: the ONNX graph with a parity check, added to its model folder, and a scorer that
needs ONNX Runtime alone.

An exported folder is a student model folder (students/folder.py) with `model.onnx` and the detection
thresholds in its config: the encoder config turns text into ids, the graph turns ids into class
probabilities, and the thresholds turn those into detections. Export checks that ONNX Runtime and
PyTorch agree on real rows before it writes the folder; the folder can still be trained further.
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import dataclasses
import gzip
import io
import json
import sys
import tempfile
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from smallsec_ray.errors import DataError, StageError
from smallsec_ray.students.encoders import encoder_from_config
from smallsec_ray.students.folder import ONNX_FILE, ModelConfig, OnnxInfo, read_config, save_model, write_config

# LayerNormalization became a standard op in opset 17; ONNX Runtime 1.20+ runs it.
OPSET = 17
PARITY_TOLERANCE = 1e-4
INT8_FILE = "model.int8.onnx"
INT8_MAX_AUC_DROP, INT8_MIN_AGREEMENT = 0.002, 0.995  # what an int8 graph must keep of the fp32 one


@dataclass(frozen=True)
class ExportResult:
    model_dir: Path
    parity_rows: int
    max_abs_diff: float  # largest |p_onnx - p_torch| over parity rows and classes


@dataclass(frozen=True)
class Score:
    label: str  # the most probable class
    probabilities: dict[str, float]  # class name -> probability
    is_detection: bool  # some thresholded class reached its threshold


class _Probabilities(nn.Module):
    """The student with a softmax on top, so that the exported graph outputs probabilities."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.student(ids), dim=-1)


def export_onnx(model: nn.Module, config: ModelConfig, out_dir: str | Path,
                parity_texts: Sequence[str]) -> ExportResult:
    """Writes the model folder `out_dir` (weights, config with thresholds and ONNX details, and
    model.onnx: input `ids` int64 [batch, L], output `probs` float32 [batch, C]); raises StageError if
    ONNX and torch probabilities on `parity_texts` differ by more than 1e-4. `model` is the plain
    student (unwrap DDP/DeepSpeed first); it is not modified. config.thresholds maps positive class
    names to the probability at which a row counts as a detection."""
    _check_export_args(model, config, parity_texts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / ONNX_FILE
    graph = _Probabilities(copy.deepcopy(model)).float().cpu().eval()
    ids = encoder_from_config(config.encoder).encode(list(parity_texts))
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript
        # (not a dependency); the TorchScript one handles these graphs exactly.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(graph, (torch.from_numpy(ids[:1]),), str(onnx_path), dynamo=False, opset_version=OPSET,
                          input_names=["ids"], output_names=["probs"],
                          dynamic_axes={"ids": {0: "batch"}, "probs": {0: "batch"}})
    session = _session(onnx_path, intra_op_num_threads=None)
    with torch.no_grad():
        expected = _in_batches(lambda batch: graph(torch.from_numpy(batch)).numpy(), ids)
    got = _in_batches(lambda batch: session.run(["probs"], {"ids": batch})[0], ids)
    max_abs_diff = float(np.abs(got - expected).max())
    if not max_abs_diff <= PARITY_TOLERANCE:  # also catches NaN
        onnx_path.unlink()
        raise StageError(f"export: the ONNX graph disagrees with the torch model on {len(ids)} parity rows "
                         f"(max |p_onnx - p_torch| = {max_abs_diff:.3g} > {PARITY_TOLERANCE}); the graph "
                         "holds an op the exporter translates wrongly; do not ship this model")
    onnx = OnnxInfo(file=ONNX_FILE, opset=OPSET, input="ids", output="probs", parity_rows=len(ids),
                    max_abs_diff=max_abs_diff, tolerance=PARITY_TOLERANCE,
                    versions={"torch": torch.__version__, "onnxruntime": ort.__version__})
    save_model(out_dir, model.state_dict(), dataclasses.replace(config, onnx=onnx))
    return ExportResult(out_dir, len(ids), max_abs_diff)


class OnnxScorer:
    """Scores texts with an exported student folder; `intra_op_num_threads=1` pins ONNX Runtime to one
    thread (per-core benchmarks, one scorer per core); None lets it pick. The folder's int8 graph runs when
    it has one that passed its agreement check, unless `fp32`."""

    def __init__(self, model_dir: str | Path, intra_op_num_threads: int | None = None,
                 batch_size: int = 256, fp32: bool = False) -> None:
        model_dir = Path(model_dir)
        config = read_config(model_dir)
        if config.onnx is None:
            raise DataError(f"{model_dir}: a trained student without its ONNX export; score the folder the "
                            "export stage wrote (<run>/export/model)")
        self.classes = list(config.classes)
        self.thresholds = dict(config.thresholds)
        try:
            _check_encoder_size(config.encoder)
            self.encoder = encoder_from_config(config.encoder)
            unknown = sorted(set(self.thresholds) - set(self.classes))
            if unknown:
                raise ValueError(f"thresholds name {unknown}, not among the classes {self.classes}")
            self._threshold_columns = [(self.classes.index(c), float(t)) for c, t in self.thresholds.items()]
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{model_dir / 'config.json'}: its config does not hold together ({err}); export the "
                            "model again") from None
        if Path(config.onnx.file).name != config.onnx.file or config.onnx.file in ("", ".", ".."):
            raise DataError(f"{model_dir / 'config.json'}: onnx.file {config.onnx.file!r} is not a file name inside "
                            "the model folder; export the model again")
        int8 = config.onnx.int8 or {}
        self.precision = "int8" if int8.get("accepted") and not fp32 else "fp32"
        onnx_path = model_dir / (INT8_FILE if self.precision == "int8" else config.onnx.file)
        if not onnx_path.is_file():
            raise DataError(f"{onnx_path}: missing; the exported student folder is incomplete, export again")
        try:
            self.session = _session(onnx_path, intra_op_num_threads)
        except Exception as err:  # ONNX Runtime raises its own Fail / InvalidProtobuf / ... classes
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise DataError(f"{onnx_path}: ONNX Runtime cannot load it ({first}); the file is damaged or not an "
                            "export of this tool: export the model again") from None
        self.batch_size = batch_size

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, float32 [len(texts), C], columns in `self.classes` order."""
        parts = [self.session.run(["probs"], {"ids": self.encoder.encode(texts[i: i + self.batch_size])})[0]
                 for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes)), dtype=np.float32)

    def score(self, texts: Sequence[str]) -> list[Score]:
        probs = self.predict_proba(texts)
        detected = np.zeros(len(probs), dtype=bool)
        for column, threshold in self._threshold_columns:
            detected |= probs[:, column] >= threshold
        return [Score(self.classes[int(row.argmax())], dict(zip(self.classes, row.tolist(), strict=True)),
                      bool(hit)) for row, hit in zip(probs, detected, strict=True)]


MAX_ENCODER_LENGTH = 1 << 16  # characters or tokens; the shipped presets use 512 at most


def _check_encoder_size(encoder: dict) -> None:
    """Refuses encoder sizes no trained student has (encoder.max_length: 1e9 would allocate 22 GiB per batch)."""
    for key in ("max_length", "max_tokens"):
        value = encoder.get(key)
        if value is not None and not (isinstance(value, int) and 1 <= value <= MAX_ENCODER_LENGTH):
            raise ValueError(f"encoder.{key} is {value!r}, not a whole number from 1 to {MAX_ENCODER_LENGTH:,}")
    buckets = encoder.get("hash_buckets")
    if buckets is not None and not (isinstance(buckets, int) and 1 <= buckets <= 1 << 24):
        raise ValueError(f"encoder.hash_buckets is {buckets!r}, not a whole number from 1 to {1 << 24:,}")


class _Calibration:
    """ONNX Runtime's calibration reader: the ids of some rows, 64 at a time."""

    def __init__(self, ids: np.ndarray):
        self.batches = iter([{"ids": ids[i:i + 64]} for i in range(0, len(ids), 64)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


# ONNX Runtime static quantization recipes (QOperator, int8 weights per channel, uint8 activations), tried in
# order: the first whose graph passes the agreement check ships. The first quantizes the ops between the
# convolutions too (the mask, the max over positions, the embedding lookup, the concatenation): with only the
# convolutions quantized, converting their outputs back to floats took half the int8 graph's time (1.25x
# against 1.45-1.52x for a trained URL char CNN, benchmarks/RESULTS.md). The second is the safe fallback.
INT8_RECIPES = {
    "convolutions, dense layers and the ops between": ["Conv", "MatMul", "Gemm", "Relu", "Mul", "ReduceMax",
                                                       "Transpose", "Gather", "Concat"],
    "convolutions only": ["Conv"],
}


def quantize_int8(model_dir: str | Path, texts: Sequence[str], positive: np.ndarray, positive_index: int,
                  threshold: float) -> dict[str, Any]:
    """Writes model.int8.onnx next to an exported model.onnx: ONNX Runtime static quantization (the first of
    INT8_RECIPES that passes) calibrated on the even rows of `texts` (validation rows), then checked against
    the fp32 graph on the odd ones: ROC AUC of the positive class within INT8_MAX_AUC_DROP and at least
    INT8_MIN_AGREEMENT of the decisions at `threshold` unchanged. When no recipe passes no int8 graph is
    kept; the check is returned either way and recorded in the folder's config."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    if config.onnx is None:
        raise StageError(f"export: {model_dir} has no ONNX graph to quantize; export_onnx it first")
    ids = encoder_from_config(config.encoder).encode(list(texts))
    calibrate, check, is_positive = ids[0::2], ids[1::2], np.asarray(positive)[1::2]
    if len(calibrate) == 0 or len(check) == 0:
        raise StageError("export: int8 needs validation rows to calibrate and check the graph; give some")
    fp32 = _positive_scores(model_dir / ONNX_FILE, check, positive_index)
    refused: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        with contextlib.redirect_stdout(io.StringIO()):  # it prints every tensor shape it infers
            quant_pre_process(str(model_dir / ONNX_FILE), str(prepared))
        for recipe, ops in INT8_RECIPES.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_static(str(prepared), str(model_dir / INT8_FILE), _Calibration(calibrate),
                                quant_format=QuantFormat.QOperator, per_channel=True, op_types_to_quantize=ops,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            agreement = _agreement(fp32, _positive_scores(model_dir / INT8_FILE, check, positive_index),
                                   is_positive, threshold)
            if agreement["accepted"]:
                break
            refused.append({"recipe": recipe, **agreement})
    result = {"file": INT8_FILE if agreement["accepted"] else None, "recipe": recipe if agreement["accepted"] else None,
              **agreement, "calibration_rows": len(calibrate), "check_rows": len(check),
              "max_auc_drop": INT8_MAX_AUC_DROP, "min_decisions_unchanged": INT8_MIN_AGREEMENT,
              "recipes_refused": refused}
    if not agreement["accepted"]:
        (model_dir / INT8_FILE).unlink()
    write_config(model_dir, dataclasses.replace(config, onnx=dataclasses.replace(config.onnx, int8=result)))
    return result


def _positive_scores(onnx_path: Path, ids: np.ndarray, positive_index: int) -> np.ndarray:
    session = _session(onnx_path, intra_op_num_threads=None)
    return _in_batches(lambda batch: session.run(["probs"], {"ids": batch})[0], ids)[:, positive_index]


def _agreement(fp32: np.ndarray, int8: np.ndarray, is_positive: np.ndarray, threshold: float) -> dict[str, Any]:
    """The int8 graph against the fp32 one on the same rows: ROC AUC of each, decisions unchanged at `threshold`."""
    from sklearn.metrics import roc_auc_score

    both = len(set(is_positive.tolist())) == 2
    auc_fp32 = float(roc_auc_score(is_positive, fp32)) if both else None
    auc_int8 = float(roc_auc_score(is_positive, int8)) if both else None
    unchanged = float(np.mean((fp32 >= threshold) == (int8 >= threshold)))
    auc_drop = auc_fp32 - auc_int8 if auc_fp32 is not None and auc_int8 is not None else 0.0
    return {"accepted": auc_drop <= INT8_MAX_AUC_DROP and unchanged >= INT8_MIN_AGREEMENT,
            "auc_fp32": auc_fp32, "auc_int8": auc_int8, "decisions_unchanged": unchanged}


def _in_batches(probabilities: Callable[[np.ndarray], np.ndarray], ids: np.ndarray,
                batch_size: int = 256) -> np.ndarray:
    """Bounds memory when many parity rows are given (an HTML batch holds [batch, tokens, dims] floats)."""
    return np.concatenate([probabilities(ids[i: i + batch_size]) for i in range(0, len(ids), batch_size)])


def _session(onnx_path: Path, intra_op_num_threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if intra_op_num_threads is not None:
        options.intra_op_num_threads = intra_op_num_threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def _check_export_args(model: nn.Module, config: ModelConfig, parity_texts: Sequence[str]) -> None:
    class_names, thresholds = config.classes, config.thresholds
    num_classes = getattr(model, "num_classes", None)
    if num_classes != len(class_names):
        raise StageError(f"export: the student has {num_classes} outputs but {len(class_names)} class names "
                         f"were given ({list(class_names)}); pass the job's classes in probability order")
    unknown = set(thresholds) - set(class_names)
    if unknown or not thresholds:
        raise StageError(f"export: thresholds {thresholds} must name at least one class, and only classes "
                         f"of {list(class_names)}")
    bad = {c: t for c, t in thresholds.items() if not 0.0 <= t <= 1.0}
    if bad:
        raise StageError(f"export: thresholds {bad} are not probabilities in [0, 1]")
    if not parity_texts:
        raise StageError("export: parity_texts is empty; give real rows (e.g. the validation split) so the "
                         "ONNX graph can be checked against torch")


@dataclass
class ScoreInput:
    """The artifacts of a file to score, each with where it came from (`key` "line" or "id"), and the rows
    that cannot be scored with the reason."""

    key: str
    refs: list  # line numbers (text files) or row ids (shards)
    texts: list[str]
    unreadable: list[tuple[Any, str]]  # (line or id, reason)


def score_file(model_dir: str | Path, path: str | Path, column: str = "text", output: str | Path | None = None,
               fp32: bool = False) -> int:
    """`smallsec score`: scores every artifact of a file (one per line of a text file, `.txt.gz` too, or the
    `column` of a JSONL/CSV/Parquet shard) and writes one JSON object per input row, in input order: its
    line number or id, and label, detection and probabilities, or the reason it was not scored (text lines
    in input order; shard rows that cannot be scored after the scored ones)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file to score")
    scorer = OnnxScorer(model_dir, fp32=fp32)
    rows = _text_lines(path) if path.suffix in (".txt", ".log", "") or path.name.endswith(".txt.gz") else \
        _shard_rows(path, column)
    records, detections = [], 0
    for ref, text, score in zip(rows.refs, rows.texts, scorer.score(rows.texts), strict=True):
        detections += score.is_detection
        records.append((ref, {rows.key: ref, "text": text[:200], "label": score.label,
                              "detection": score.is_detection,
                              "probabilities": {k: round(v, 6) for k, v in score.probabilities.items()}}))
    records += [(ref, {rows.key: ref, "error": reason}) for ref, reason in rows.unreadable]
    if rows.key == "line":  # input order; shard rows not scored come last, after the scored ones
        records.sort(key=lambda record: record[0])
    out = open(output, "w", encoding="utf-8") if output else sys.stdout  # closed below
    try:
        for _, record in records:
            out.write(json.dumps(record) + "\n")
    finally:
        if output:
            out.close()
    skipped = f"; {len(rows.unreadable):,} not scored (see their \"error\")" if rows.unreadable else ""
    print(f"scored {len(rows.texts):,} rows of {path} ({scorer.precision} graph){skipped}: {detections:,} "
          f"detections at the exported thresholds {scorer.thresholds}", file=sys.stderr)
    return 0


def _text_lines(path: Path) -> ScoreInput:
    """One artifact per line; a line that is not UTF-8 is not scored (its reason names the byte), a blank line
    is skipped. A UTF-8 byte order mark is dropped; UTF-16 text and a damaged .gz are refused."""
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path}: cannot read it as gzip ({type(err).__name__}: {err}); the file is truncated "
                            "or not gzipped: write it again") from None
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # every line would pass as text with NULs
        raise DataError(f"{path}: UTF-16 text; save it as UTF-8")
    raw = raw.removeprefix(codecs.BOM_UTF8)
    rows = ScoreInput("line", [], [], [])
    for number, line in enumerate(raw.splitlines(), 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            rows.unreadable.append((number, f"invalid UTF-8 at byte {err.start}"))
            continue
        if text.strip():
            rows.refs.append(number)
            rows.texts.append(text)
    return rows


def _shard_rows(path: Path, column: str) -> ScoreInput:
    from smallsec_ray.data.io import read_shard
    from smallsec_ray.spec import Columns

    try:
        shard = read_shard(str(path), Columns(text=[column]))
    except DataError as err:  # read_shard's advice speaks of the job spec, which `score` has none of
        message = str(err).replace("set data.columns.text in the spec", "pass --column NAME").replace(
            ", or set data.on_bad_file: skip to skip it", "").replace(" or set data.format in the spec", "")
        raise DataError(message) from None
    return ScoreInput("id", shard.good.column("id").to_pylist(), shard.good.column("text").to_pylist(),
                      list(zip(shard.quarantined.column("id").to_pylist(),
                               shard.quarantined.column("reason").to_pylist(), strict=True)))
