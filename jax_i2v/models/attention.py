"""The one attention kernel every layer calls, and temporal position encodings.

Swapping `implementation` is how a TPU/GPU flash kernel replaces the
dot-product path without touching the layers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "blocked", "cudnn")
# Query rows per block of the "blocked" path: a block's logits stay in cache on CPU.
QUERY_BLOCK = 128


def _softmax_attention(q, k, v):
    """Materialised attention: logits in q's dtype, softmax in float32."""
    scale = jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    logits = jnp.einsum("...qnd,...knd->...nqk", q * scale, k)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("...nqk,...knd->...qnd", weights, v)


def _blocked_attention(q, k, v, block: int = QUERY_BLOCK):
    """Exact attention one (batch, query block) at a time, recomputed in the backward pass.

    Never holds more than one block's logits, forward or backward, like a flash
    kernel; on CPU this is several times faster than materialising them all.
    """
    lead = jnp.broadcast_shapes(q.shape[:-3], k.shape[:-3])
    tq, n, d = q.shape[-3:]
    n_blocks = -(-tq // block)
    q = jnp.broadcast_to(q, lead + q.shape[-3:]).reshape((-1, tq, n, d))
    k = jnp.broadcast_to(k, lead + k.shape[-3:]).reshape((-1,) + k.shape[-3:])
    v = jnp.broadcast_to(v, lead + v.shape[-3:]).reshape((-1,) + v.shape[-3:])
    q = jnp.pad(q, ((0, 0), (0, n_blocks * block - tq), (0, 0), (0, 0)))
    q = q.reshape(q.shape[0], n_blocks, block, n, d)
    attend = jax.checkpoint(_softmax_attention)

    def per_batch(args):
        q_blocks, k_b, v_b = args
        return jax.lax.map(lambda q_block: attend(q_block, k_b, v_b), q_blocks)

    out = jax.lax.map(per_batch, (q, k, v)).reshape(-1, n_blocks * block, n, d)[:, :tq]
    return out.reshape(lead + (tq, n, d))


def resolve_implementation(implementation: str) -> str:
    """Maps "auto" to "blocked" on CPU and "xla" on accelerators (where XLA fuses the softmax)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r}; expected one of {IMPLEMENTATIONS}")
    if implementation == "auto":
        return "blocked" if jax.default_backend() == "cpu" else "xla"
    return implementation


def dot_product_attention(q, k, v, *, implementation: str = "auto"):
    """Softmax attention with scale 1/sqrt(head_dim).

    Args:
      q: (..., Tq, N, D) queries.
      k, v: (..., Tk, N, D) keys and values; leading dims broadcast against q's
        (so text keys of shape (B, 1, L, N, D) serve every frame without a copy).
      implementation: "xla" (materialised logits, softmax in float32), "blocked"
        (the same maths one query block at a time, recomputed in the backward pass),
        "cudnn" (fused flash attention on NVIDIA GPUs via `jax.nn.dot_product_attention`),
        or "auto" (blocked on CPU, xla elsewhere).

    Returns:
      (..., Tq, N, D) in q's dtype.
    """
    implementation = resolve_implementation(implementation)
    if implementation == "cudnn":
        lead = jnp.broadcast_shapes(q.shape[:-3], k.shape[:-3])
        q4, k4, v4 = (jnp.broadcast_to(x, lead + x.shape[-3:]).reshape((-1,) + x.shape[-3:]) for x in (q, k, v))
        return jax.nn.dot_product_attention(q4, k4, v4, implementation="cudnn").reshape(lead + q.shape[-3:])
    # Short sequences (temporal and text attention) are cheap to materialise.
    if implementation == "blocked" and q.shape[-3] > QUERY_BLOCK:
        return _blocked_attention(q, k, v)
    return _softmax_attention(q, k, v)


def rotary_frequencies(channels: int, theta: float = 10000.0):
    """Initial rotary `freqs` for a temporal attention of width `channels`: (channels // 4,).

    The reference rotates the first channels/2 of q and k, so its frequency
    vector has channels/4 entries: theta^(-2k/dim) with dim = channels/2.
    """
    dim = channels // 2
    return theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32)[: dim // 2] / dim)


def apply_rotary(x, freqs, positions):
    """Rotates interleaved channel pairs of the first 2*len(freqs) channels.

    Args:
      x: (..., T, C) projected queries or keys, before the head split.
      freqs: (R,) rotary frequencies, R <= C/2.
      positions: (T,) integer or float positions.

    Pairs (2i, 2i+1) -> (x cos - y sin, y cos + x sin) with angle position * freqs[i];
    the remaining C - 2R channels pass through. Computed in float32.
    """
    rot = 2 * freqs.shape[0]
    angles = positions.astype(jnp.float32)[:, None] * freqs.astype(jnp.float32)[None, :]  # (T, R)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    head, tail = x[..., :rot], x[..., rot:]
    pairs = head.astype(jnp.float32).reshape(head.shape[:-1] + (rot // 2, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = jnp.stack([even * cos - odd * sin, odd * cos + even * sin], axis=-1)
    rotated = rotated.reshape(head.shape).astype(x.dtype)
    return jnp.concatenate([rotated, tail], axis=-1)


def sinusoidal_positions(length: int, channels: int):
    """Fixed sin/cos table (length, channels): sin on even channels, cos on odd."""
    position = jnp.arange(length, dtype=jnp.float32)[:, None]
    div = jnp.exp(jnp.arange(0, channels, 2, dtype=jnp.float32) * (-math.log(10000.0) / channels))
    table = jnp.zeros((length, channels), jnp.float32)
    table = table.at[:, 0::2].set(jnp.sin(position * div))
    return table.at[:, 1::2].set(jnp.cos(position * div))
