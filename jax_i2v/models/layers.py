"""Convolutional building blocks of the video UNet.

Every module here takes video activations of shape (B, F, H, W, C).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_i2v.models.config import TEMPORAL_NORM_EPS, TEMPORAL_NORM_GROUPS

Dtype = Any


class FrameGroupNorm(nn.Module):
    """GroupNorm over (H, W, C // groups) of each frame of (..., H, W, C), in at least float32.

    The maths of `nn.GroupNorm(reduction_axes=(-3, -2, -1), use_fast_variance=False)` (two-pass
    variance, scale and bias per channel), but the statistics are reduced per channel over H, W
    first and only then per group: XLA:CPU never splits the channel axis of the big activation
    into (groups, C // groups), which made the flax module's forward and backward 2-3x slower.
    """

    num_groups: int
    epsilon: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        groups = self.num_groups
        if c % groups:
            raise ValueError(f"{c} channels are not divisible into {groups} groups")
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        stats_dtype = jnp.promote_types(x.dtype, jnp.float32)
        count = x.shape[-3] * x.shape[-2] * (c // groups)

        def group_mean(per_channel):  # (..., C) sums -> (..., C): each channel gets its group's mean
            sums = per_channel.reshape(per_channel.shape[:-1] + (groups, c // groups)).sum(-1, keepdims=True)
            return jnp.broadcast_to(sums / count, sums.shape[:-1] + (c // groups,)).reshape(per_channel.shape)

        xf = x.astype(stats_dtype)
        mean = group_mean(jnp.sum(xf, axis=(-3, -2)))
        centred = xf - mean[..., None, None, :]
        var = group_mean(jnp.sum(jnp.square(centred), axis=(-3, -2)))
        mul = jax.lax.rsqrt(var + self.epsilon) * scale.astype(stats_dtype)
        y = centred * mul[..., None, None, :] + bias.astype(stats_dtype)
        return y.astype(self.dtype)


def frame_group_norm(groups: int, eps: float, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.Module:
    """GroupNorm with statistics per frame, as the reference's (B*F, C, H, W) layout gives."""
    return FrameGroupNorm(num_groups=groups, epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name)


def clamped_mixer(module: nn.Module, name: str = "alpha"):
    """Learned scalar in [0, 1], initialised to 1 (the temporal path starts switched off).

    The reference clamps the stored value in place on every forward, so gradients
    reach it unchanged; a straight-through clamp reproduces both the forward value
    and that gradient. Train steps project stored values back with `clamp_mixers`.
    """
    alpha = module.param(name, nn.initializers.ones, (1,), module.param_dtype)
    return alpha + jax.lax.stop_gradient(jnp.clip(alpha, 0.0, 1.0) - alpha)


def timestep_sinusoid(timesteps, dim: int, flip_sin_to_cos: bool, shift: float, max_period: float = 10000.0):
    """diffusers `get_timestep_embedding`: (B,) -> (B, dim) float32."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - shift)
    args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2, on a (B, in) sinusoid; returns (B, features)."""

    features: int
    zero_init_last: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name="linear_1")(x)
        last_init = nn.initializers.zeros if self.zero_init_last else nn.initializers.lecun_normal()
        return nn.Dense(
            self.features,
            kernel_init=last_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="linear_2",
        )(nn.silu(x))


class ResnetBlock2D(nn.Module):
    """diffusers ResnetBlock2D applied to every frame; temb is (B, T) per video, or None for
    blocks without a time embedding (the VAE's)."""

    out_channels: int
    groups: int
    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.silu(frame_group_norm(self.groups, self.eps, name="norm1", **kw)(x))
        h = nn.Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), name="conv1", **kw)(h)
        if temb is not None:
            t = nn.Dense(self.out_channels, name="time_emb_proj", **kw)(nn.silu(temb))
            h = h + t[:, None, None, None, :]
        h = nn.silu(frame_group_norm(self.groups, self.eps, name="norm2", **kw)(h))
        h = nn.Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), name="conv2", **kw)(h)
        if x.shape[-1] != self.out_channels:
            x = nn.Conv(self.out_channels, (1, 1), name="conv_shortcut", **kw)(x)
        return x + h


class TemporalResnetBlock(nn.Module):
    """Temporal residual block: x + (1 - alpha) * [GN, SiLU, conv_t, GN, SiLU, conv_t](x).

    GroupNorms are per frame with 32 groups and eps 1e-6; the convs are (3, 1, 1)
    over (F, H, W) with zero padding in time. No time embedding, as in the reference.
    """

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        conv = dict(kernel_size=(3, 1, 1), padding=((1, 1), (0, 0), (0, 0)), **kw)
        h = nn.silu(frame_group_norm(TEMPORAL_NORM_GROUPS, TEMPORAL_NORM_EPS, name="norm1", **kw)(x))
        h = nn.Conv(c, name="conv1", **conv)(h)
        h = nn.silu(frame_group_norm(TEMPORAL_NORM_GROUPS, TEMPORAL_NORM_EPS, name="norm2", **kw)(h))
        h = nn.Conv(c, name="conv2", **conv)(h)
        alpha = clamped_mixer(self).astype(h.dtype)
        return x + (1.0 - alpha) * h


class Downsample2D(nn.Module):
    """3x3 stride-2 conv per frame; padding 1, or (0, 1) on each axis when `padding=0`."""

    out_channels: int
    padding: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        pad = ((1, 1), (1, 1)) if self.padding == 1 else ((0, 1), (0, 1))
        return nn.Conv(
            self.out_channels,
            (3, 3),
            strides=(2, 2),
            padding=pad,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)


def resize_nearest(x, height: int, width: int):
    """torch `F.interpolate(mode="nearest")` on (..., H, W, C): source index floor(i * in / out)."""
    h, w = x.shape[-3], x.shape[-2]
    if (height, width) == (2 * h, 2 * w):
        return jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)
    rows = (jnp.arange(height) * h) // height
    cols = (jnp.arange(width) * w) // width
    return jnp.take(jnp.take(x, rows, axis=-3), cols, axis=-2)


class Upsample2D(nn.Module):
    """Nearest resize to (height, width), then a 3x3 conv per frame."""

    out_channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, size: tuple[int, int]):
        x = resize_nearest(x, *size)
        return nn.Conv(
            self.out_channels,
            (3, 3),
            padding=((1, 1), (1, 1)),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)
