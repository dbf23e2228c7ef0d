"""Consistency distillation's training side as MCM does it (spec mcm.md sections 1.2-1.5); the
boundary conditions and the sampler's timesteps are in jax_i2v/diffusion/lcm.py.

Timesteps are integers of the teacher's training schedule (e.g. 0..999). Arrays are channels-last
videos (B, F, H, W, C) or anything broadcastable against a per-video (B,) timestep.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_i2v.diffusion.lcm import solver_timesteps
from jax_i2v.diffusion.schedules import NoiseSchedule, per_video

LOSS_TYPES = ("huber", "l2")


def solver_previous_timesteps(num_train_timesteps: int = 1000, num_solver_steps: int = 50) -> np.ndarray:
    """t_n for each grid index: max(tau_i - k, 0), the end of one solver step."""
    grid = solver_timesteps(num_train_timesteps, num_solver_steps)
    return np.maximum(grid - num_train_timesteps // num_solver_steps, 0).astype(np.int32)


def ddim_solver_step(schedule: NoiseSchedule, x0: jax.Array, eps: jax.Array, index, num_solver_steps: int = 50) -> jax.Array:
    """One eta = 0 DDIM step from grid index i to i - 1: sqrt(a_prev) x0 + sqrt(1 - a_prev) eps,
    a_prev = alpha_bar[tau_{i-1}], or alpha_bar[0] from i = 0 (as the reference's solver)."""
    grid = jnp.asarray(solver_timesteps(schedule.num_train_timesteps, num_solver_steps))
    index = jnp.asarray(index, jnp.int32)
    previous = jnp.where(index > 0, grid[jnp.maximum(index - 1, 0)], 0)
    alpha_prev = per_video(schedule.alphas_cumprod[previous], x0)
    return jnp.sqrt(alpha_prev) * x0 + jnp.sqrt(1.0 - alpha_prev) * eps


def lcm_guidance(conditional: jax.Array, unconditional: jax.Array, w) -> jax.Array:
    """LCM-form guidance c + w (c - u), i.e. classic CFG at scale 1 + w; w per video."""
    return conditional + per_video(w, conditional) * (conditional - unconditional)


def consistency_loss(prediction: jax.Array, target: jax.Array, loss_type: str = "huber", huber_c: float = 0.001) -> jax.Array:
    """Mean pseudo-Huber sqrt((a - b)^2 + c^2) - c (MCM's scripts, c = 0.001) or mean squared error."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    diff = prediction.astype(jnp.float32) - target.astype(jnp.float32)
    if loss_type == "l2":
        return jnp.mean(jnp.square(diff))
    return jnp.mean(jnp.sqrt(jnp.square(diff) + huber_c**2) - huber_c)
