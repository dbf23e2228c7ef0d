"""The ConsistI2V training objective (`train.py:383-464`) as a pure function.

Per video: t ~ U{0..T-1}; all F frames are noised with pyoco-mixed noise; with probability
`first_frame_dropout` the clean conditioning frame is replaced by its own noisy version at t, and
independently with probability `text_dropout` the caption by the empty caption; the model sees the
noisy frames 2..F and the loss is the MSE on those frames only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import flax.struct
import jax
import jax.numpy as jnp

from jax_i2v.diffusion.schedules import PREDICTION_TYPES, NoiseSchedule, add_noise, pyoco_mixed_noise, velocity


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Defaults are the release's (`training.yaml`)."""

    prediction_type: str = "epsilon"
    noise_alpha: float = 1.0  # pyoco mixed; 0 = independent per frame
    first_frame_dropout: float = 0.1
    text_dropout: float = 0.1
    # False for models without a first-frame path ("none" mode): all F frames are denoised and scored.
    condition_on_first_frame: bool = True
    # Min-SNR-gamma loss weighting (Hang et al. 2023; diffusers' --snr_gamma, 5.0 there), None: off.
    # Per video, the MSE is weighted by min(SNR_t, gamma) / SNR_t (epsilon) or / (SNR_t + 1) (v).
    snr_gamma: Optional[float] = None
    # Timesteps in the last `timestep_bias_portion` of the schedule (the noisiest) are drawn
    # `timestep_bias_multiplier` times as often (diffusers' --timestep_bias_strategy later); 1: uniform.
    timestep_bias_multiplier: float = 1.0
    timestep_bias_portion: float = 0.25

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        for name in ("first_frame_dropout", "text_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        if self.noise_alpha < 0:
            raise ValueError(f"noise_alpha must be >= 0, got {self.noise_alpha}")
        if not self.timestep_bias_multiplier > 0 or not 0.0 < self.timestep_bias_portion <= 1.0:
            raise ValueError(
                "need timestep_bias_multiplier > 0 and 0 < timestep_bias_portion <= 1, got "
                f"{self.timestep_bias_multiplier}, {self.timestep_bias_portion}"
            )
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise ValueError(f"snr_gamma must be positive (or None: no weighting), got {self.snr_gamma}")


@flax.struct.dataclass
class TrainingExample:
    """One noised batch, ready for the model.

    sample: (B, F', H, W, C) noisy frames the model denoises (F' = F - 1 when conditioning on
    the first frame, else F); target: its regression target (float32); first_frame: (B, 1, H, W, C)
    or None; timesteps, frame_stride: (B,); text: (B, L, D); noise: (B, F, H, W, C) all frames' noise;
    first_frame_dropped, text_dropped: (B,) bool.
    """

    sample: jax.Array
    target: jax.Array
    timesteps: jax.Array
    text: jax.Array
    frame_stride: jax.Array
    noise: jax.Array
    first_frame_dropped: jax.Array
    text_dropped: jax.Array
    first_frame: Optional[jax.Array] = None


def _where_per_video(mask, if_true, if_false):
    return jnp.where(mask.reshape(mask.shape + (1,) * (if_true.ndim - 1)), if_true, if_false)


def sample_timesteps(rng: jax.Array, batch: int, num_train_timesteps: int, config: ObjectiveConfig) -> jax.Array:
    """(batch,) int32 training timesteps: uniform, or biased towards the noisiest portion."""
    if config.timestep_bias_multiplier == 1.0:
        return jax.random.randint(rng, (batch,), 0, num_train_timesteps)
    first_biased = num_train_timesteps - int(round(config.timestep_bias_portion * num_train_timesteps))
    weights = jnp.where(jnp.arange(num_train_timesteps) >= first_biased, config.timestep_bias_multiplier, 1.0)
    return jax.random.categorical(rng, jnp.log(weights), shape=(batch,)).astype(jnp.int32)


def prepare_example(
    batch: Mapping[str, jax.Array],
    null_text: jax.Array,
    rng: jax.Array,
    schedule: NoiseSchedule,
    config: ObjectiveConfig,
) -> TrainingExample:
    """Draws t, noise and dropouts for `batch`.

    batch: "latents" (B, F, H, W, C) clean, "text" (B, L, D), "frame_stride" (B,) (optional, default 1).
    null_text: (L, D) or (1, L, D) embedding of the empty caption.
    """
    latents, text = batch["latents"], batch["text"]
    if latents.ndim != 5 or latents.shape[1] < 2:
        raise ValueError(f"latents must be (B, F>=2, H, W, C), got {latents.shape}")
    b = latents.shape[0]
    frame_stride = batch.get("frame_stride")
    frame_stride = jnp.ones((b,), jnp.float32) if frame_stride is None else jnp.asarray(frame_stride, jnp.float32)
    noise_key, t_key, first_key, text_key = jax.random.split(rng, 4)

    noise = pyoco_mixed_noise(noise_key, latents.shape, config.noise_alpha)
    timesteps = sample_timesteps(t_key, b, schedule.num_train_timesteps, config)
    noisy = add_noise(schedule, latents.astype(jnp.float32), noise, timesteps)
    first_dropped = jax.random.bernoulli(first_key, config.first_frame_dropout, (b,))
    text_dropped = jax.random.bernoulli(text_key, config.text_dropout, (b,))
    null_text = jnp.broadcast_to(jnp.asarray(null_text, text.dtype).reshape((1,) + text.shape[1:]), text.shape)
    text = _where_per_video(text_dropped, null_text, text)

    if config.prediction_type == "epsilon":
        target = noise
    else:
        target = velocity(schedule, latents, noise, timesteps)
    first = None
    sample = noisy
    if config.condition_on_first_frame:
        first = _where_per_video(first_dropped, noisy[:, :1], latents[:, :1].astype(jnp.float32))
        sample, target = noisy[:, 1:], target[:, 1:]
    return TrainingExample(
        sample=sample,
        target=target,
        timesteps=timesteps,
        text=text,
        frame_stride=frame_stride,
        noise=noise,
        first_frame_dropped=first_dropped,
        text_dropped=text_dropped,
        first_frame=first,
    )


def min_snr_weights(schedule: NoiseSchedule, timesteps: jax.Array, gamma: float, prediction_type: str) -> jax.Array:
    """(B,) Min-SNR-gamma weights of the MSE for the given prediction type."""
    alpha_bar = schedule.alphas_cumprod[jnp.asarray(timesteps, jnp.int32)]
    snr = alpha_bar / (1.0 - alpha_bar)
    clipped = jnp.minimum(snr, gamma)
    return clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1.0)


def diffusion_loss(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    batch: Mapping[str, jax.Array],
    null_text: jax.Array,
    rng: jax.Array,
    schedule: NoiseSchedule,
    config: ObjectiveConfig,
):
    """MSE between the model's prediction and its target, in float32 (per video weighted by
    Min-SNR-gamma when `config.snr_gamma` is set). Returns (loss, example).

    apply_fn(params, sample, timesteps, text, first_frame, frame_stride) -> prediction like `sample`.
    """
    example = prepare_example(batch, null_text, rng, schedule, config)
    prediction = apply_fn(params, example.sample, example.timesteps, example.text, example.first_frame, example.frame_stride)
    squared = jnp.square(prediction.astype(jnp.float32) - example.target)
    if config.snr_gamma is None:
        return jnp.mean(squared), example
    per_video = jnp.mean(squared.reshape(squared.shape[0], -1), axis=1)
    weights = min_snr_weights(schedule, example.timesteps, config.snr_gamma, config.prediction_type)
    return jnp.mean(weights * per_video), example
