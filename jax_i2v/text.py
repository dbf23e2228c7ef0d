"""Caption encoders for models without CLIP: a fixed, training-free word embedding.

Any object with `encode(prompts) -> (B, L, D) float32` can condition the pipeline; the CLIP
text tower is another such encoder.
"""

from __future__ import annotations

import re
import zlib
from typing import Protocol, Sequence

import numpy as np


def caption_text(value) -> str:
    """A caption as read from a dataset (TFDS text features come back as bytes) -> str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def caption_words(prompt: str) -> list[str]:
    """Lowercase alphanumeric words: the tokenisation of the encoders without a vocabulary file."""
    return re.findall(r"[a-z0-9]+", prompt.lower())


class TextEncoder(Protocol):
    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        """Prompts -> (B, L, D) float32 embeddings."""


class HashedWordEncoder:
    """Caption -> (max_length, dim): a start vector, one fixed Gaussian vector per lowercase word
    (seeded by the word's CRC32, so it is the same in every process and session), then a padding
    vector, like CLIP's BOS / tokens / padding. Words past `max_length - 1` are dropped.

    It has no parameters: for synthetic captions ("a red circle moves left") the UNet's
    cross-attention learns what each word vector means.
    """

    _START, _PAD = "<|start|>", "<|pad|>"

    def __init__(self, max_length: int, dim: int, seed: int = 0):
        if max_length < 2 or dim < 1:
            raise ValueError(f"need max_length >= 2 and dim >= 1, got {max_length}, {dim}")
        self.max_length, self.dim, self.seed = max_length, dim, seed
        self._cache: dict[str, np.ndarray] = {}

    def _vector(self, word: str) -> np.ndarray:
        if word not in self._cache:
            rng = np.random.default_rng([self.seed, zlib.crc32(word.encode("utf-8"))])
            self._cache[word] = rng.standard_normal(self.dim).astype(np.float32)
        return self._cache[word]

    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        if isinstance(prompts, str):
            raise TypeError("encode takes a sequence of prompts, not a single string")
        out = np.empty((len(prompts), self.max_length, self.dim), np.float32)
        for row, prompt in enumerate(prompts):
            tokens = [self._START] + caption_words(prompt)[: self.max_length - 1]
            tokens += [self._PAD] * (self.max_length - len(tokens))
            out[row] = np.stack([self._vector(token) for token in tokens])
        return out
