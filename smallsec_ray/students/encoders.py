"""Input encoders: text -> fixed-width int64 id matrices that the student models read.

Id 0 is padding everywhere, so models can tell "no input here" from any real character or token.
Rows are left-aligned: the head of each text sits at position 0 and padding fills the tail.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

# Lone surrogates (they survive JSON decoding) would make a strict UTF-8 encode raise.
_UTF8_ERRORS = "surrogatepass"

CHAR_VOCAB_SIZE = 257  # 0 = padding, byte b -> b + 1

# Tag openings and closings (`<form`, `</form`), attribute names with their `=`, and words
# (attribute values and visible text split into words). Applied to lowercased text.
_HTML_TOKEN = re.compile(r"</?[a-z][a-z0-9:-]*|[a-z_:][a-z0-9_:.-]*=|\w+")
# Characters of HTML read per token wanted before falling back to a 4x longer window. Pages in
# shared/data/html average about 6 characters per token; 8 was the fastest setting measured there.
# Only the head is kept, so this also bounds the work on huge pages.
_CHARS_PER_TOKEN_WINDOW = 8


class Encoder(Protocol):
    """What the trainer, the exporter and the scorer need from an encoder."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Returns int64 ids of shape (len(texts), L), 0 = padding."""
        ...

    def config(self) -> dict[str, Any]:
        """A JSON-able dict that `encoder_from_config` turns back into the same encoder."""
        ...


class CharEncoder:
    """UTF-8 bytes of a short string (command line, URL) -> ids byte + 1, truncated to `max_length` bytes.

    Truncation keeps the head: the executable and its first arguments of a command line, and the scheme,
    host and path of a URL, sit at the start, while tails are the part most often padded with noise
    (long query strings, repeated arguments).
    """

    def __init__(self, max_length: int) -> None:
        if max_length < 1:
            raise ValueError(f"CharEncoder: max_length must be at least 1, got {max_length}")
        self.max_length = max_length

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        _check_strings(texts)
        # A character is at least one byte, so slicing characters first bounds the work on huge strings.
        heads = [t[: self.max_length].encode("utf-8", _UTF8_ERRORS)[: self.max_length] for t in texts]
        lengths = np.fromiter(map(len, heads), dtype=np.int64, count=len(heads))
        flat = np.frombuffer(b"".join(heads), dtype=np.uint8)
        ids = np.zeros((len(heads), self.max_length), dtype=np.int64)
        # Boolean-mask assignment fills row-major, i.e. in the order the heads were joined.
        ids[np.arange(self.max_length) < lengths[:, None]] = flat.astype(np.int64) + 1
        return ids

    def config(self) -> dict[str, Any]:
        return {"type": "char", "max_length": self.max_length}


class HtmlTokenEncoder:
    """HTML page -> ids of its first `max_tokens` tokens, each hashed (CRC-32, stable across processes,
    unlike Python's salted hash()) into buckets 1..hash_buckets-1."""

    def __init__(self, max_tokens: int, hash_buckets: int) -> None:
        if max_tokens < 1 or hash_buckets < 2:
            raise ValueError(f"HtmlTokenEncoder: need max_tokens >= 1 and hash_buckets >= 2, "
                             f"got {max_tokens} and {hash_buckets}")
        self.max_tokens = max_tokens
        self.hash_buckets = hash_buckets

    def tokens(self, html: str) -> list[str]:
        """The first `max_tokens` tokens of a page, read from a window of its head grown as needed.

        A token that ends before the window's last token is the same as in the whole page, so reading
        one token more than needed makes the window's answer exact.
        """
        window = self.max_tokens * _CHARS_PER_TOKEN_WINDOW
        while True:
            found = _HTML_TOKEN.findall(html[:window].lower())
            if len(found) > self.max_tokens or window >= len(html):
                return found[: self.max_tokens]
            window *= 4

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        _check_strings(texts)
        pages = [self.tokens(t) for t in texts]
        lengths = np.fromiter(map(len, pages), dtype=np.int64, count=len(pages))
        hashes = np.fromiter((zlib.crc32(tok.encode("utf-8", _UTF8_ERRORS)) for page in pages for tok in page),
                             dtype=np.int64, count=int(lengths.sum()))
        ids = np.zeros((len(pages), self.max_tokens), dtype=np.int64)
        ids[np.arange(self.max_tokens) < lengths[:, None]] = hashes % (self.hash_buckets - 1) + 1
        return ids

    def config(self) -> dict[str, Any]:
        return {"type": "html_tokens", "max_tokens": self.max_tokens, "hash_buckets": self.hash_buckets}


def encoder_from_config(cfg: dict[str, Any]) -> Encoder:
    """Rebuilds an encoder from its `config()` dict (as stored in a checkpoint or an exported model)."""
    kind = cfg.get("type")
    if kind == "char":
        return CharEncoder(int(cfg["max_length"]))
    if kind == "html_tokens":
        return HtmlTokenEncoder(int(cfg["max_tokens"]), int(cfg["hash_buckets"]))
    raise ValueError(f"encoder config: unknown type {kind!r}; expected 'char' or 'html_tokens'")


def _check_strings(texts: Sequence[str]) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"encode: row {i} is {type(text).__name__}, not a string; "
                            "drop or quarantine rows without text before encoding")
