"""Consistency distillation as MCM / LCM do it (spec mcm.md sections 1.2-1.5 and 6).

Timesteps are integers of the teacher's training schedule (e.g. 0..999). Arrays are channels-last
videos (B, F, H, W, C) or anything broadcastable against a per-video (B,) timestep.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_i2v.diffusion.schedules import NoiseSchedule, per_video

SIGMA_DATA = 0.5
LOSS_TYPES = ("huber", "l2")


def boundary_scalings(timesteps, timestep_scaling: float = 4.0, sigma_data: float = SIGMA_DATA):
    """(c_skip, c_out) of f(x, t) = c_skip x + c_out x0_hat: c_skip(0) = 1, c_out(0) = 0.

    MCM's scripts train and sample with `timestep_scaling` 4 (the LCM default is 10).
    """
    scaled = jnp.asarray(timesteps, jnp.float32) * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / jnp.sqrt(scaled**2 + sigma_data**2)
    return c_skip, c_out


def consistency_output(noisy: jax.Array, x0: jax.Array, timesteps, timestep_scaling: float = 4.0) -> jax.Array:
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat, with t per video."""
    c_skip, c_out = boundary_scalings(timesteps, timestep_scaling)
    return per_video(c_skip, noisy) * noisy + per_video(c_out, noisy) * x0


def solver_timesteps(num_train_timesteps: int = 1000, num_solver_steps: int = 50) -> np.ndarray:
    """The DDIM solver grid tau_i = k (i + 1) - 1, k = N / num_solver_steps: 19, 39, ..., 999."""
    if num_train_timesteps % num_solver_steps:
        raise ValueError(f"{num_solver_steps} solver steps do not divide {num_train_timesteps} timesteps")
    skip = num_train_timesteps // num_solver_steps
    return np.arange(1, num_solver_steps + 1, dtype=np.int32) * skip - 1


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


def lcm_timesteps(num_steps: int, original_steps: int = 50, num_train_timesteps: int = 1000) -> np.ndarray:
    """The multistep sampler's timesteps, diffusers' LCMScheduler with `original_inference_steps`:
    the reversed solver grid indexed at floor(linspace(0, original_steps, num_steps, endpoint=False)).
    1: [999]; 2: [999, 499]; 4: [999, 759, 499, 259]."""
    if not 1 <= num_steps <= original_steps:
        raise ValueError(f"num_steps must be in [1, {original_steps}], got {num_steps}")
    grid = solver_timesteps(num_train_timesteps, original_steps)[::-1]
    return grid[np.floor(np.linspace(0, original_steps, num_steps, endpoint=False)).astype(np.int64)]


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
