"""Multistep consistency sampling (LCM, Luo et al. 2023; diffusers' `LCMScheduler`), what MCM
students sample with: 1-8 steps, no guidance, fresh noise between steps.

Step at t: x0 from the model output, d = c_skip(t) x_t + c_out(t) x0; unless last,
x_{t'} = sqrt(a_t') d + sqrt(1 - a_t') z with new noise z; the last step returns d.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jax_i2v.diffusion import progress
from jax_i2v.diffusion.schedules import NoiseSchedule, ScheduleConfig, fold_in_each, per_video, split_prediction
from jax_i2v.models.config import from_diffusers_dict, to_diffusers_dict

SIGMA_DATA = 0.5
_IGNORED_DIFFUSERS_KEYS = {
    "_class_name",
    "_diffusers_version",
    "_use_default_values",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    "clip_sample_range",
}
# LCMScheduler settings this sampler implements only at these values.
_FIXED = {
    "thresholding": False,
    "trained_betas": None,
    "clip_sample": False,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "timestep_spacing": "leading",
}


def boundary_scalings(timesteps, timestep_scaling: float = 4.0, sigma_data: float = SIGMA_DATA):
    """(c_skip, c_out) of f(x, t) = c_skip x + c_out x0_hat: c_skip(0) = 1, c_out(0) = 0.

    MCM's scripts train and sample with `timestep_scaling` 4 (the LCM default is 10).
    """
    scaled = jnp.asarray(timesteps, jnp.float32) * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / jnp.sqrt(scaled**2 + sigma_data**2)
    return c_skip, c_out


def consistency_output(noisy: jax.Array, x0: jax.Array, timesteps, timestep_scaling: float = 4.0) -> jax.Array:
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat, with t per video (or shared)."""
    c_skip, c_out = boundary_scalings(timesteps, timestep_scaling)
    return per_video(c_skip, noisy) * noisy + per_video(c_out, noisy) * x0


def solver_timesteps(num_train_timesteps: int = 1000, num_solver_steps: int = 50) -> np.ndarray:
    """The DDIM solver grid the student was distilled on: tau_i = k (i + 1) - 1, k = N / steps."""
    if num_train_timesteps % num_solver_steps:
        raise ValueError(f"{num_solver_steps} solver steps do not divide {num_train_timesteps} timesteps")
    skip = num_train_timesteps // num_solver_steps
    return np.arange(1, num_solver_steps + 1, dtype=np.int32) * skip - 1


def lcm_timesteps(num_steps: int, original_steps: int = 50, num_train_timesteps: int = 1000) -> np.ndarray:
    """The reversed solver grid at floor(linspace(0, original_steps, num_steps, endpoint=False)):
    1: [999]; 2: [999, 499]; 4: [999, 759, 499, 259] (as diffusers' LCMScheduler)."""
    if not 1 <= num_steps <= original_steps:
        raise ValueError(f"num_steps must be in [1, {original_steps}], got {num_steps}")
    grid = solver_timesteps(num_train_timesteps, original_steps)[::-1]
    return grid[np.floor(np.linspace(0, original_steps, num_steps, endpoint=False)).astype(np.int64)]


@dataclasses.dataclass(frozen=True)
class LCMConfig(ScheduleConfig):
    """The consistency sampler's settings; the schedule must be the teacher's."""

    timestep_scaling: float = 4.0
    original_inference_steps: int = 50

    def timesteps(self, num_steps: int) -> np.ndarray:
        return lcm_timesteps(num_steps, self.original_inference_steps, self.num_train_timesteps)

    def padded_timesteps(self, num_steps: int) -> np.ndarray:
        """`timesteps` zero-padded to `original_inference_steps` entries: one compiled sampler for
        every step count."""
        out = np.zeros((self.original_inference_steps,), np.int32)
        out[:num_steps] = self.timesteps(num_steps)
        return out

    @classmethod
    def with_schedule_of(cls, scheduler: ScheduleConfig, **overrides) -> "LCMConfig":
        """The sampler for a model trained with `scheduler`'s noise schedule (e.g. a DDIMConfig)."""
        return cls(**scheduler.schedule_settings(), **overrides)

    @classmethod
    def from_diffusers(cls, scheduler_config: Mapping[str, Any]) -> "LCMConfig":
        return from_diffusers_dict(cls, scheduler_config, _FIXED, _IGNORED_DIFFUSERS_KEYS, "LCM scheduler")

    def to_diffusers(self) -> dict[str, Any]:
        return to_diffusers_dict(self, "LCMScheduler", _FIXED)


def lcm_step(schedule: NoiseSchedule, config: LCMConfig, model_output, timestep, next_timestep, sample, noise):
    """One step; `next_timestep` < 0 marks the last (no noise added). Returns (x_next, denoised)."""
    x0, _ = split_prediction(schedule, sample, model_output, timestep, config.prediction_type)
    denoised = consistency_output(sample.astype(jnp.float32), x0, timestep, config.timestep_scaling)
    alpha_next = schedule.alphas_cumprod[jnp.maximum(next_timestep, 0)]
    renoised = jnp.sqrt(alpha_next) * denoised + jnp.sqrt(1.0 - alpha_next) * noise.astype(jnp.float32)
    return jnp.where(next_timestep >= 0, renoised, denoised), denoised


def lcm_sample(
    denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
    initial: jax.Array,
    rng: jax.Array,
    timesteps: jax.Array,
    num_steps,
    config: LCMConfig,
    noise_fn: Callable[[jax.Array, tuple[int, ...]], jax.Array],
    report_progress: bool = False,
) -> jax.Array:
    """Runs the consistency sampler from pure noise `initial`; step i's fresh noise is
    `noise_fn(fold_in(rng, i), shape)` (the training noise, e.g. pyoco mixed; `rng` may hold one
    key per video, (B,), each folded in alone). `timesteps` is
    `config.padded_timesteps(n)`; it and `num_steps` may be traced (a `fori_loop`)."""
    schedule = config.schedule()
    timesteps = jnp.asarray(timesteps, jnp.int32)
    num_steps = jnp.asarray(num_steps, jnp.int32)

    def body(i, x):
        t = timesteps[i]
        next_t = jnp.where(i + 1 < num_steps, timesteps[jnp.minimum(i + 1, timesteps.shape[0] - 1)], -1)
        x, _ = lcm_step(schedule, config, denoise_fn(x, t), t, next_t, x, noise_fn(fold_in_each(rng, i), x.shape))
        if report_progress:
            jax.debug.callback(progress.report_step, i, num_steps)
        return x

    return jax.lax.fori_loop(0, num_steps, body, initial.astype(jnp.float32))
