"""Prompts of generative teachers: the artifact is fenced, and nothing inside it can leave the fence.

A command line or a web page is attacker-controlled text. Put naively into a prompt, it could close
the fence ("ARTIFACT>>>") and continue with instructions of its own, or carry chat control tokens
("<|im_end|>", "[INST]") that the tokenizer turns into real turn boundaries. `build_prompt` breaks
every such marker inside the text by inserting a backslash after its first character: the model
still sees the characters, but neither the fence nor the tokenizer recognises them.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable

from smallsec_ray.errors import SpecError

FIELDS = ("text", "artifact", "classes")
ESCAPE = "\\"

# Chat and control markers of common model families (ChatML/Qwen/SmolLM, Llama 2/3, Gemma, Mistral,
# Phi); the tokenizer's own special tokens are added to these at run time.
CONTROL_MARKERS = re.compile(
    r"<\|[^|<>\s]{1,40}\|>"                         # <|im_start|>, <|eot_id|>, <|endoftext|>
    r"|<\uff5c[^\uff5c<>\s]{1,40}\uff5c>"              # DeepSeek's full-width bars: <｜end▁of▁sentence｜>
    r"|\[/?(?:INST|SYSTEM_PROMPT|AVAILABLE_TOOLS|TOOL_CALLS)\]"
    r"|<</?SYS>>|</?s>|<(?:start|end)_of_turn>"
)


def fences(template: str) -> tuple[str, str]:
    """The delimiters around {text} in a template: the text on {text}'s line before and after it,
    or the neighbouring lines when {text} stands on a line of its own."""
    check_template(template)
    before, after = template.split("{text}", 1)
    opening = before.rsplit("\n", 1)[-1].strip() or before.rstrip("\n").rsplit("\n", 1)[-1].strip()
    closing = after.split("\n", 1)[0].strip() or after.lstrip("\n").split("\n", 1)[0].strip()
    if not opening or not closing or "{" in opening + closing:
        raise SpecError("teacher.prompt_template: {text} must stand between two delimiters, e.g. "
                        "'<<<ARTIFACT\\n{text}\\nARTIFACT>>>', so that the model sees where the artifact "
                        f"starts and ends; got {template!r}")
    return opening, closing


def check_template(template: str) -> None:
    """Raises SpecError unless the template names {text} exactly once and no field beyond FIELDS."""
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    unknown = sorted(set(names) - set(FIELDS))
    if unknown or names.count("text") != 1:
        raise SpecError(f"teacher.prompt_template: fields must be {{text}} (exactly once), {{artifact}} and "
                        f"{{classes}}; got {names} (write {{{{ and }}}} for literal braces)")


def control_tokens(tokenizer) -> list[str]:
    """The tokenizer's control tokens: its special ones, and every added token written as markup (<think>,
    <tool_call>, <｜end▁of▁sentence｜>, [TOOL_RESULTS]) even when not marked special. Added tokens that are
    plain words (some tokenizers add domain words) stay as they are."""
    markup = [t for t in tokenizer.get_added_vocab()
              if (t.startswith("<") and t.endswith(">")) or (t.startswith("[") and t.endswith("]"))]
    return [*tokenizer.all_special_tokens, *markup]


def escape_markers(text: str, markers: Iterable[str]) -> str:
    """Breaks every occurrence of each marker (and of every chat control marker) inside `text`.

    A backslash goes after the first character of every occurrence, overlapping ones included, so no
    occurrence survives and none is assembled from the pieces (for markers without a backslash).
    """
    alternatives = [re.escape(m) for m in sorted(set(markers), key=len, reverse=True) if len(m) > 1]
    pattern = "|".join([CONTROL_MARKERS.pattern, *alternatives])
    starts = [m.start() for m in re.finditer(f"(?=(?:{pattern}))", text, re.IGNORECASE)]
    pieces, last = [], 0
    for start in starts:
        pieces.append(text[last:start + 1])
        pieces.append(ESCAPE)
        last = start + 1
    pieces.append(text[last:])
    return "".join(pieces)


def build_prompt(template: str, text: str, artifact: str, classes: list[str],
                 special_tokens: Iterable[str] = ()) -> str:
    """Fills the template with the fenced, escaped artifact text, the artifact type and the class names.

    `special_tokens` are the tokenizer's own control tokens, which are broken like chat markers.
    """
    opening, closing = fences(template)
    safe = escape_markers(text, [opening, closing, *special_tokens])
    return template.format(text=safe, artifact=artifact, classes=", ".join(classes))


def apply_chat_template(tokenizer, prompt: str) -> str:
    """The prompt as one user turn of the model's chat template, ready for the assistant's answer;
    the prompt unchanged for a base model without a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
