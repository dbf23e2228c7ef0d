"""The one attention function every layer calls, the choice of kernel per attention kind, and
temporal position encodings.

The kernel is chosen once, for the platform the program is compiled for (a mesh's devices, or a
TPU topology's when compiling ahead of time on a CPU host), never from the host's default backend:

  kind       what it attends over                          auto: cpu / tpu / gpu
  spatial    a frame's H*W tokens -> [that frame || frame 0]   blocked / splash / cudnn
  cross      every token -> the caption's L tokens             blocked / xla    / cudnn
  temporal   a pixel's F frames (+ 8 first-frame neighbours)   blocked / xla    / cudnn

cuDNN is used only where its fused kernel runs (bf16/fp16, head width a multiple of 8 and at most
128); a kind whose head widths break that falls back to xla.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jax_i2v.models.splash import splash_attention

IMPLEMENTATIONS = ("auto", "xla", "blocked", "splash", "cudnn")
ATTENTION_KINDS = ("spatial", "cross", "temporal")
# Query rows per block of the "blocked" path: a block's logits stay in cache on CPU.
QUERY_BLOCK = 128
# The blocked path materialises attention whose logits (batch x heads x queries x keys) number at
# most this (4 MiB in float32): short key sequences, such as the caption's, where the block loop
# costs more than it saves (2x on the backward pass at 16x16 latents and 16 text tokens).
MATERIALISE_LOGITS = 1 << 20
# Up to this many logits (64 MiB in float32) the blocked path keeps each block's softmax for the
# backward pass instead of recomputing the block (1.2x on forward + backward at 16x16 latents).
SAVED_PROBS_LOGITS = 1 << 24


def _softmax_attention_fwd(q, k, v):
    scale = jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    logits = jnp.einsum("...qnd,...knd->...nqk", q * scale, k)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    out = jnp.einsum("...nqk,...knd->...qnd", probs.astype(v.dtype), v)
    return out, (q, k, v, probs)


def _softmax_attention_bwd(residuals, d_out):
    q, k, v, probs = residuals
    scale = jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    # Every product keeps the operand order "probabilities/logits first", which XLA:CPU lowers
    # without transposed copies (autodiff's order made the tiny temporal products 5x slower).
    d_v = jnp.einsum("...nqk,...qnd->...knd", probs.astype(v.dtype), d_out)
    d_probs = jnp.einsum("...qnd,...knd->...nqk", d_out, v).astype(jnp.float32)
    d_logits = probs * (d_probs - jnp.sum(probs * d_probs, axis=-1, keepdims=True))  # softmax's VJP
    d_logits = d_logits.astype(q.dtype)
    d_q = jnp.einsum("...nqk,...knd->...qnd", d_logits, k) * scale
    d_k = jnp.einsum("...nqk,...qnd->...knd", d_logits, q * scale)
    return _unbroadcast(d_q, q.shape), _unbroadcast(d_k, k.shape), _unbroadcast(d_v, v.shape)


def _unbroadcast(x, shape):
    """Sums x over the leading axes that were broadcast from `shape` (a cotangent's shape)."""
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and x.shape[lead + i] != 1)
    return jnp.sum(x, axis=axes).reshape(shape) if axes else x


@jax.custom_vjp
def _softmax_attention(q, k, v):
    """Materialised attention: logits in q's dtype, softmax in float32.

    The backward pass is written out (from the saved float32 softmax, as autodiff would keep it).
    """
    return _softmax_attention_fwd(q, k, v)[0]


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def _blocked_attention(
    q,
    k,
    v,
    block: int = QUERY_BLOCK,
    materialise_logits: int = MATERIALISE_LOGITS,
    saved_probs_logits: int = SAVED_PROBS_LOGITS,
):
    """Exact attention one (batch, query block) at a time.

    Small problems (at most `materialise_logits` logits) are materialised at once. Otherwise
    blocks of `block` queries are recomputed in the backward pass, so that no more than one
    block's logits are held, forward or backward, like a flash kernel; on CPU this is several
    times faster than materialising them all. Up to `saved_probs_logits` logits, blocks of
    2 * `block` queries keep their softmax for the backward pass instead.
    """
    lead = jnp.broadcast_shapes(q.shape[:-3], k.shape[:-3])
    tq, n, d = q.shape[-3:]
    n_logits = math.prod(lead) * n * tq * k.shape[-3]
    if n_logits <= materialise_logits:
        return _softmax_attention(q, k, v)
    if n_logits <= saved_probs_logits:
        block, attend = 2 * block, _softmax_attention
    else:
        attend = jax.checkpoint(_softmax_attention)
    block = min(block, tq)
    n_blocks = -(-tq // block)
    q = jnp.broadcast_to(q, lead + q.shape[-3:]).reshape((-1, tq, n, d))
    k = jnp.broadcast_to(k, lead + k.shape[-3:]).reshape((-1,) + k.shape[-3:])
    v = jnp.broadcast_to(v, lead + v.shape[-3:]).reshape((-1,) + v.shape[-3:])
    q = jnp.pad(q, ((0, 0), (0, n_blocks * block - tq), (0, 0), (0, 0)))
    q = q.reshape(q.shape[0], n_blocks, block, n, d)

    def per_batch(args):
        q_blocks, k_b, v_b = args
        return jax.lax.map(lambda q_block: attend(q_block, k_b, v_b), q_blocks)

    out = jax.lax.map(per_batch, (q, k, v)).reshape(-1, n_blocks * block, n, d)[:, :tq]
    return out.reshape(lead + (tq, n, d))


@dataclasses.dataclass(frozen=True)
class AttentionKernels:
    """The resolved kernel of each attention kind; `interpret` runs Pallas kernels off-TPU."""

    spatial: str = "xla"
    cross: str = "xla"
    temporal: str = "xla"
    interpret: bool = False

    def as_dict(self) -> dict[str, str]:
        return {kind: getattr(self, kind) for kind in ATTENTION_KINDS}


def cudnn_supported(dtype, head_width: int) -> bool:
    """Whether cuDNN's fused flash kernel accepts this dtype and head width."""
    return jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_width % 8 == 0 and head_width <= 128


def resolve_attention(requested: str, platform: str, head_widths: dict[str, tuple[int, ...]], dtype) -> AttentionKernels:
    """The kernel per attention kind for `requested` on `platform` ("cpu", "tpu", "gpu"/"cuda").

    head_widths: kind -> the head widths of every attention of that kind (for cuDNN's limits).
    "splash" is a spatial kernel: cross and temporal attention keep xla (their key sequences of
    77 and F+8 tokens would be padded to the kernel's 128-wide blocks). "blocked" and "xla" apply
    to every kind.
    """
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {requested!r}; expected one of {IMPLEMENTATIONS}")
    platform = "gpu" if platform in ("cuda", "rocm") else platform
    if requested == "auto":
        requested = {"cpu": "blocked", "tpu": "splash", "gpu": "cudnn"}.get(platform, "xla")
    if requested == "cudnn":
        if platform != "gpu":
            raise ValueError(f"attention 'cudnn' needs a GPU, but the program is compiled for {platform!r}")
        chosen = {kind: "cudnn" if all(cudnn_supported(dtype, w) for w in head_widths.get(kind, ())) else "xla" for kind in ATTENTION_KINDS}
        return AttentionKernels(**chosen)
    if requested == "splash":
        return AttentionKernels(spatial="splash", interpret=platform != "tpu")
    return AttentionKernels(spatial=requested, cross=requested, temporal=requested)


def dot_product_attention(q, k, v, *, implementation="xla", kind: str = "spatial", interpret: bool = False):
    """Softmax attention with scale 1/sqrt(head_dim).

    Args:
      q: (..., Tq, N, D) queries.
      k, v: (..., Tk, N, D) keys and values; leading dims broadcast against q's
        (so text keys of shape (B, 1, L, N, D) serve every frame without a copy).
      implementation: a resolved kernel (see `resolve_attention`): "xla" (materialised logits,
        softmax in float32), "blocked" (the same maths one query block at a time, recomputed in
        the backward pass), "splash" (the Pallas TPU flash kernel; `interpret` runs it on CPU),
        "cudnn" (fused flash attention on NVIDIA GPUs via `jax.nn.dot_product_attention`); or an
        `AttentionKernels`, whose kernel for `kind` is used.

    Returns:
      (..., Tq, N, D) in q's dtype.
    """
    if isinstance(implementation, AttentionKernels):
        implementation, interpret = getattr(implementation, kind), implementation.interpret
    if implementation == "splash":
        return splash_attention(q, k, v, interpret=interpret)
    if implementation == "cudnn":
        lead = jnp.broadcast_shapes(q.shape[:-3], k.shape[:-3])
        q4, k4, v4 = (jnp.broadcast_to(x, lead + x.shape[-3:]).reshape((-1,) + x.shape[-3:]) for x in (q, k, v))
        return jax.nn.dot_product_attention(q4, k4, v4, implementation="cudnn").reshape(lead + q.shape[-3:])
    if implementation not in ("xla", "blocked"):
        raise ValueError(f"unresolved attention implementation {implementation!r}")
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
