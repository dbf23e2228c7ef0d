"""What MCM's consistency loss compares: a motion representation M(x) of the clean-video estimate
(spec mcm.md section 2), so appearance can be left to the discriminator.

Videos are channels-last latents (B, F, H, W, C).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_i2v.diffusion.frameinit import FrameInitConfig, frequency_mix, low_pass_filter
from jax_i2v.models.layers import frame_group_norm

MOTION_REPRESENTATIONS = ("raw", "diff", "freql", "freqh", "learn")
# The reference's frequency split: FreeInit's Butterworth mask, order 4, stop frequency 0.25.
FREQUENCY_SPLIT = FrameInitConfig("butterworth", d_s=0.25, d_t=0.25, order=4)


def temporal_difference(x: jax.Array) -> jax.Array:
    """x[:, 1:] - x[:, :-1]: (B, F - 1, H, W, C); zero for a static video."""
    return x[:, 1:] - x[:, :-1]


def frequency_split(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(low, high) parts of the 3D spectrum over (F, H, W); low + high = x."""
    mask = low_pass_filter(x.shape[1], x.shape[2], x.shape[3], FREQUENCY_SPLIT)
    zeros = jnp.zeros_like(x, jnp.float32)
    return frequency_mix(x, zeros, mask), frequency_mix(zeros, x, mask)


class SpatialHead(nn.Module):
    """MCM's learnable representation: x + Conv1x1(L(SiLU(x))) on every frame alone, L being
    `num_layers - 1` [Conv k x k -> GroupNorm(32) -> SiLU] blocks of width 64. The output conv is
    zero-initialised, so the head starts as the identity. ("learn": 2 layers, k = 1.)"""

    num_layers: int = 2
    kernel_size: int = 1
    width: int = 64

    @nn.compact
    def __call__(self, x):
        h = nn.silu(x)
        pad = self.kernel_size // 2
        for i in range(self.num_layers - 1):
            h = nn.Conv(self.width, (self.kernel_size,) * 2, padding=((pad, pad),) * 2, name=f"conv_{i}")(h)
            h = nn.silu(frame_group_norm(32, 1e-5, jnp.float32, jnp.float32, name=f"norm_{i}")(h))
        out = nn.Conv(x.shape[-1], (1, 1), kernel_init=nn.initializers.zeros, name="out")(h)
        return x + out


def motion_representation(x: jax.Array, kind: str, head: Any = None, head_params: Any = None) -> jax.Array:
    """M(x) for kind in MOTION_REPRESENTATIONS; "learn" applies `head` (a SpatialHead) with
    `head_params` (the student's for the prediction, the EMA copy's for the target)."""
    if kind == "raw":
        return x
    if kind == "diff":
        return temporal_difference(x)
    if kind in ("freql", "freqh"):
        low, high = frequency_split(x)
        return low if kind == "freql" else high
    if kind == "learn":
        if head is None or head_params is None:
            raise ValueError("the learned motion representation needs the head and its params")
        return head.apply({"params": head_params}, x)
    raise ValueError(f"motion representation must be one of {MOTION_REPRESENTATIONS}, got {kind!r}")
