"""The Stable Diffusion VAE (diffusers `AutoencoderKL`) in Flax, and the latent codec built on it.

Images are channels-last `(N, H, W, C)` in [-1, 1]; latents `(N, H / f, W / f, latent_channels)`
with f = 2 ** (len(block_out_channels) - 1). Parameter names mirror the diffusers state dict
(`encoder.down_blocks.0.resnets.1.conv2.weight` -> `encoder/down_blocks_0/resnets_1/conv2/kernel`),
so `jax_i2v.convert` maps a diffusers `vae/` folder onto this module one key at a time.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from jax_i2v.models.attention import dot_product_attention
from jax_i2v.models.config import from_diffusers_dict, to_diffusers_dict
from jax_i2v.models.layers import Downsample2D, ResnetBlock2D, Upsample2D, frame_group_norm

Dtype = Any
# diffusers builds every VAE norm with this epsilon.
VAE_NORM_EPS = 1e-6
# diffusers clamps the posterior's log-variance to this range before use.
LOGVAR_RANGE = (-30.0, 20.0)

_FIXED_DIFFUSERS_OPTIONS = {"act_fn": "silu"}
# sample_size and force_upcast are hints for callers; latents_mean/std belong to other VAE families.
_IGNORED_DIFFUSERS_KEYS = {
    "_class_name",
    "_diffusers_version",
    "_name_or_path",
    "_use_default_values",
    "sample_size",
    "force_upcast",
    "latents_mean",
    "latents_std",
}


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig:
    """diffusers `AutoencoderKL` config; the defaults are diffusers' (SD's VAE overrides most)."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: Optional[float] = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self):
        n = len(self.block_out_channels)
        if set(self.down_block_types) != {"DownEncoderBlock2D"} or set(self.up_block_types) != {"UpDecoderBlock2D"}:
            raise ValueError(
                f"only DownEncoderBlock2D / UpDecoderBlock2D VAEs are supported, got {self.down_block_types} / {self.up_block_types}"
            )
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(f"need one down and one up block per block_out_channels entry ({n})")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"block_out_channels {self.block_out_channels} must divide into {self.norm_num_groups} groups")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any]) -> "AutoencoderKLConfig":
        return from_diffusers_dict(cls, cfg, _FIXED_DIFFUSERS_OPTIONS, _IGNORED_DIFFUSERS_KEYS, "VAE")

    def to_diffusers(self) -> dict[str, Any]:
        return to_diffusers_dict(self, "AutoencoderKL", _FIXED_DIFFUSERS_OPTIONS)


class VAEAttention(nn.Module):
    """The mid block's single-head self-attention over all positions, with a residual."""

    groups: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        n, h, w, c = x.shape
        tokens = frame_group_norm(self.groups, VAE_NORM_EPS, name="group_norm", **kw)(x).reshape(n, h * w, c)
        q, k, v = (nn.Dense(c, name=name, **kw)(tokens)[:, :, None] for name in ("to_q", "to_k", "to_v"))  # one head
        out = nn.Dense(c, name="to_out_0", **kw)(dot_product_attention(q, k, v)[:, :, 0])
        return x + out.reshape(n, h, w, c)


class VAEMidBlock(nn.Module):
    """resnet -> attention (optional) -> resnet at the lowest resolution."""

    groups: int
    add_attention: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        x = ResnetBlock2D(c, self.groups, VAE_NORM_EPS, name="resnets_0", **kw)(x)
        if self.add_attention:
            x = VAEAttention(self.groups, name="attentions_0", **kw)(x)
        return ResnetBlock2D(c, self.groups, VAE_NORM_EPS, name="resnets_1", **kw)(x)


class VAEBlock(nn.Module):
    """DownEncoderBlock2D (`num_resnets` resnets, then a stride-2 conv) or UpDecoderBlock2D
    (resnets, then a nearest 2x upsample and a conv); the last block of each resamples "none"."""

    out_channels: int
    num_resnets: int
    groups: int
    resample: str  # "down", "up" or "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for j in range(self.num_resnets):
            x = ResnetBlock2D(self.out_channels, self.groups, VAE_NORM_EPS, name=f"resnets_{j}", **kw)(x)
        if self.resample == "down":
            x = Downsample2D(self.out_channels, padding=0, name="downsamplers_0", **kw)(x)
        elif self.resample == "up":
            x = Upsample2D(self.out_channels, name="upsamplers_0", **kw)(x, (2 * x.shape[-3], 2 * x.shape[-2]))
        return x


def _output_head(x, features: int, groups: int, kw):
    """GroupNorm -> SiLU -> 3x3 conv, the last layers of encoder and decoder."""
    x = nn.silu(frame_group_norm(groups, VAE_NORM_EPS, name="conv_norm_out", **kw)(x))
    return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), name="conv_out", **kw)(x)


class VAEEncoder(nn.Module):
    """(N, H, W, in_channels) -> (N, H / f, W / f, 2 * latent_channels): posterior mean and log-variance."""

    config: AutoencoderKLConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Conv(cfg.block_out_channels[0], (3, 3), padding=((1, 1), (1, 1)), name="conv_in", **kw)(x)
        last = len(cfg.block_out_channels) - 1
        for i, channels in enumerate(cfg.block_out_channels):
            resample = "none" if i == last else "down"
            x = VAEBlock(channels, cfg.layers_per_block, cfg.norm_num_groups, resample, name=f"down_blocks_{i}", **kw)(x)
        x = VAEMidBlock(cfg.norm_num_groups, cfg.mid_block_add_attention, name="mid_block", **kw)(x)
        return _output_head(x, 2 * cfg.latent_channels, cfg.norm_num_groups, kw)


class VAEDecoder(nn.Module):
    """(N, h, w, latent_channels) -> (N, h * f, w * f, out_channels)."""

    config: AutoencoderKLConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        channels = tuple(reversed(cfg.block_out_channels))
        x = nn.Conv(channels[0], (3, 3), padding=((1, 1), (1, 1)), name="conv_in", **kw)(z)
        x = VAEMidBlock(cfg.norm_num_groups, cfg.mid_block_add_attention, name="mid_block", **kw)(x)
        last = len(channels) - 1
        for i, out in enumerate(channels):
            resample = "none" if i == last else "up"
            x = VAEBlock(out, cfg.layers_per_block + 1, cfg.norm_num_groups, resample, name=f"up_blocks_{i}", **kw)(x)
        return _output_head(x, cfg.out_channels, cfg.norm_num_groups, kw)


class AutoencoderKL(nn.Module):
    """`encode` gives the posterior moments (mean, logvar), `decode` the image of an unscaled latent."""

    config: AutoencoderKLConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.encoder = VAEEncoder(cfg, **kw)
        self.decoder = VAEDecoder(cfg, **kw)
        self.quant_conv = nn.Conv(2 * cfg.latent_channels, (1, 1), **kw) if cfg.use_quant_conv else None
        self.post_quant_conv = nn.Conv(cfg.latent_channels, (1, 1), **kw) if cfg.use_post_quant_conv else None

    def encode(self, images):
        """(N, H, W, C) in [-1, 1] -> (mean, logvar), each (N, H / f, W / f, latent_channels), float32."""
        moments = self.encoder(images)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z):
        """(N, h, w, latent_channels) unscaled latents -> (N, h * f, w * f, C) float32."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, images):
        return self.decode(self.encode(images)[0])


@dataclasses.dataclass(frozen=True)
class KLCodec:
    """A trained AutoencoderKL as a `LatentCodec` (jax_i2v/models/vae.py): latents are scaled as
    diffusers pipelines scale them, (z - shift_factor) * scaling_factor.

    `decode_chunk` bounds decoding memory: frames are decoded that many at a time (0: all at once),
    which is how long videos fit. Both directions are jitted once per input shape.
    """

    config: AutoencoderKLConfig
    params: Any
    decode_chunk: int = 8
    dtype: Dtype = jnp.float32

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @functools.cached_property
    def module(self) -> AutoencoderKL:
        return AutoencoderKL(self.config, dtype=self.dtype, param_dtype=jnp.float32)

    @functools.cached_property
    def _encode(self):
        cfg = self.config

        def encode(params, pixels, rng):
            mean, logvar = self.module.apply({"params": params}, pixels, method=AutoencoderKL.encode)
            z = mean if rng is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
            return (z - (cfg.shift_factor or 0.0)) * cfg.scaling_factor

        return jax.jit(encode)

    @functools.cached_property
    def _decode(self):
        cfg = self.config

        def decode_one(params, z):
            return self.module.apply({"params": params}, z[None], method=AutoencoderKL.decode)[0]

        def decode(params, latents):
            z = latents / cfg.scaling_factor + (cfg.shift_factor or 0.0)
            return jax.lax.map(functools.partial(decode_one, params), z, batch_size=self.decode_chunk)

        return jax.jit(decode)

    def encode(self, pixels, rng: Optional[jax.Array] = None) -> jax.Array:
        """(N, H, W, C) in [-1, 1] -> (N, h, w, latent_channels) scaled latents: a posterior sample
        with `rng`, its mean without."""
        return self._encode(self.params, jnp.asarray(pixels, jnp.float32), rng)

    def decode(self, latents) -> jax.Array:
        """(N, h, w, latent_channels) scaled latents -> (N, H, W, C), nominally in [-1, 1]."""
        latents = jnp.asarray(latents, jnp.float32)
        if latents.ndim != 4 or latents.shape[-1] != self.latent_channels:
            raise ValueError(f"latents must be (N, h, w, {self.latent_channels}), got {latents.shape}")
        return self._decode(self.params, latents)


def random_vae_params(config: AutoencoderKLConfig, seed: int = 0, image_size: int = 32):
    """Freshly initialised params (for tests and for training a VAE from scratch)."""
    size = max(image_size, config.downsample_factor)
    images = jnp.zeros((1, size, size, config.in_channels), jnp.float32)
    return AutoencoderKL(config).init(jax.random.key(seed), images)["params"]


def vae_param_shapes(config: AutoencoderKLConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat {path: shape} of the params, traced without allocating them."""
    tree = jax.eval_shape(lambda: random_vae_params(config))
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(tree).items()}
