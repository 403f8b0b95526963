"""Tiny Hugging Face models made in seconds, for tests that need a real teacher without a model hub.

Each builder writes a complete model folder (config, safetensors weights, tokenizer) that both
transformers and vLLM load:

* `make_tiny_classifier(folder, classes)`: a 2-layer BertForSequenceClassification whose `id2label`
  names `classes` (in a shuffled order, so that code mapping columns by name is exercised).
* `make_tiny_causal_lm(folder, words)`: a 2-layer LlamaForCausalLM with a ChatML chat template;
  every entry of `words` is one token (with and without a leading space), so label tokens such as
  " benign" and " malicious" are single tokens.

Weights are random but seeded, so a folder's probabilities are the same on every run. Sizes follow
vLLM's CPU limits: attention head_dim must be one of 32, 64, ... (16 fails). Building either takes
well under a second.
"""

from __future__ import annotations

import random
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
COMMAND_WORDS = ["powershell", "cmd", "curl", "wget", "bash", "python", "certutil", "reg", "net", "user",
                 "add", "http", "https", "example", "com", "tmp", "etc", "passwd", "echo", "ls", "cat",
                 "grep", "chmod", "download", "exec", "encode", "decode", "base64", "invoke", "expression"]


def _corpus(words: list[str], lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    punctuation = [" -", " /", " |", " >", " .", " :", " \\", " =", " &&"]
    return [" ".join(rng.choice(words) + rng.choice(punctuation) for _ in range(12)) for _ in range(lines)]


def _train_tokenizer(words: list[str], special: list[str], vocab_size: int):
    """A byte-level BPE tokenizer; `words` (and ' ' + each) are added as whole tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(words, 400, seed=0), trainer=trainer)
    tok.add_tokens([w for word in words for w in (word, " " + word)])
    return tok


def make_tiny_classifier(folder: str | Path, classes: list[str], seed: int = 0) -> Path:
    """Writes a tiny BertForSequenceClassification over `classes` to `folder` and returns it."""
    import torch
    from tokenizers import processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    folder = Path(folder)
    tok = _train_tokenizer(COMMAND_WORDS + classes, ["[PAD]", "[UNK]", "[CLS]", "[SEP]"], vocab_size=400)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")),
                                                 ("[SEP]", tok.token_to_id("[SEP]"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]", model_max_length=128)
    # Reversed order: a teacher that trusts column order instead of names gets every row wrong.
    id2label = dict(enumerate(reversed(classes)))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128, id2label=id2label,
                        label2id={v: k for k, v in id2label.items()}, pad_token_id=tokenizer.pad_token_id,
                        architectures=["BertForSequenceClassification"])
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    _spread_logits(model.classifier.weight, 50.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_causal_lm(folder: str | Path, words: list[str], seed: int = 0) -> Path:
    """Writes a tiny LlamaForCausalLM with a ChatML chat template to `folder` and returns it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = _train_tokenizer(COMMAND_WORDS + words, special, vocab_size=400)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token="<|im_start|>", model_max_length=512)
    tokenizer.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, head_dim=32, intermediate_size=128, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
                         architectures=["LlamaForCausalLM"])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    _spread_logits(model.lm_head.weight, 3.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    return folder


def _spread_logits(weight, factor: float) -> None:
    """Scales an output layer up so that random inputs give clearly different probabilities
    (default init gives near-uniform ones, which would make a probability comparison vacuous)."""
    import torch

    with torch.no_grad():
        weight.mul_(factor)
