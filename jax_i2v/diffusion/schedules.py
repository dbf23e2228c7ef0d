"""Noise schedules, forward noising and the correlated "pyoco mixed" video noise.

Latents are channels-last `(B, F, H, W, C)`; timesteps are integer arrays of shape `(B,)`
(or scalars), one per video.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "v_prediction")


@flax.struct.dataclass
class NoiseSchedule:
    """Discrete DDPM schedule as arrays (a pytree, so it can be passed into `jit`).

    betas, alphas_cumprod: (num_train_timesteps,) float32.
    """

    betas: jax.Array
    alphas_cumprod: jax.Array

    @property
    def num_train_timesteps(self) -> int:
        return self.betas.shape[0]


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """The noise schedule a model was trained with and what its output predicts: the settings every
    sampler of that model shares (DDIMConfig and LCMConfig extend it)."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: str = "epsilon"
    rescale_betas_zero_snr: bool = False

    def __post_init__(self):
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")

    def schedule(self) -> "NoiseSchedule":
        return make_schedule(self.beta_schedule, self.beta_start, self.beta_end, self.num_train_timesteps, self.rescale_betas_zero_snr)

    def schedule_settings(self) -> dict[str, Any]:
        """Just the ScheduleConfig fields: to build another sampler for the same model."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ScheduleConfig)}


def make_schedule(
    beta_schedule: str = "linear",
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    num_train_timesteps: int = 1000,
    rescale_betas_zero_snr: bool = False,
) -> NoiseSchedule:
    """The DDPM schedule. ConsistI2V trains with "linear" 0.00085..0.012 (not SD's "scaled_linear").

    `rescale_betas_zero_snr` shifts and scales sqrt(alpha_bar) so that the last timestep is pure
    noise (Lin et al. 2024, Algorithm 1; diffusers' option of the same name). Without it the last
    timestep keeps a little of the clip (linear: sqrt(alpha_bar_999) = 0.04), which a model learns to
    read, and sampling from pure noise then reads a random clip instead. It needs v-prediction.
    """
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
    if num_train_timesteps < 2 or not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(
            f"need num_train_timesteps >= 2 and 0 < beta_start <= beta_end < 1, got {num_train_timesteps}, {beta_start}, {beta_end}"
        )
    # float32 throughout, as diffusers computes it, so alphas_cumprod match it bit for bit.
    if beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float32)
    else:
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float32) ** 2
    if rescale_betas_zero_snr:
        betas = _zero_terminal_snr(betas)
    alphas_cumprod = np.cumprod(1.0 - betas, dtype=np.float32)
    return NoiseSchedule(betas=jnp.asarray(betas), alphas_cumprod=jnp.asarray(alphas_cumprod))


def _zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    root = np.sqrt(np.cumprod(1.0 - betas, dtype=np.float32))
    first, last = root[0], root[-1]
    root = (root - last) * (first / (first - last))
    alphas_cumprod = root**2
    alphas = np.concatenate([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return (1.0 - alphas).astype(np.float32)


def per_video(values: jax.Array, like: jax.Array) -> jax.Array:
    """(B,) or scalar -> broadcastable against `like` (B, ...)."""
    values = jnp.asarray(values, jnp.float32)
    if values.ndim == 0:
        return values
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


def signal_and_noise_scales(schedule: NoiseSchedule, timesteps, like: jax.Array):
    """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), broadcastable against `like`."""
    alpha_bar = per_video(schedule.alphas_cumprod[jnp.asarray(timesteps, jnp.int32)], like)
    return jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)


def add_noise(schedule: NoiseSchedule, clean: jax.Array, noise: jax.Array, timesteps) -> jax.Array:
    """q(x_t | x_0): sqrt(a_t) x_0 + sqrt(1 - a_t) eps, with t per video."""
    signal, sigma = signal_and_noise_scales(schedule, timesteps, clean)
    return (signal * clean.astype(jnp.float32) + sigma * noise.astype(jnp.float32)).astype(clean.dtype)


def velocity(schedule: NoiseSchedule, clean: jax.Array, noise: jax.Array, timesteps) -> jax.Array:
    """The v-prediction target sqrt(a_t) eps - sqrt(1 - a_t) x_0."""
    signal, sigma = signal_and_noise_scales(schedule, timesteps, clean)
    return signal * noise.astype(jnp.float32) - sigma * clean.astype(jnp.float32)


def split_prediction(schedule: NoiseSchedule, noisy: jax.Array, model_output: jax.Array, timesteps, prediction_type: str):
    """Model output -> (predicted x_0, predicted eps), both float32."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    signal, sigma = signal_and_noise_scales(schedule, timesteps, noisy)
    noisy = noisy.astype(jnp.float32)
    model_output = model_output.astype(jnp.float32)
    if prediction_type == "epsilon":
        return (noisy - sigma * model_output) / signal, model_output
    return signal * noisy - sigma * model_output, signal * model_output + sigma * noisy


def fold_in_each(keys: jax.Array, data) -> jax.Array:
    """`jax.random.fold_in` of one key, or of each key of a (B,) batch (one per video, so that a
    video's draws depend on its own key only, whatever else is in the batch)."""
    if keys.ndim:
        return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)
    return jax.random.fold_in(keys, data)


def pyoco_mixed_noise(rng: jax.Array, shape: tuple[int, ...], alpha: float, frame_axis: int = 1, dtype=jnp.float32):
    """Video noise correlated across frames (PYoCo "mixed"): sqrt(a^2/(1+a^2)) s + sqrt(1/(1+a^2)) e_f.

    `s` is one draw shared by all frames, `e_f` one per frame, so each frame has unit variance and
    any two frames correlate at a^2 / (1 + a^2). alpha = 0 gives independent frames; alpha may be traced.
    """
    if isinstance(alpha, (int, float)) and alpha < 0:
        raise ValueError(f"noise alpha must be >= 0, got {alpha}")
    shared_key, frame_key = jax.random.split(rng)
    shared_shape = tuple(1 if axis == frame_axis % len(shape) else n for axis, n in enumerate(shape))
    shared = jax.random.normal(shared_key, shared_shape, jnp.float32)
    per_frame = jax.random.normal(frame_key, shape, jnp.float32)
    a2 = jnp.square(jnp.asarray(alpha, jnp.float32))
    return (jnp.sqrt(a2 / (1.0 + a2)) * shared + jnp.sqrt(1.0 / (1.0 + a2)) * per_frame).astype(dtype)
