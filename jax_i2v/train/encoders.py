"""Frozen encoders that run inside a jitted step: the latent codec (a VAE posterior sample, or a
parameter-free codec) and a frozen caption encoder, as pure functions of explicit params.

Their params are arguments of the step, sharded by the partitioning rules like any params: a
closed-over array would become an HLO constant, baked into every executable and held whole on
every device. They get no gradients and no optimizer state; every output is `stop_gradient`.

Shapes at this boundary (channels-last):
- pixels: videos (B, F, H, W, 3), frames (N, H, W, 3), uint8 or float in [-1, 1];
- latents: (B, F, H / f, W / f, C) float32, scaled as the codec scales them;
- captions: token ids (B, L) int32 -> embeddings (B, L, D) float32.

`params`: {"vae": the KL VAE's params} when the codec has params, {"text": the caption encoder's}
when there is one; {} when neither (the CPU configs' parameter-free codecs and host-side captions).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from jax_i2v.config_utils import dtype, latent_codec
from jax_i2v.convert import CONFIG_NAME, parse_config_file
from jax_i2v.models.autoencoder_kl import AutoencoderKLConfig, KLCodec, random_vae_params
from jax_i2v.models.clip import CLIPTextConfig, CLIPTextTransformer
from jax_i2v.models.text_encoder import TextConditioning

# The encode's random stream in a step: fold_in(step key, ENCODE_STREAM). The loss folds
# micro-batch indices 0..k-1 into the same key; this constant is far above any k.
ENCODE_STREAM = 0x656E63
# Caption encoders whose params stay frozen and run in the step on token ids.
FROZEN_TEXT_KINDS = ("clip",)


def encode_key(step_key: jax.Array) -> jax.Array:
    """The key of a step's posterior samples, from the key its loss draws from."""
    return jax.random.fold_in(step_key, ENCODE_STREAM)


def pixels_to_model_range(pixels: jax.Array) -> jax.Array:
    """uint8 -> float32 in [-1, 1] (as `media.to_model_range` on the host, bit for bit); float
    pixels are taken as already in [-1, 1]."""
    if pixels.dtype == jnp.uint8:
        return pixels.astype(jnp.float32) / 127.5 - 1.0
    return pixels.astype(jnp.float32)


def pixels_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Host-side inverse of `pixels_to_model_range` for clips the input pipeline scaled from uint8
    (exact: every such value is k / 127.5 - 1): a quarter of float32's bytes to the devices."""
    return np.clip(np.rint((np.asarray(pixels, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _caption_hidden_states(module, params, ids):
    out = module.apply({"params": params}, ids)
    return out[0] if isinstance(out, tuple) else out  # CLIP: (last_hidden_state, pooled)


@dataclasses.dataclass(frozen=True)
class FrozenEncoders:
    """`codec`: a LatentCodec; a `KLCodec` here carries no params (they come with each call).
    `caption_module`: a flax module mapping (B, L) token ids to (B, L, D) embeddings (or CLIP's
    (hidden, pooled)), or None when batches carry embeddings already."""

    codec: Any
    caption_module: Any = None

    @property
    def caption_key(self) -> str:
        """The batch key of captions: token ids for a caption encoder, embeddings without one."""
        return "tokens" if self.caption_module is not None else "text"

    def _codec_with(self, params):
        if isinstance(self.codec, KLCodec):
            return dataclasses.replace(self.codec, params=params["vae"])
        return self.codec

    def encode_frames(self, params, pixels: jax.Array, rng: Optional[jax.Array]) -> jax.Array:
        """(N, H, W, 3) -> (N, h, w, C) scaled latents: a posterior sample with `rng`, the mean
        without (parameter-free codecs are deterministic either way)."""
        latents = self._codec_with(params).encode(pixels_to_model_range(pixels), rng)
        return jax.lax.stop_gradient(jnp.asarray(latents, jnp.float32))

    def decode_frames(self, params, latents: jax.Array) -> jax.Array:
        """(N, h, w, C) -> (N, H, W, 3) in [-1, 1] (nominally); differentiable in the latents."""
        params = jax.lax.stop_gradient(params)
        return jnp.asarray(self._codec_with(params).decode(latents), jnp.float32)

    def encode_video(self, params, video: jax.Array, rng: Optional[jax.Array]) -> jax.Array:
        """(B, F, H, W, 3) -> (B, F, h, w, C): one posterior draw over all frames."""
        latents = self.encode_frames(params, video.reshape((-1,) + video.shape[2:]), rng)
        return latents.reshape(video.shape[:2] + latents.shape[1:])

    def caption_embeddings(self, params, captions: jax.Array) -> jax.Array:
        """(B, L) ids -> (B, L, D), or (B, L, D) embeddings as they are."""
        if self.caption_module is None:
            return jnp.asarray(captions, jnp.float32)
        return jax.lax.stop_gradient(_caption_hidden_states(self.caption_module, params["text"], captions).astype(jnp.float32))

    def abstract_params(self) -> dict:
        """ShapeDtypeStructs of `params` (float32, as the weights are placed), from the modules'
        configs alone."""
        shapes = {}
        if isinstance(self.codec, KLCodec):
            shapes["vae"] = jax.eval_shape(lambda: random_vae_params(self.codec.config))
        if self.caption_module is not None:
            ids = jnp.zeros((1, 2), jnp.int32)
            shapes["text"] = jax.eval_shape(lambda: self.caption_module.init(jax.random.key(0), ids))["params"]
        return shapes


def reads_pixels(config: ml_collections.ConfigDict) -> bool:
    """Whether training batches hold clips to encode (every source but a latent cache)."""
    return config.data.get("source", "moving_shapes") != "latents"


def frozen_text_kind(config: ml_collections.ConfigDict) -> bool:
    return (config.get("text_encoder") or {}).get("kind", "hashed") in FROZEN_TEXT_KINDS


def encoders_from_config(config: ml_collections.ConfigDict) -> FrozenEncoders:
    """The step's encoders for a config that reads pixels, without reading any weights (the VAE's
    and CLIP's config.json give the modules; `frozen_params` loads the weights)."""
    spec = dict(config.get("codec", None) or {"kind": "pixels"})
    compute = dtype(config.get("dtype", "float32"))
    if spec.get("kind") == "autoencoder_kl":
        vae = parse_config_file(os.path.join(spec["dir"], CONFIG_NAME), AutoencoderKLConfig.from_diffusers)
        codec = KLCodec(vae, None, decode_chunk=spec.get("decode_chunk", 8), dtype=compute)
    else:
        codec = latent_codec(config)  # parameter-free: nothing to load
    caption_module = None
    if frozen_text_kind(config):
        clip = parse_config_file(os.path.join(config.text_encoder.dir, CONFIG_NAME), CLIPTextConfig.from_transformers)
        caption_module = CLIPTextTransformer(clip)
    return FrozenEncoders(codec, caption_module)


def frozen_params(codec, text: TextConditioning, encoders: FrozenEncoders) -> dict:
    """`encoders`' params from the loaded codec and caption encoder (host or device arrays)."""
    params = {}
    if isinstance(encoders.codec, KLCodec):
        params["vae"] = codec.params
    if encoders.caption_module is not None:
        params["text"] = text.fixed_encoder.params
    return params


def step_captions(text: TextConditioning, encoders: FrozenEncoders) -> TextConditioning:
    """What the input pipeline gives a step that runs `encoders`: token ids of a frozen caption
    encoder (and the empty caption's ids), or `text` as it is."""
    if encoders.caption_module is None:
        return text
    tokenizer = text.fixed_encoder.tokenizer
    # Without the encoder: its weights go to the step once, split over the mesh (`place`).
    return TextConditioning(None, tokenizer, "tokens", tokenizer([""])[0])


def place(tree: Any, shardings: Any, abstract: Any) -> Any:
    """`tree` (the same values on every process) as global arrays of `shardings`, in the dtypes of
    `abstract`: each device gets only its shard, and no device holds a whole copy on the way."""

    def put(x, sharding: NamedSharding, like):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x.astype(like.dtype), sharding)
        value = np.asarray(jax.device_get(x)).astype(like.dtype)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree_util.tree_map(put, tree, shardings, abstract)
