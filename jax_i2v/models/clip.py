"""CLIP text conditioning: the text tower (transformers' `CLIPTextModel`) in Flax and its BPE tokenizer.

Stable Diffusion 2.x conditions on `last_hidden_state` (B, 77, 1024) of an OpenCLIP-H tower
stored in this layout (23 of its 24 layers, GELU); SD 1.x on OpenAI's CLIP-L (12 layers, quick
GELU). Both are one `CLIPTextConfig` read from the checkpoint's `config.json`. Parameter names
mirror the PyTorch state dict (`encoder.layers.3.self_attn.q_proj.weight` ->
`encoder/layers_3/self_attn/q_proj/kernel`), so `jax_i2v.convert` maps a `text_encoder/` folder
onto `CLIPTextTransformer` key by key.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from flax import traverse_util
from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors

Dtype = Any
ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
}
# The architecture fields of a transformers `CLIPTextConfig`; its other keys (dropout rates,
# initialisation, dtype, projection_dim, which CLIPTextModel does not use) do not change outputs.
_ARCHITECTURE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "hidden_act",
    "layer_norm_eps",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)
TEXT_MODEL_TYPE = "clip_text_model"


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """transformers' CLIPTextConfig (architecture fields; defaults are transformers')."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 1

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(ACTIVATIONS)}, got {self.hidden_act!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} does not split into {self.num_attention_heads} heads")

    @classmethod
    def from_transformers(cls, cfg: Mapping[str, Any]) -> "CLIPTextConfig":
        model_type = cfg.get("model_type", TEXT_MODEL_TYPE)
        if model_type != TEXT_MODEL_TYPE:
            raise ValueError(f"expected a CLIPTextModel config (model_type {TEXT_MODEL_TYPE!r}), got {model_type!r}")
        return cls(**{key: cfg[key] for key in _ARCHITECTURE_KEYS if key in cfg})

    def to_transformers(self) -> dict[str, Any]:
        return {"architectures": ["CLIPTextModel"], "model_type": TEXT_MODEL_TYPE, **dataclasses.asdict(self)}


class CLIPAttention(nn.Module):
    heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, length, d = x.shape
        split = lambda t: t.reshape(b, length, self.heads, d // self.heads)
        q, k, v = (split(nn.Dense(d, name=f"{n}_proj", **kw)(x)) for n in ("q", "k", "v"))
        logits = jnp.einsum("bqnd,bknd->bnqk", q, k).astype(jnp.float32) / np.sqrt(d // self.heads)
        weights = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1).astype(v.dtype)
        out = jnp.einsum("bnqk,bknd->bqnd", weights, v).reshape(b, length, d)
        return nn.Dense(d, name="out_proj", **kw)(out)


class CLIPEncoderLayer(nn.Module):
    """Pre-LayerNorm block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    config: CLIPTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = functools.partial(nn.LayerNorm, epsilon=cfg.layer_norm_eps, **kw)
        x = x + CLIPAttention(cfg.num_attention_heads, name="self_attn", **kw)(norm(name="layer_norm1")(x), mask)
        h = norm(name="layer_norm2")(x)
        return x + _MLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, name="mlp", **kw)(h)


class _MLP(nn.Module):
    features: int
    hidden: int
    activation: str
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = ACTIVATIONS[self.activation](nn.Dense(self.hidden, name="fc1", **kw)(x))
        return nn.Dense(self.features, name="fc2", **kw)(x)


class _Embeddings(nn.Module):
    config: CLIPTextConfig
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids):
        cfg = self.config
        token = nn.Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=self.param_dtype, name="token_embedding")
        position = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, param_dtype=self.param_dtype, name="position_embedding")
        return token(input_ids) + position(jnp.arange(input_ids.shape[-1]))[None]


class _Encoder(nn.Module):
    config: CLIPTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        for i in range(self.config.num_hidden_layers):
            x = CLIPEncoderLayer(self.config, name=f"layers_{i}", dtype=self.dtype, param_dtype=self.param_dtype)(x, mask)
        return x


class CLIPTextTransformer(nn.Module):
    """(B, L) token ids -> (last_hidden_state (B, L, D) float32, pooled (B, D) at the first EOS).

    Attention is causal, as in CLIP; L <= max_position_embeddings.
    """

    config: CLIPTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids):
        cfg = self.config
        length = input_ids.shape[-1]
        if length > cfg.max_position_embeddings:
            raise ValueError(f"{length} tokens; this CLIP tower takes at most {cfg.max_position_embeddings}")
        x = _Embeddings(cfg, self.param_dtype, name="embeddings")(input_ids).astype(self.dtype)
        causal = jnp.tril(jnp.ones((length, length), bool))
        x = _Encoder(cfg, self.dtype, self.param_dtype, name="encoder")(x, causal)
        hidden = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, param_dtype=self.param_dtype, name="final_layer_norm")(x)
        # transformers' rule: the argmax id was the EOS in configs from before its eos_token_id fix.
        eos = jnp.argmax(input_ids, -1) if cfg.eos_token_id == 2 else jnp.argmax(input_ids == cfg.eos_token_id, -1)
        return hidden, hidden[jnp.arange(hidden.shape[0]), eos]


# What CLIP's tokenizer splits words with, before BPE (contractions, letter runs, single digits,
# other non-space runs).
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@dataclasses.dataclass(frozen=True)
class CLIPTokenizer:
    """CLIP's byte-level BPE from a `tokenizer/` folder (vocab.json, merges.txt; pad token and max
    length from tokenizer_config.json / special_tokens_map.json), on the `tokenizers` library.

    `__call__` pads and truncates every prompt to `max_length` ids (BOS ... EOS PAD...), as the
    reference pipelines call the tokenizer (padding="max_length", truncation=True).
    """

    backend: tokenizers.Tokenizer
    max_length: int
    bos_token: str = "<|startoftext|>"
    eos_token: str = "<|endoftext|>"
    pad_token: str = "<|endoftext|>"

    @classmethod
    def from_folder(cls, folder: str) -> "CLIPTokenizer":
        vocab, merges = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
        for path in (vocab, merges):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no tokenizer file at {path}")
        settings = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins, as in transformers
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                with open(path) as f:
                    settings.update(json.load(f))
        special = {
            key: _token_content(settings.get(key, default))
            for key, default in (("bos_token", cls.bos_token), ("eos_token", cls.eos_token), ("pad_token", cls.pad_token))
        }
        max_length = settings.get("model_max_length", 77)
        if not isinstance(max_length, int) or max_length > 10**6:  # transformers writes 1e30 for "no limit"
            max_length = 77
        backend = _clip_bpe(vocab, merges, special["bos_token"], special["eos_token"])
        for key, token in special.items():
            if backend.token_to_id(token) is None:
                raise ValueError(f"{folder}: {key} {token!r} is not in vocab.json")
        # Special tokens match whole in the text before BPE: SD-2's pad token "!" makes every "!"
        # in a prompt the pad id, as in transformers.
        backend.add_special_tokens(list(special.values()))
        return cls(backend, max_length, **special)

    def save(self, folder: str) -> None:
        """Writes vocab.json, merges.txt and the settings files that `from_folder` and
        transformers' CLIPTokenizer read."""
        os.makedirs(folder, exist_ok=True)
        self.backend.model.save(folder)
        special = dict(bos_token=self.bos_token, eos_token=self.eos_token, pad_token=self.pad_token, unk_token=self.eos_token)
        settings = {"tokenizer_class": "CLIPTokenizer", "model_max_length": self.max_length, **special}
        for name, content in (("tokenizer_config.json", settings), ("special_tokens_map.json", special)):
            with open(os.path.join(folder, name), "w") as f:
                json.dump(content, f, indent=2)

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        """Prompts -> (B, max_length) int32 ids."""
        if isinstance(prompts, str):
            raise TypeError("the tokenizer takes a sequence of prompts, not a single string")
        ids = [encoding.ids for encoding in self._padded.encode_batch(list(prompts))]
        return np.asarray(ids, np.int32).reshape(len(prompts), self.max_length)

    @functools.cached_property
    def _padded(self) -> tokenizers.Tokenizer:
        backend = tokenizers.Tokenizer.from_str(self.backend.to_str())
        backend.enable_truncation(self.max_length)
        backend.enable_padding(length=self.max_length, pad_id=backend.token_to_id(self.pad_token), pad_token=self.pad_token)
        return backend


def _token_content(token) -> str:
    return token["content"] if isinstance(token, dict) else str(token)


def _clip_bpe(vocab: str, merges: str, bos: str, eos: str) -> tokenizers.Tokenizer:
    model = tokenizers.models.BPE.from_file(vocab, merges, unk_token=eos, end_of_word_suffix="</w>", continuing_subword_prefix="")
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, tokenizer.token_to_id(bos)), (eos, tokenizer.token_to_id(eos))]
    )
    return tokenizer


@dataclasses.dataclass(frozen=True)
class CLIPTextEncoder:
    """Tokenizer + tower as the pipeline's `TextEncoder`: prompts -> (B, max_length, D) float32
    `last_hidden_state`, what SD-2.x UNets cross-attend to. Jitted once per batch size."""

    config: CLIPTextConfig
    params: Any
    tokenizer: CLIPTokenizer
    dtype: Dtype = jnp.float32

    @functools.cached_property
    def module(self) -> CLIPTextTransformer:
        return CLIPTextTransformer(self.config, dtype=self.dtype)

    @functools.cached_property
    def _hidden_states(self):
        return jax.jit(lambda params, ids: self.module.apply({"params": params}, ids)[0])

    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._hidden_states(self.params, jnp.asarray(self.tokenizer(prompts))), np.float32)


def random_clip_params(config: CLIPTextConfig, seed: int = 0):
    ids = jnp.zeros((1, config.max_position_embeddings), jnp.int32)
    return CLIPTextTransformer(config).init(jax.random.key(seed), ids)["params"]


def clip_param_shapes(config: CLIPTextConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    tree = jax.eval_shape(lambda: random_clip_params(config))
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(tree).items()}
