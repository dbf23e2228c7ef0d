"""A small trainable caption encoder for configs without CLIP.

`WordTokenizer` needs no vocabulary file: each lowercase word maps to a bucket by its CRC32, so ids
are the same in every process and session. `TextTransformer` embeds the ids and runs a few
pre-norm transformer layers, returning (B, L, D) like CLIP's last hidden state, so the CLIP tower
can replace it behind the same `encode(prompts)` interface.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_i2v.text import caption_words

PAD_ID, START_ID = 0, 1


@dataclasses.dataclass(frozen=True)
class WordTokenizer:
    vocab_size: int = 4096
    max_length: int = 16

    def __post_init__(self):
        if self.vocab_size < 3 or self.max_length < 2:
            raise ValueError(f"need vocab_size >= 3 and max_length >= 2, got {self.vocab_size}, {self.max_length}")

    def word_id(self, word: str) -> int:
        return 2 + zlib.crc32(word.encode("utf-8")) % (self.vocab_size - 2)

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        """(B,) prompts -> (B, max_length) int32: start id, word ids (truncated), padding."""
        if isinstance(prompts, str):
            raise TypeError("the tokenizer takes a sequence of prompts, not a single string")
        ids = np.full((len(prompts), self.max_length), PAD_ID, np.int32)
        for row, prompt in enumerate(prompts):
            words = caption_words(prompt)[: self.max_length - 1]
            ids[row, 0] = START_ID
            ids[row, 1 : 1 + len(words)] = [self.word_id(w) for w in words]
        return ids


class TextTransformer(nn.Module):
    """(B, L) token ids -> (B, L, output_dim) embeddings."""

    vocab_size: int
    max_length: int
    width: int = 64
    layers: int = 2
    heads: int = 4
    output_dim: int = 32

    @nn.compact
    def __call__(self, token_ids):
        if token_ids.shape[-1] > self.max_length:
            raise ValueError(f"{token_ids.shape[-1]} tokens exceed max_length={self.max_length}")
        x = nn.Embed(self.vocab_size, self.width, name="token_embedding")(token_ids)
        positions = self.param("position_embedding", nn.initializers.normal(0.02), (self.max_length, self.width))
        x = x + positions[: token_ids.shape[-1]]
        pad = (token_ids != PAD_ID)[:, None, None, :]  # padding keys are masked out
        for i in range(self.layers):
            h = nn.LayerNorm(name=f"layers_{i}_norm1")(x)
            x = x + nn.MultiHeadDotProductAttention(self.heads, name=f"layers_{i}_attention")(h, h, mask=pad)
            h = nn.LayerNorm(name=f"layers_{i}_norm2")(x)
            h = nn.Dense(4 * self.width, name=f"layers_{i}_mlp_in")(h)
            x = x + nn.Dense(self.width, name=f"layers_{i}_mlp_out")(nn.gelu(h))
        x = nn.LayerNorm(name="final_norm")(x)
        return nn.Dense(self.output_dim, name="projection")(x)


_jitted_apply = jax.jit(lambda module, params, ids: module.apply({"params": params}, ids), static_argnums=0)


@dataclasses.dataclass
class TrainedTextEncoder:
    """`encode(prompts)` for a TextTransformer with its params (the pipeline's text-encoder interface)."""

    module: TextTransformer
    params: Any
    tokenizer: WordTokenizer

    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        return np.asarray(_jitted_apply(self.module, self.params, jnp.asarray(self.tokenizer(prompts))), np.float32)


TEXT_ENCODERS = ("hashed", "trainable", "clip")


@dataclasses.dataclass(frozen=True)
class TextConditioning:
    """How an experiment turns captions into the UNet's cross-attention context.

    `module` is None for the parameter-free `fixed_encoder`; otherwise its params are trained with
    the UNet (`params["text"]`). `caption_transform` runs in the input pipeline and fills `caption_key` of
    the batch; `null_caption` is the transform of the empty caption (dropout and guidance).
    """

    module: Any
    caption_transform: Any
    caption_key: str
    null_caption: np.ndarray
    fixed_encoder: Any = None

    def encoder(self, text_params: Any = None):
        """The pipeline's `encode(prompts)` interface over the (trained) encoder."""
        if self.module is None:
            return self.fixed_encoder
        if text_params is None:
            raise ValueError("a trainable text encoder needs its params")
        return TrainedTextEncoder(self.module, text_params, self.caption_transform)


def frozen_conditioning(encoder) -> TextConditioning:
    """A parameter-free (or frozen) encoder run in the input pipeline: batches carry embeddings."""
    return TextConditioning(None, encoder.encode, "text", encoder.encode([""])[0], fixed_encoder=encoder)
