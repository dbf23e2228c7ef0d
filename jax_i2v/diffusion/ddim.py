"""DDIM sampling (Song et al. 2021) with diffusers' `DDIMScheduler` conventions.

The sampler takes its timestep list as a fixed-size padded array and a traced step count, so
one compilation serves every number of steps, eta and guidance scale.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jax_i2v.diffusion import progress
from jax_i2v.diffusion.schedules import NoiseSchedule, ScheduleConfig, fold_in_each, split_prediction
from jax_i2v.models.config import from_diffusers_dict, to_diffusers_dict

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
# diffusers scheduler_config.json keys that do not change what DDIM computes here (the
# thresholding settings only matter with thresholding on, which is not supported).
_IGNORED_DIFFUSERS_KEYS = {
    "_class_name",
    "_diffusers_version",
    "_use_default_values",
    "skip_prk_steps",
    "variance_type",
    "dynamic_thresholding_ratio",
    "sample_max_value",
}
_UNSUPPORTED_IF_SET = {"thresholding": False, "trained_betas": None}


@dataclasses.dataclass(frozen=True)
class DDIMConfig(ScheduleConfig):
    """Scheduler settings; the defaults are ConsistI2V's (`configs/inference/inference.yaml`)."""

    steps_offset: int = 1
    timestep_spacing: str = "leading"
    set_alpha_to_one: bool = True
    clip_sample: bool = False
    clip_sample_range: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {self.timestep_spacing!r}")
        if self.rescale_betas_zero_snr and self.prediction_type != "v_prediction":
            raise ValueError(
                "rescale_betas_zero_snr needs prediction_type='v_prediction': "
                "at zero SNR the clean sample cannot be recovered from a noise prediction"
            )

    @classmethod
    def from_diffusers(cls, scheduler_config: Mapping[str, Any]) -> "DDIMConfig":
        """From a diffusers `scheduler_config.json` dict (any of its noise schedulers: the schedule
        and prediction settings are what DDIM reads); settings this sampler cannot honour raise."""
        return from_diffusers_dict(cls, scheduler_config, _UNSUPPORTED_IF_SET, _IGNORED_DIFFUSERS_KEYS, "scheduler")

    def to_diffusers(self) -> dict[str, Any]:
        """The `scheduler_config.json` of the equivalent diffusers `DDIMScheduler`."""
        return to_diffusers_dict(self, "DDIMScheduler", _UNSUPPORTED_IF_SET)


def check_num_steps(num_steps: int, config: DDIMConfig) -> None:
    if not 1 <= int(num_steps) <= config.num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {config.num_train_timesteps}], got {num_steps}")


def ddim_timesteps(num_steps: int, config: DDIMConfig = DDIMConfig()) -> np.ndarray:
    """The descending timestep list, e.g. 981, 961, ..., 1 for 50 leading steps.

    Computed on the host in float64 exactly as diffusers does, rounding ties included.
    """
    check_num_steps(num_steps, config)
    n = config.num_train_timesteps
    if config.timestep_spacing == "leading":
        return np.arange(num_steps)[::-1] * (n // num_steps) + config.steps_offset
    if config.timestep_spacing == "trailing":
        return np.round(np.arange(n, 0, -n / num_steps)).astype(np.int64) - 1
    return np.linspace(0, n - 1, num_steps).round()[::-1].astype(np.int64)


def padded_timesteps(num_steps: int, config: DDIMConfig = DDIMConfig()) -> np.ndarray:
    """`ddim_timesteps` zero-padded to (num_train_timesteps,) int32: one shape for every step
    count, so a compiled sampler takes any number of steps without recompiling."""
    timesteps = np.zeros((config.num_train_timesteps,), np.int32)
    timesteps[:num_steps] = ddim_timesteps(num_steps, config)
    return timesteps


def previous_timestep(t, num_steps, config: DDIMConfig):
    """As diffusers' DDIM: t - N // num_steps for every spacing; < 0 marks the final step."""
    return t - config.num_train_timesteps // jnp.asarray(num_steps, jnp.int32)


def ddim_step(
    schedule: NoiseSchedule,
    config: DDIMConfig,
    model_output: jax.Array,
    timestep,
    prev_timestep,
    sample: jax.Array,
    eta=0.0,
    noise: jax.Array | None = None,
):
    """One DDIM update x_t -> x_{t_prev} (eq. 12 of the DDIM paper). Returns (x_prev, predicted x_0).

    `timestep`, `prev_timestep`: scalars (shared by the batch); prev < 0 means the final step,
    where alpha_bar_prev is 1 (`set_alpha_to_one`) or alpha_bar_0. `noise` is required when eta > 0.
    """
    alphas_cumprod = schedule.alphas_cumprod
    final_alpha = 1.0 if config.set_alpha_to_one else alphas_cumprod[0]
    alpha_t = alphas_cumprod[timestep]
    alpha_prev = jnp.where(prev_timestep >= 0, alphas_cumprod[jnp.maximum(prev_timestep, 0)], final_alpha)

    x0, eps = split_prediction(schedule, sample, model_output, timestep, config.prediction_type)
    if config.clip_sample:
        x0 = jnp.clip(x0, -config.clip_sample_range, config.clip_sample_range)
    variance = (1.0 - alpha_prev) / (1.0 - alpha_t) * (1.0 - alpha_t / alpha_prev)
    std = eta * jnp.sqrt(variance)
    x_prev = jnp.sqrt(alpha_prev) * x0 + jnp.sqrt(jnp.maximum(1.0 - alpha_prev - std**2, 0.0)) * eps
    if noise is not None:
        x_prev = x_prev + std * noise.astype(jnp.float32)
    return x_prev, x0


def ddim_sample(
    denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
    initial: jax.Array,
    rng: jax.Array,
    timesteps: jax.Array,
    num_steps,
    schedule: NoiseSchedule,
    config: DDIMConfig,
    eta=0.0,
    report_progress: bool = False,
    noise_fn: Callable[[jax.Array, tuple[int, ...]], jax.Array] | None = None,
) -> jax.Array:
    """Runs DDIM from `initial` (x_T, float32) and returns x_0.

    denoise_fn(x, t) -> model output for x at integer timestep t (a scalar).
    timesteps: `padded_timesteps(num_steps, config)`; it, `num_steps` and `eta` may be traced: the
    loop is a `fori_loop`, so the caller's `jit` compiles the model once for all step counts.
    Step i's eta-noise is `noise_fn(fold_in(rng, i), shape)`, independent normals by default; pass
    the training noise (e.g. pyoco mixed): the posterior's noise has the forward noise's covariance.
    `rng` may hold one key per video (B,), each folded in alone; `noise_fn` then takes such keys.
    `report_progress` sends (i, num_steps) to `jax_i2v.diffusion.progress` listeners after each step.
    """

    timesteps = jnp.asarray(timesteps, jnp.int32)
    if noise_fn is None:

        def noise_fn(key, shape):
            return jax.random.normal(key, shape, jnp.float32)

    def body(i, x):
        t = timesteps[i]
        model_output = denoise_fn(x, t)
        noise = noise_fn(fold_in_each(rng, i), x.shape)
        x, _ = ddim_step(schedule, config, model_output, t, previous_timestep(t, num_steps, config), x, eta, noise)
        if report_progress:
            jax.debug.callback(progress.report_step, i, num_steps)
        return x

    return jax.lax.fori_loop(0, num_steps, body, initial.astype(jnp.float32))
