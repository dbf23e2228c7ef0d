"""Image-to-video sampling of one chunk of F frames (ConsistI2V `pipe.py:584-695`).

initial noise (pyoco mixed) -> optional FrameInit from a static/camera video -> DDIM with guidance,
or the multistep consistency sampler (LCM) for distilled students. Every random draw of video i
comes from its own key. Everything here is traceable; `I2VPipeline` jits it once per (model,
shapes, guidance mode); `jax_i2v.pipeline.SamplingConfig.options` builds the traced numbers.
"""

from __future__ import annotations

from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp

from jax_i2v.diffusion.ddim import DDIMConfig, ddim_sample
from jax_i2v.diffusion.frameinit import frame_init
from jax_i2v.diffusion.guidance import Conditioning, guided_prediction
from jax_i2v.diffusion.lcm import LCMConfig, lcm_sample
from jax_i2v.diffusion.schedules import pyoco_mixed_noise


@flax.struct.dataclass
class SamplingOptions:
    """Per-call numbers, all traced: changing them does not recompile.

    timesteps: `padded_timesteps(num_steps, scheduler)` (DDIM) or `scheduler.padded_timesteps(num_steps)`
    (LCM); frameinit_mask: (F, H, W) low-pass mask; frameinit_timestep: the noise level as a timestep;
    use_frameinit: bool scalar. fresh_noise_alpha: pyoco alpha of the noise drawn at each step
    (DDIM's eta noise, the consistency sampler's re-noising); like the initial noise's
    (`initial_noise`), the training's for samples from the trained distribution: the posterior's
    noise has the forward noise's covariance.
    """

    timesteps: jax.Array
    num_steps: jax.Array
    text_scale: jax.Array
    image_scale: jax.Array
    eta: jax.Array
    fresh_noise_alpha: jax.Array
    use_frameinit: jax.Array
    frameinit_mask: jax.Array
    frameinit_timestep: jax.Array


def initial_noise(keys: jax.Array, shape: tuple[int, ...], noise_alpha) -> jax.Array:
    """A chunk's initial noise, (B,) + shape with shape = (F, h, w, C): video i's from keys[i]
    alone, pyoco-mixed across its frames with `noise_alpha` (may be traced)."""
    return jax.vmap(lambda key: pyoco_mixed_noise(key, shape, noise_alpha, frame_axis=0))(keys)


def sample_chunk(
    apply_fn: Callable[..., jax.Array],
    first_frame: jax.Array,
    static_video: jax.Array,
    text: jax.Array,
    null_text: jax.Array,
    frame_stride: jax.Array,
    noise: jax.Array,
    step_keys: jax.Array,
    options: SamplingOptions,
    scheduler: DDIMConfig | LCMConfig,
    guidance: str,
    condition_on_first_frame: bool = True,
    report_progress: bool = False,
) -> jax.Array:
    """Denoised latents of one chunk.

    apply_fn(sample, timesteps, text, first_frame, frame_stride) -> model output.
    first_frame: (B, 1, h, w, C) conditioning latent; static_video: (B, F, h, w, C), what FrameInit
    takes its low frequencies from (the first frame repeated, or camera-motion crops).
    text, null_text: (B, L, D); frame_stride: (B,).
    noise: (B, F, h, w, C) initial noise (`initial_noise`); step_keys: (B,) keys, video i's noise
    drawn at each step (eta > 0, the consistency sampler) comes from step_keys[i] alone.
    Returns (B, F - 1, h, w, C) float32 for first-frame-conditioned models, else (B, F, h, w, C).
    """
    schedule = scheduler.schedule()
    mixed = frame_init(schedule, static_video, noise, options.frameinit_mask, options.frameinit_timestep)
    latents = jnp.where(options.use_frameinit, mixed, noise)
    if condition_on_first_frame:
        # The image-unconditional branch sees the initial noise's frame 0, fixed for all steps.
        cond = Conditioning(text, null_text, frame_stride, first_frame.astype(jnp.float32), latents[:, :1])
        latents = latents[:, 1:]
    else:
        cond = Conditioning(text, null_text, frame_stride)

    def denoise(x, t):
        return guided_prediction(apply_fn, x, t, cond, guidance, options.text_scale, options.image_scale)

    def fresh_noise(keys, shape):
        return initial_noise(keys, shape[1:], options.fresh_noise_alpha)

    if isinstance(scheduler, LCMConfig):
        return lcm_sample(denoise, latents, step_keys, options.timesteps, options.num_steps, scheduler, fresh_noise, report_progress)
    return ddim_sample(
        denoise, latents, step_keys, options.timesteps, options.num_steps, schedule, scheduler, options.eta, report_progress, fresh_noise
    )
