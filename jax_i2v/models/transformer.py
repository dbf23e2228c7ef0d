"""Spatial and temporal transformers of the video UNet (reference `tblocks.py`, `attn.py`).

Activations are (B, F, H, W, C); text is (B, L, D). Spatial attention runs over
the H*W tokens of each frame, temporal attention over the F frames of each pixel.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_i2v.models.attention import AttentionKernels, apply_rotary, dot_product_attention, rotary_frequencies, sinusoidal_positions
from jax_i2v.models.layers import clamped_mixer, frame_group_norm

Dtype = Any

# Row-major 3x3 neighbourhood minus the centre: the first-frame window of temporal attention.
NEIGHBOUR_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def dense_tokens(dense: nn.Module, x):
    """Applies a Dense to (..., C) as one (tokens, C) matrix.

    XLA:CPU lowers the weight gradient of a Dense over 5-D activations (a dot contracting four
    axes) with a transposed copy of the whole output gradient; over a 2-D matrix it contracts in
    place (a Dense's forward + backward is ~1.3x faster at the UNet's sizes).
    """
    y = dense(x.reshape(-1, x.shape[-1]))
    return y.reshape(x.shape[:-1] + y.shape[-1:])


def split_heads(x, heads: int):
    return x.reshape(x.shape[:-1] + (heads, x.shape[-1] // heads))


def merge_heads(x):
    return x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))


def first_frame_neighbours(frame0):
    """(B, H, W, C) -> (B, H, W, 8, C): the 8 off-centre 3x3 neighbours, replicate-padded."""
    h, w = frame0.shape[1], frame0.shape[2]
    padded = jnp.pad(frame0, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return jnp.stack([padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in NEIGHBOUR_OFFSETS], axis=3)


class Projections(nn.Module):
    """diffusers `Attention` weights: to_q/to_k/to_v without bias, to_out.0 with bias."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(features=self.features, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        self.to_q = nn.Dense(**kw)
        self.to_k = nn.Dense(**kw)
        self.to_v = nn.Dense(**kw)
        self.to_out_0 = nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype)


class SpatialSelfAttention(Projections):
    """Per-frame self-attention; with `first_frame`, keys/values are [current frame || frame 0]."""

    heads: int = 1
    first_frame: bool = False
    implementation: AttentionKernels = AttentionKernels()

    def __call__(self, x):
        b, f, h, w, c = x.shape
        tokens = x.reshape(b, f, h * w, c)
        q, k, v = (dense_tokens(dense, tokens) for dense in (self.to_q, self.to_k, self.to_v))
        if self.first_frame:
            # Projecting frame 0 once and broadcasting equals projecting the broadcast tokens.
            k = jnp.concatenate([k, jnp.broadcast_to(k[:, :1], k.shape)], axis=2)
            v = jnp.concatenate([v, jnp.broadcast_to(v[:, :1], v.shape)], axis=2)
        out = dot_product_attention(
            split_heads(q, self.heads),
            split_heads(k, self.heads),
            split_heads(v, self.heads),
            implementation=self.implementation,
            kind="spatial",
        )
        return dense_tokens(self.to_out_0, merge_heads(out)).reshape(b, f, h, w, c)


class SpatialCrossAttention(Projections):
    """Per-frame cross-attention to the video's text embedding (B, L, D)."""

    heads: int = 1
    implementation: AttentionKernels = AttentionKernels()

    def __call__(self, x, context):
        b, f, h, w, c = x.shape
        # Every token of the video attends to the same keys: one long query sequence per video.
        q = split_heads(dense_tokens(self.to_q, x.reshape(b, f * h * w, c)), self.heads)
        k = split_heads(self.to_k(context), self.heads)
        v = split_heads(self.to_v(context), self.heads)
        out = dot_product_attention(q, k, v, implementation=self.implementation, kind="cross")
        return dense_tokens(self.to_out_0, merge_heads(out)).reshape(b, f, h, w, c)


class RotaryEmbedding(nn.Module):
    """Holds the (trainable, as in the reference) rotary frequencies: (channels // 4,)."""

    channels: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self):
        return self.param("freqs", lambda _: rotary_frequencies(self.channels).astype(self.param_dtype))


class TemporalAttention(Projections):
    """Attention over frames at every pixel (`TemporalConditionalAttention`).

    Self-attention (`context is None`): keys/values are the F frames plus, with
    `first_frame_window`, the 8 neighbours of the pixel in frame 0. Rotary
    positions: queries 0..F-1, keys 0..F-1 and 0 for the neighbours (the identity
    rotation, so they are left unrotated). Cross-attention: keys/values are the
    text; rotary applies to queries only, except that, like the reference, text
    exactly as long as the clip has its keys rotated too.
    """

    heads: int = 1
    position_embedding: str = "rotary"
    first_frame_window: bool = False
    implementation: AttentionKernels = AttentionKernels()

    @nn.compact
    def __call__(self, x, context=None):
        b, f, h, w, c = x.shape
        positions = jnp.arange(f)
        if self.position_embedding == "sinusoidal":
            x = x + sinusoidal_positions(f, c).astype(x.dtype)[None, :, None, None, :]
        else:
            freqs = RotaryEmbedding(c, self.param_dtype, name="rotary_emb")()

        def rotate(t):  # (B, H, W, F, C) along F
            return apply_rotary(t, freqs, positions) if self.position_embedding == "rotary" else t

        def per_pixel(t):  # (B, F, H, W, C) -> (B, H, W, F, C)
            return jnp.transpose(t, (0, 2, 3, 1, 4))

        q = rotate(per_pixel(dense_tokens(self.to_q, x)))  # (B, H, W, F, C)
        if context is None:
            k_frames, v_frames = dense_tokens(self.to_k, x), dense_tokens(self.to_v, x)
            k, v = rotate(per_pixel(k_frames)), per_pixel(v_frames)
            if self.first_frame_window:
                # Gathering after the projection equals projecting the gathered tokens, at 1/8 the cost.
                k = jnp.concatenate([k, first_frame_neighbours(k_frames[:, 0])], axis=3)
                v = jnp.concatenate([v, first_frame_neighbours(v_frames[:, 0])], axis=3)
            out = dot_product_attention(
                split_heads(q, self.heads),
                split_heads(k, self.heads),
                split_heads(v, self.heads),
                implementation=self.implementation,
                kind="temporal",
            )
        else:
            k, v = self.to_k(context), self.to_v(context)  # (B, L, C)
            if context.shape[1] == f:
                # Reference quirk: its rotary processor rotates keys whenever query and key
                # lengths match, so text as long as the clip gets positions 0..L-1.
                k = apply_rotary(k, freqs, positions) if self.position_embedding == "rotary" else k
            # Keys are shared by every pixel: fold pixels and frames into one query sequence.
            out = dot_product_attention(
                split_heads(q.reshape(b, h * w * f, c), self.heads),
                split_heads(k, self.heads),
                split_heads(v, self.heads),
                implementation=self.implementation,
                kind="cross",
            ).reshape(b, h, w, f, self.heads, c // self.heads)
        out = dense_tokens(self.to_out_0, merge_heads(out))
        return jnp.transpose(out, (0, 3, 1, 2, 4))


_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@jax.custom_jvp
def gated_gelu(value, gate):
    """value * gelu(gate) with the exact (erf) GELU, torch's `F.gelu`, computed in float32.

    The custom JVP is the closed form d/dg gelu(g) = Phi(g) + g phi(g): one erf and one exp per
    element in the backward pass, against the several passes XLA derives from `nn.gelu`'s erfc.
    """
    g = gate.astype(jnp.float32)
    act = g * (0.5 + 0.5 * jax.lax.erf(g * _SQRT_HALF))
    return (value.astype(jnp.float32) * act).astype(value.dtype)


@gated_gelu.defjvp
def _gated_gelu_jvp(primals, tangents):
    value, gate = primals
    d_value, d_gate = tangents
    g, v = gate.astype(jnp.float32), value.astype(jnp.float32)
    cdf = 0.5 + 0.5 * jax.lax.erf(g * _SQRT_HALF)
    pdf = jnp.exp(-0.5 * g * g) * _INV_SQRT_2PI
    act = g * cdf
    out = (v * act).astype(value.dtype)
    d_out = d_value.astype(jnp.float32) * act + d_gate.astype(jnp.float32) * (v * (cdf + g * pdf))
    return out, d_out.astype(value.dtype)


class GEGLU(nn.Module):
    """ff.net.0.proj (C -> 8C) split into value and gate, value * gelu(gate), ff.net.2 (4C -> C)."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        value, gate = jnp.split(dense_tokens(nn.Dense(8 * c, name="proj", **kw), x), 2, axis=-1)
        return gated_gelu(value, gate)


class FeedForward(nn.Module):
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        tokens = x.reshape(-1, x.shape[-1])
        h = GEGLU(name="net_0", **kw)(tokens)
        return nn.Dense(x.shape[-1], name="net_2", **kw)(h).reshape(x.shape)


class TransformerBlock(nn.Module):
    """LN -> self-attn -> LN -> text cross-attn -> LN -> GEGLU, each with a residual."""

    heads: int
    temporal: bool
    first_frame: bool
    position_embedding: str = "rotary"
    implementation: AttentionKernels = AttentionKernels()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        c = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = dict(features=c, heads=self.heads, implementation=self.implementation, **kw)
        if self.temporal:
            temporal = dict(position_embedding=self.position_embedding, **attn)
            attn1 = TemporalAttention(first_frame_window=self.first_frame, name="attn1", **temporal)
            attn2 = TemporalAttention(name="attn2", **temporal)
        else:
            attn1 = SpatialSelfAttention(first_frame=self.first_frame, name="attn1", **attn)
            attn2 = SpatialCrossAttention(name="attn2", **attn)
        x = x + attn1(nn.LayerNorm(epsilon=1e-5, name="norm1", **kw)(x))
        x = x + attn2(nn.LayerNorm(epsilon=1e-5, name="norm2", **kw)(x), context)
        return x + FeedForward(name="ff", **kw)(nn.LayerNorm(epsilon=1e-5, name="norm3", **kw)(x))


class Transformer(nn.Module):
    """`Transformer2DConditionModel`: GN (per frame, eps 1e-6) -> proj_in -> block -> proj_out -> + input.

    Temporal transformers mix their output with learned alpha:
    alpha * input + (1 - alpha) * output.
    """

    heads: int
    groups: int
    temporal: bool = False
    first_frame: bool = False
    position_embedding: str = "rotary"
    implementation: AttentionKernels = AttentionKernels()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        c = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = frame_group_norm(self.groups, 1e-6, name="norm", **kw)(x)
        h = dense_tokens(nn.Dense(c, name="proj_in", **kw), h)
        h = TransformerBlock(
            heads=self.heads,
            temporal=self.temporal,
            first_frame=self.first_frame,
            position_embedding=self.position_embedding,
            implementation=self.implementation,
            name="transformer_blocks_0",
            **kw,
        )(h, context)
        out = dense_tokens(nn.Dense(c, name="proj_out", **kw), h) + x
        if not self.temporal:
            return out
        alpha = clamped_mixer(self).astype(out.dtype)
        return alpha * x + (1.0 - alpha) * out
