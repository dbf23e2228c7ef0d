"""Loading ml_collections config files (`configs/*.py` with a `get_config()`)."""

from __future__ import annotations

import importlib.util
import os

import jax.numpy as jnp
import ml_collections

from jax_i2v.convert import load_text_encoder, load_vae
from jax_i2v.models.config import UNetConfig
from jax_i2v.models.text_encoder import TEXT_ENCODERS, TextConditioning, TextTransformer, WordTokenizer, frozen_conditioning
from jax_i2v.models.unet import build_unet
from jax_i2v.models.vae import BlockDCT, LatentCodec, PixelSpace, SpaceToDepth
from jax_i2v.text import HashedWordEncoder

# Config / command-line dtype names.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def load_config(path: str) -> ml_collections.ConfigDict:
    """Imports `path` and returns its `get_config()`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_jax_i2v_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config()")
    return module.get_config()


def dtype(name: str):
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def unet_config(config: ml_collections.ConfigDict) -> UNetConfig:
    """The `unet` section of an experiment config as a validated UNetConfig."""
    return UNetConfig(**config.unet.to_dict())


def config_from_dict(values: dict) -> ml_collections.ConfigDict:
    """A ConfigDict from a saved (JSON) experiment config; lists become tuples as written in configs/."""

    def restore(value):
        if isinstance(value, dict):
            return {k: restore(v) for k, v in value.items()}
        if isinstance(value, list):
            return tuple(restore(v) for v in value)
        return value

    return ml_collections.ConfigDict(restore(values))


def attention_setting(config: ml_collections.ConfigDict) -> str:
    """The config's `model.attention` ("auto" for configs written before the key existed)."""
    return (config.get("model") or {}).get("attention", "auto")


def unet_from_config(config: ml_collections.ConfigDict, *, platform=None, attention=None, **kwargs):
    """The experiment's video UNet: its `unet` architecture, compute / param dtypes and attention
    kernels resolved for `platform` (default: that of `jax.devices()`)."""
    return build_unet(
        unet_config(config),
        dtype=dtype(config.get("dtype", "float32")),
        param_dtype=dtype(config.get("param_dtype", "float32")),
        attention=attention or attention_setting(config),
        platform=platform,
        **kwargs,
    )


def latent_codec(config: ml_collections.ConfigDict) -> LatentCodec:
    """The codec an experiment config names in `codec` (default: pixels), checked against the
    data section's `resolution`, `latent_size` and `latent_channels`."""
    spec = dict(config.get("codec", None) or {"kind": "pixels"})
    kind = spec.pop("kind", "pixels")
    if kind == "pixels" and not spec:
        codec = PixelSpace()
    elif kind == "space_to_depth" and set(spec) <= {"factor", "shift_factor", "scaling_factor"}:
        codec = SpaceToDepth(**spec)
    elif kind == "block_dct" and set(spec) <= {"factor", "frequencies", "shift_factor", "scaling_factor"}:
        codec = BlockDCT(**spec)
    elif kind == "autoencoder_kl" and "dir" in spec and set(spec) <= {"dir", "decode_chunk"}:
        codec = load_vae(spec["dir"], decode_chunk=spec.get("decode_chunk", 8), dtype=dtype(config.get("dtype", "float32")))
    else:
        raise ValueError(
            "codec: expected kind 'pixels', 'space_to_depth' (with factor, shift_factor, scaling_factor), "
            "'block_dct' (with factor, frequencies, shift_factor, scaling_factor) or 'autoencoder_kl' (with dir: a "
            f"diffusers vae/ folder, and optionally decode_chunk), got {config.codec}"
        )
    data = config.data
    expected = (data.resolution // codec.downsample_factor, codec.latent_channels)
    if data.resolution % codec.downsample_factor or (data.latent_size, data.latent_channels) != expected:
        raise ValueError(
            f"data.resolution={data.resolution} through codec {kind!r} gives latent_size, latent_channels = "
            f"{expected}; the config says {(data.latent_size, data.latent_channels)}"
        )
    return codec


def text_conditioning(text_config, text_len: int, cross_attention_dim: int) -> TextConditioning:
    """From an experiment's `text_encoder` section (a dict-like; kind "hashed" if empty).

    "hashed": fixed word vectors (jax_i2v.text.HashedWordEncoder) computed in the input pipeline;
    "trainable": a WordTokenizer in the pipeline and a TextTransformer trained with the UNet;
    "clip": a frozen CLIP text tower (`dir`: a text_encoder/ folder, `tokenizer_dir`: its
    tokenizer/) run in the input pipeline, as the reference conditions on SD-2.1's.
    """
    text_config = dict(text_config or {})
    kind = text_config.pop("kind", "hashed")
    if kind not in TEXT_ENCODERS:
        raise ValueError(f"config.text_encoder.kind must be one of {TEXT_ENCODERS}, got {kind!r}")
    if kind == "clip":
        if set(text_config) != {"dir", "tokenizer_dir"}:
            raise ValueError(f"config.text_encoder: the clip encoder takes dir and tokenizer_dir, got {sorted(text_config)}")
        encoder = load_text_encoder(text_config["dir"], text_config["tokenizer_dir"])
        if (encoder.tokenizer.max_length, encoder.config.hidden_size) != (text_len, cross_attention_dim):
            raise ValueError(
                f"the CLIP tower gives {encoder.tokenizer.max_length} x {encoder.config.hidden_size} text embeddings; "
                f"data.text_len and the UNet's cross_attention_dim say {text_len} x {cross_attention_dim}"
            )
        return frozen_conditioning(encoder)
    if kind == "hashed":
        if text_config:
            raise ValueError(f"config.text_encoder: the hashed encoder takes no settings, got {sorted(text_config)}")
        encoder = HashedWordEncoder(text_len, cross_attention_dim)
        return frozen_conditioning(encoder)
    known = {"vocab_size", "width", "layers", "heads"}
    if set(text_config) - known:
        raise ValueError(f"config.text_encoder: unknown keys {sorted(set(text_config) - known)}; known keys: {sorted(known | {'kind'})}")
    tokenizer = WordTokenizer(text_config.get("vocab_size", 4096), text_len)
    module = TextTransformer(
        tokenizer.vocab_size, text_len, output_dim=cross_attention_dim, **{k: v for k, v in text_config.items() if k != "vocab_size"}
    )
    return TextConditioning(module, tokenizer, "tokens", tokenizer([""])[0])
