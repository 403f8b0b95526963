"""Teachers: one interface over vLLM and Hugging Face, for classifier and generative (label-token) models.

A `Teacher` turns texts into class probabilities (float32 [N, C], rows sum to 1, temperature 1, columns
in the order of `classes`) and reports which texts it had to truncate. What varies is split in two:

* inputs: how texts become token ids. A classifier reads the text itself (head kept, special tokens
  added); a generative teacher reads a prompt in which the text is fenced and escaped (see prompts.py),
  wrapped in the model's chat template.
* scorer: which engine turns token ids into probabilities. Classifiers: the model's own head, its
  columns mapped to `classes` by name (`id2label`). Generative models: the softmax over the classes'
  label-token logits at the next position.

Both backends get the same token ids, so vLLM and Hugging Face give the same probabilities (float32).
On a CPU, vLLM runs in the calling process (see runtime.CPU_ENGINE_ENV), which allows one engine per process.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, get_args

import numpy as np

from smallsec_ray.errors import SpecError, StageError
from smallsec_ray.runtime import apply_env_defaults
from smallsec_ray.teachers.bundled import resolve_model
from smallsec_ray.teachers.prompts import apply_chat_template, build_prompt, control_tokens, escape_markers, fences

if TYPE_CHECKING:
    from vllm.inputs import TokensPrompt

log = logging.getLogger(__name__)

Kind = Literal["classifier", "generative"]
Device = Literal["cpu", "cuda"]
Backend = Literal["vllm", "hf"]
Dtype = Literal["float32", "bfloat16", "float16"]
DEFAULT_TEMPLATE = ("Classify the {artifact} between the markers as one of: {classes}.\n<<<ARTIFACT\n{text}\n"
                    "ARTIFACT>>>\nAnswer:")
HF_BATCH_ROWS = 32
VLLM_MAX_MODEL_LEN = 8192  # cap for generative engines: room for generation, KV cache stays small
DTYPES: tuple[Dtype, ...] = get_args(Dtype)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
FINGERPRINT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")


class Scorer(Protocol):
    """An engine holding the model: token ids in, probabilities in class order out."""

    def scores(self, token_ids: list[list[int]]) -> np.ndarray: ...

    def close(self) -> None: ...


class GenerativeScorer(Scorer, Protocol):
    """The scorer of a generative model, which also completes prompts."""

    def generate(self, token_ids: list[list[int]], max_tokens: int, temperature: float,
                 seeds: list[int]) -> list[str]: ...


class Teacher:
    """A loaded teacher model: class probabilities of texts, and generation for generative models."""

    def __init__(self, classes: list[str], inputs: ClassifierInputs | PromptInputs, scorer: Scorer,
                 identity: dict) -> None:
        self.classes = list(classes)
        self.inputs = inputs
        self.scorer = scorer
        self._identity = identity

    @property
    def max_length(self) -> int:
        return self.inputs.max_length

    def probs(self, texts: list[str]) -> np.ndarray:
        """Class probabilities, float32 [len(texts), len(classes)]."""
        return self.probs_with_flags(texts)[0]

    def probs_with_flags(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities and a bool mask of the texts truncated to max_length tokens (head kept)."""
        if not texts:
            return np.zeros((0, len(self.classes)), np.float32), np.zeros(0, bool)
        token_ids, lengths = self.inputs.encode(texts)
        probs = self.scorer.scores(token_ids)
        return probs, np.asarray(lengths) > self.max_length

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Tokens each text takes before truncation (a classifier's count includes its special tokens)."""
        return self.inputs.lengths(texts)

    def identity(self) -> dict:
        """What produced the probabilities: model folder, backend, kind, dtype, weights fingerprint, ..."""
        return dict(self._identity)

    def generate(self, prompts: list[str], max_tokens: int, temperature: float = 0.8,
                 seed: int | list[int] = 0) -> list[str]:
        """Completions of plain prompts (chat template applied); prompt i samples with seed + i, or with
        seed[i] when `seed` is a list (a prompt's answer then does not depend on the others in the call)."""
        if not isinstance(self.inputs, PromptInputs):
            raise StageError("teacher: a classifier cannot generate text; use teacher.kind: generative")
        seeds = list(seed) if isinstance(seed, list) else [seed + i for i in range(len(prompts))]
        if len(seeds) != len(prompts):
            raise ValueError(f"generate: {len(seeds)} seeds for {len(prompts)} prompts")
        token_ids = [self.inputs.chat_ids(p) for p in prompts]
        # make_teacher pairs prompt inputs with a generative scorer.
        return cast(GenerativeScorer, self.scorer).generate(token_ids, max_tokens, temperature, seeds)

    def close(self) -> None:
        """Frees the engine (with vLLM, needed before another engine starts in this process)."""
        self.scorer.close()


def make_teacher(kind: Kind, backend: Backend, model_dir: str, classes: list[str], max_length: int = 128,
                 dtype: str = "float32", artifact: str = "cmdline", prompt_template: str = DEFAULT_TEMPLATE,
                 verbalizers: dict[str, str] | None = None, device: Device = "cpu",
                 engine: dict | None = None) -> Teacher:
    """Loads a teacher. `model_dir` is a Hugging Face folder or a bundled:NAME (see bundled.py). `device`
    picks vLLM's settings (CPU: in-process engine, eager, small KV cache; CUDA: vLLM's defaults), and
    `engine` holds the spec's teacher.engine keys (None values leave those defaults)."""
    plan = _plan(kind, backend, model_dir, classes, max_length, dtype, artifact, prompt_template, verbalizers, device)
    options = engine_options(device, engine or {})
    scorer: Scorer
    if kind == "classifier":
        pad_id = plan.tokenizer.pad_token_id or 0
        scorer = (VllmClassifier(plan.path, dtype, plan.inputs.max_length, plan.columns, options)
                  if backend == "vllm" else HfClassifier(plan.path, dtype, plan.columns, pad_id))
    else:
        scorer = (VllmLabelToken(plan.path, dtype, plan.model_len, plan.columns, options) if backend == "vllm"
                  else HfLabelToken(plan.path, dtype, plan.columns, plan.tokenizer))
    return Teacher(classes, plan.inputs, scorer, plan.identity)


def teacher_identity(kind: Kind, backend: Backend, model_dir: str, classes: list[str], max_length: int = 128,
                     dtype: str = "float32", artifact: str = "cmdline", prompt_template: str = DEFAULT_TEMPLATE,
                     verbalizers: dict[str, str] | None = None, device: Device = "cpu",
                     engine: dict | None = None) -> dict:
    """The identity make_teacher's teacher will report, and every config check it makes, in a second and
    without loading weights (so that a driver fails fast, before starting replicas)."""
    return _plan(kind, backend, model_dir, classes, max_length, dtype, artifact, prompt_template,
                 verbalizers, device, check_only=True).identity


def engine_options(device: Device, engine: dict) -> dict:
    """vLLM engine arguments: the spec's teacher.engine keys that are set, and eager mode on CPU (no
    CUDA graphs to capture there) unless the spec says otherwise."""
    options = {key: value for key, value in engine.items() if value is not None}
    if device == "cpu":
        options.setdefault("enforce_eager", True)
    return options


@dataclass
class _Plan:
    """A checked teacher config: the model folder, its tokenizer, the inputs, and the output columns
    (classifier: index of each class in the head; generative: each class's label token id)."""

    path: Path
    tokenizer: Any  # a Hugging Face tokenizer; None when check_only skipped loading it
    inputs: ClassifierInputs | PromptInputs
    columns: list[int]
    model_len: int
    identity: dict


def _plan(kind, backend, model_dir, classes, max_length, dtype, artifact, prompt_template, verbalizers,
          device, check_only: bool = False) -> _Plan:
    """The checked config; with check_only a classifier's tokenizer is only checked, not loaded (its
    identity does not depend on it), so that a driver does not import transformers for it."""
    if kind not in ("classifier", "generative") or backend not in ("vllm", "hf"):
        raise SpecError(f"teacher: kind must be classifier|generative and backend vllm|hf, got {kind}/{backend}")
    if dtype not in DTYPES:
        raise SpecError(f"teacher.dtype: {dtype!r} is not one of {list(DTYPES)}")
    if device not in ("cpu", "cuda"):
        raise SpecError(f"teacher: device must be cpu or cuda, got {device!r}")
    apply_env_defaults(device)  # before vLLM is imported: it reads its settings at import time
    path = resolve_model(model_dir)
    if check_only and kind == "classifier":
        _check_tokenizer(path)
        tokenizer = None
    else:
        tokenizer = _load_tokenizer(path)
    config = json.loads((path / "config.json").read_text())
    identity = {"model": str(path), "backend": backend, "kind": kind, "dtype": dtype,
                "fingerprint": weights_fingerprint(path)}
    if kind == "classifier":
        inputs: ClassifierInputs | PromptInputs = ClassifierInputs(tokenizer, bounded_length(max_length, config, path))
        columns = class_columns(config, classes, path)
        model_len = inputs.max_length
    else:
        verbalizers = {c: (verbalizers or {}).get(c, " " + c) for c in classes}
        inputs = PromptInputs(tokenizer, max_length, prompt_template, artifact, classes)
        columns = label_token_ids(tokenizer, verbalizers, path)
        model_len = _generative_model_len(config, inputs, path)
        identity.update(prompt_template=prompt_template, artifact=artifact, verbalizers=verbalizers)
    identity["max_length"] = inputs.max_length
    return _Plan(path, tokenizer, inputs, columns, model_len, identity)


def weights_fingerprint(path: Path) -> str:
    """A cheap hash that changes when the weights change: config and tokenizer files, and for each
    weight file its size and 16 evenly spaced 64 KiB samples (fine-tuning changes every sample)."""
    digest = hashlib.sha256()
    for name in FINGERPRINT_FILES:
        if (path / name).is_file():
            digest.update(name.encode() + (path / name).read_bytes())
    for weights in sorted(p for p in path.iterdir() if p.name.endswith(WEIGHT_SUFFIXES)):
        size = weights.stat().st_size
        digest.update(f"{weights.name}:{size}".encode())
        with weights.open("rb") as f:
            for i in range(16):
                f.seek(size * i // 16)
                digest.update(f.read(1 << 16))
    return digest.hexdigest()[:16]


def class_columns(config: dict, classes: list[str], path: Path) -> list[int]:
    """Index of each class in the model's output, matched by name through id2label."""
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    archs = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise SpecError(f"teacher.model: {path} is not a sequence classifier (architectures {archs}); "
                        "fine-tune it first (teacher.finetune.enabled: true) or give a fine-tuned folder")
    if sorted(id2label.values()) != sorted(classes):
        raise SpecError(f"teacher.model: {path} predicts {sorted(id2label.values())} (config.json id2label) "
                        f"but the job's classes are {classes}; fine-tune the teacher on these classes or "
                        "fix the job's classes")
    by_name = {name: index for index, name in id2label.items()}
    return [by_name[c] for c in classes]


def label_token_ids(tokenizer, verbalizers: dict[str, str], path: Path) -> list[int]:
    """The token id of each class's verbaliser; a verbaliser of several tokens is scored by its first."""
    ids = []
    for cls, word in verbalizers.items():
        tokens = tokenizer.encode(word, add_special_tokens=False)
        if not tokens:
            raise SpecError(f"teacher.verbalizers.{cls}: {word!r} encodes to no token")
        if len(tokens) > 1:
            log.warning("teacher.verbalizers.%s: %r is %d tokens for %s; scoring its first token %r",
                        cls, word, len(tokens), path, tokenizer.decode(tokens[:1]))
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise SpecError(f"teacher.verbalizers: {verbalizers} do not start with distinct tokens for {path}; "
                        "give each class a verbaliser whose first token differs")
    return ids


class ClassifierInputs:
    """Texts as a sequence classifier reads them: special tokens added, head kept up to max_length."""

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def encode(self, texts: list[str]) -> tuple[list[list[int]], list[int]]:
        ids = self.tokenizer(texts, verbose=False)["input_ids"]
        lengths = [len(i) for i in ids]
        long_rows = [i for i, n in enumerate(lengths) if n > self.max_length]
        if long_rows:  # rare: only these are tokenized again, truncated with their special tokens kept
            cut = self.tokenizer([texts[i] for i in long_rows], truncation=True, max_length=self.max_length)
            for i, row in zip(long_rows, cut["input_ids"], strict=True):
                ids[i] = row
        return ids, lengths

    def lengths(self, texts: list[str]) -> list[int]:
        return [len(i) for i in self.tokenizer(texts, verbose=False)["input_ids"]]


class PromptInputs:
    """Texts as a generative teacher reads them: escaped, head kept up to max_length tokens, fenced
    in the prompt template, wrapped in the chat template."""

    def __init__(self, tokenizer, max_length: int, template: str, artifact: str, classes: list[str]) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.template = template
        self.artifact = artifact
        self.classes = classes
        self.markers = [*fences(template), *control_tokens(tokenizer)]
        self.has_chat = bool(getattr(tokenizer, "chat_template", None))

    def encode(self, texts: list[str]) -> tuple[list[list[int]], list[int]]:
        escaped = [escape_markers(t, self.markers) for t in texts]
        enc = self.tokenizer(escaped, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        lengths = [len(i) for i in enc["input_ids"]]
        heads = [t[:offsets[self.max_length - 1][1]] if n > self.max_length else t
                 for t, n, offsets in zip(escaped, lengths, enc["offset_mapping"], strict=True)]
        return [self.prompt_ids(t) for t in heads], lengths

    def lengths(self, texts: list[str]) -> list[int]:
        escaped = [escape_markers(t, self.markers) for t in texts]
        return [len(i) for i in self.tokenizer(escaped, add_special_tokens=False, verbose=False)["input_ids"]]

    def prompt_ids(self, text: str) -> list[int]:
        prompt = build_prompt(self.template, text, self.artifact, self.classes, self.markers)
        return self.chat_ids(prompt)

    def chat_ids(self, prompt: str) -> list[int]:
        # A chat template writes its own special tokens; a base model's prompt gets the tokenizer's.
        return self.tokenizer.encode(apply_chat_template(self.tokenizer, prompt),
                                     add_special_tokens=not self.has_chat)


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.is_fast:
        raise SpecError(f"teacher.model: {path} has no fast tokenizer (tokenizer.json); convert it with "
                        "transformers (AutoTokenizer.from_pretrained(...).save_pretrained(...))")
    return tokenizer


def _check_tokenizer(path: Path) -> None:
    """Checks a folder's fast tokenizer without loading it through transformers, whose import alone takes
    ~4 s of a driver's time before the replicas start: its tokenizer.json must parse with the tokenizers
    library that fast tokenizers wrap. A folder without one is loaded the full way (which converts a slow
    tokenizer where transformers can, or refuses it)."""
    from tokenizers import Tokenizer

    file = path / "tokenizer.json"
    if not file.is_file():
        _load_tokenizer(path)
        return
    try:
        Tokenizer.from_file(str(file))
    except Exception as err:  # the tokenizers library raises a plain Exception for a bad file
        raise SpecError(f"teacher.model: {file} is not a tokenizer the tokenizers library can read ({err}); "
                        "save the model's tokenizer again with transformers (save_pretrained)") from None


def bounded_length(max_length: int, config: dict, path: Path) -> int:
    """teacher.max_length, or the model's positions where it has fewer (fine-tuning and serving alike)."""
    model_max = config.get("max_position_embeddings") or max_length
    if max_length > model_max:
        log.warning("teacher.max_length %d is over %s's %d positions; using %d", max_length, path,
                    model_max, model_max)
    return min(max_length, model_max)


def _generative_model_len(config: dict, inputs: PromptInputs, path: Path) -> int:
    model_max = min(config.get("max_position_embeddings") or VLLM_MAX_MODEL_LEN, VLLM_MAX_MODEL_LEN)
    # The longest prompt: the template's own tokens, max_length text tokens, a few for merges at the seams.
    needed = len(inputs.prompt_ids("")) + inputs.max_length + 8
    if needed > model_max:
        raise SpecError(f"teacher.max_length: prompts of up to {needed} tokens do not fit {path}'s "
                        f"{model_max} positions; lower teacher.max_length or shorten the prompt template")
    return model_max


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------- vLLM

_live_engine: list[str] = []  # the model of the one vLLM engine this process may hold


def _start_vllm(path: Path, dtype: str, max_model_len: int, **kwargs):
    if _live_engine:
        raise StageError(f"teacher: a vLLM engine for {_live_engine[0]} is already running in this process; "
                         "close that teacher first (vLLM in-process mode allows one engine per process)")
    import torch._dynamo
    from vllm import LLM

    # torch reads TORCH_COMPILE_DISABLE once, at import: a process that imported torch before
    # apply_env_defaults would otherwise compile for ~25 s on its first logprobs call.
    torch._dynamo.config.disable = os.environ.get("TORCH_COMPILE_DISABLE") == "1"
    # _plan checked that dtype is one of DTYPES.
    llm = LLM(model=str(path), dtype=cast(Dtype, dtype), max_model_len=max_model_len, seed=0, **kwargs)
    _live_engine.append(str(path))
    return llm


def _stop_vllm(llm) -> None:
    del llm
    gc.collect()
    _live_engine.clear()


def _token_prompts(token_ids: list[list[int]]) -> list[TokensPrompt]:
    from vllm.inputs import TokensPrompt

    return [TokensPrompt(prompt_token_ids=ids) for ids in token_ids]


class VllmClassifier:
    """vLLM's pooling runner: the classifier head's softmax, columns picked in class order."""

    def __init__(self, path: Path, dtype: str, max_length: int, columns: list[int], options: dict) -> None:
        self.llm = _start_vllm(path, dtype, max_length, runner="pooling", **options)
        self.columns = columns

    def scores(self, token_ids: list[list[int]]) -> np.ndarray:
        outputs = self.llm.classify(_token_prompts(token_ids), use_tqdm=False)
        probs = np.asarray([o.outputs.probs for o in outputs], np.float32)
        return probs[:, self.columns]

    def close(self) -> None:
        _stop_vllm(self.__dict__.pop("llm"))


class VllmLabelToken:
    """vLLM generation of one token, with the logprobs of exactly the label tokens."""

    def __init__(self, path: Path, dtype: str, max_model_len: int, label_ids: list[int], options: dict) -> None:
        # No chunked prefill: a prompt split over two engine steps has its first sampled token discarded, and
        # vLLM then rewinds the request's seeded generator, which a CPU generator cannot do ("CPU Generator
        # does not use offset"): seeded generation of more prompts than one step holds would fail on the CPU.
        # Each step's token budget must then hold a whole prompt.
        options = {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 8192), **options}
        self.llm = _start_vllm(path, dtype, max_model_len, max_logprobs=max(20, len(label_ids)), **options)
        self.label_ids = label_ids

    def scores(self, token_ids: list[list[int]]) -> np.ndarray:
        from vllm import SamplingParams

        # Logprobs are the raw model's (vLLM's default logprobs_mode), so temperature does not enter.
        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=self.label_ids)
        outputs = self.llm.generate(_token_prompts(token_ids), params, use_tqdm=False)
        logits = np.asarray([[o.outputs[0].logprobs[0][t].logprob for t in self.label_ids] for o in outputs],
                            np.float64)
        return _softmax(logits)

    def generate(self, token_ids: list[list[int]], max_tokens: int, temperature: float, seeds: list[int]) -> list[str]:
        from vllm import SamplingParams

        params = [SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=s) for s in seeds]
        outputs = self.llm.generate(_token_prompts(token_ids), params, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]

    def close(self) -> None:
        _stop_vllm(self.__dict__.pop("llm"))


# ---------------------------------------------------------------- Hugging Face

def _length_sorted_batches(token_ids: list[list[int]]) -> list[list[int]]:
    """Row indices in batches of similar length, so that padding wastes little."""
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    return [order[i:i + HF_BATCH_ROWS] for i in range(0, len(order), HF_BATCH_ROWS)]


def _padded(token_ids: list[list[int]], rows: list[int], pad_id: int):
    import torch

    width = max(len(token_ids[i]) for i in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, i in enumerate(rows):
        ids[r, :len(token_ids[i])] = torch.tensor(token_ids[i])
        mask[r, :len(token_ids[i])] = 1
    return ids, mask


class HfClassifier:
    """AutoModelForSequenceClassification in length-sorted, right-padded batches."""

    def __init__(self, path: Path, dtype: str, columns: list[int], pad_id: int) -> None:
        from transformers import AutoModelForSequenceClassification

        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).eval()
        self.columns = columns
        self.pad_id = pad_id

    def scores(self, token_ids: list[list[int]]) -> np.ndarray:
        import torch

        probs = np.zeros((len(token_ids), len(self.columns)), np.float32)
        with torch.inference_mode():
            for rows in _length_sorted_batches(token_ids):
                ids, mask = _padded(token_ids, rows, self.pad_id)
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
                probs[rows] = torch.softmax(logits, dim=-1)[:, self.columns].numpy()
        return probs

    def close(self) -> None:
        del self.model


class HfLabelToken:
    """AutoModelForCausalLM: logits at each row's last real position, softmax over the label tokens."""

    def __init__(self, path: Path, dtype: str, label_ids: list[int], tokenizer) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        self.label_ids = label_ids
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id or 0

    def scores(self, token_ids: list[list[int]]) -> np.ndarray:
        import torch

        probs = np.zeros((len(token_ids), len(self.label_ids)), np.float32)
        with torch.inference_mode():
            for rows in _length_sorted_batches(token_ids):
                # Right padding: a causal model's last real position never attends to the pads after it.
                ids, mask = _padded(token_ids, rows, self.pad_id)
                last = mask.sum(dim=1) - 1
                logits = self.model(input_ids=ids, attention_mask=mask).logits
                picked = logits[torch.arange(len(rows)), last][:, self.label_ids].double().numpy()
                probs[rows] = _softmax(picked)
        return probs

    def generate(self, token_ids: list[list[int]], max_tokens: int, temperature: float, seeds: list[int]) -> list[str]:
        import torch

        texts = []
        with torch.inference_mode():
            for ids, seed in zip(token_ids, seeds, strict=True):
                torch.manual_seed(seed)
                sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
                prompt = torch.tensor([ids])
                out = self.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_tokens,
                                          pad_token_id=self.pad_id, **sampling)
                texts.append(self.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True))
        return texts

    def close(self) -> None:
        del self.model
