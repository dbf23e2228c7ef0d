"""Spatial attention through the Pallas TPU splash (flash) kernel shipped with JAX.

Sequences are padded to the kernel's blocks (multiples of 128); padded keys are masked out by a
static mask, so the kernel skips key blocks that are all padding, and padded query rows (which
still see every real key) are sliced off. Under a mesh the kernel runs per shard in `shard_map`,
with the batch split the way the logical rules split activations and heads over `tensor`.
Gradients go through the kernel's own backward (its custom VJP).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec

LANES = 128  # the kernel's blocks are multiples of the TPU's 128 lanes
MAX_BLOCK = 512


def _block_and_padded(length: int) -> tuple[int, int]:
    block = min(MAX_BLOCK, -(-length // LANES) * LANES)
    return block, -(-length // block) * block


def _kernel(heads: int, q_len: int, kv_len: int, interpret: bool):
    """A splash kernel for (heads, q_len, D) x (heads, kv_len, D); the mask hides padded keys."""
    block_q, q_pad = _block_and_padded(q_len)
    block_kv, kv_pad = _block_and_padded(kv_len)
    mask = np.zeros((q_pad, kv_pad), np.bool_)
    mask[:, :kv_len] = True
    multi_head = splash_mask.MultiHeadMask([splash_mask.NumpyMask(mask)] * heads)
    blocks = splash.BlockSizes(
        block_q=block_q,
        block_kv=block_kv,
        block_kv_compute=block_kv,
        block_q_dkv=block_q,
        block_kv_dkv=block_kv,
        block_kv_dkv_compute=block_kv,
        use_fused_bwd_kernel=True,
    )
    return splash.make_splash_mha(multi_head, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret)


def _local_attention(q, k, v, *, interpret: bool):
    """q: (..., Tq, N, D), k/v: (..., Tk, N, D) with equal leading dims -> (..., Tq, N, D)."""
    lead, (tq, n, d), tk = q.shape[:-3], q.shape[-3:], k.shape[-3]
    _, q_pad = _block_and_padded(tq)
    _, kv_pad = _block_and_padded(tk)

    def to_kernel_layout(x, length, padded):  # (..., T, N, D) -> (prod(lead), N, T_padded, D)
        x = jnp.swapaxes(x.reshape((-1,) + x.shape[-3:]), 1, 2)
        return jnp.pad(x, ((0, 0), (0, 0), (0, padded - length), (0, 0)))

    scale = jnp.asarray(1.0 / math.sqrt(d), q.dtype)
    kernel = _kernel(n, tq, tk, interpret)
    out = jax.vmap(kernel)(to_kernel_layout(q * scale, tq, q_pad), to_kernel_layout(k, tk, kv_pad), to_kernel_layout(v, tk, kv_pad))
    return jnp.swapaxes(out[:, :, :tq], 1, 2).reshape(lead + (tq, n, d)).astype(q.dtype)


def _shard_axes(mesh, logical: str, size: int):
    """The mesh axes `logical` maps to under the current rules, if they divide `size` (else None)."""
    spec = nn.logical_to_mesh_axes((logical,))
    axes = spec[0] if spec is not None and len(spec) else None
    if axes is None:
        return None
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    names = tuple(a for a in names if a in mesh.shape and mesh.shape[a] > 1)
    if not names or size % math.prod(mesh.shape[a] for a in names):
        return None
    return names


def splash_attention(q, k, v, *, interpret: bool = False):
    """Softmax attention (scale 1/sqrt(D)) with the splash kernel.

    q: (B, ..., Tq, N, D); k, v: (B, ..., Tk, N, D), leading dims broadcast to q's. Inside a
    mesh context the batch (leading) dimension is split over the axes the rules give "batch" and
    the heads over those of "heads"; each shard runs the kernel on its own videos and heads.
    """
    lead = jnp.broadcast_shapes(q.shape[:-3], k.shape[:-3])
    q, k, v = (jnp.broadcast_to(x, lead + x.shape[-3:]) for x in (q, k, v))
    attend = functools.partial(_local_attention, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or not lead:
        return attend(q, k, v)
    batch_axes = _shard_axes(mesh, "batch", lead[0])
    head_axes = _shard_axes(mesh, "heads", q.shape[-2])
    spec = PartitionSpec(batch_axes, *([None] * (len(lead) - 1)), None, head_axes, None)
    return jax.shard_map(attend, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)
