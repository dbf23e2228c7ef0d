"""Everything between the UNet and a video, as pure JAX functions: noise schedules, the training
objective, DDIM with guidance, FrameInit, camera motion and the per-chunk sampler."""

from jax_i2v.diffusion.ddim import DDIMConfig, ddim_sample, ddim_step, ddim_timesteps, padded_timesteps
from jax_i2v.diffusion.frameinit import FrameInitConfig, frame_init, low_pass_filter
from jax_i2v.diffusion.objective import ObjectiveConfig, diffusion_loss, prepare_example
from jax_i2v.diffusion.schedules import NoiseSchedule, add_noise, make_schedule, pyoco_mixed_noise

__all__ = [
    "DDIMConfig",
    "FrameInitConfig",
    "NoiseSchedule",
    "ObjectiveConfig",
    "add_noise",
    "ddim_sample",
    "ddim_step",
    "ddim_timesteps",
    "diffusion_loss",
    "frame_init",
    "low_pass_filter",
    "make_schedule",
    "padded_timesteps",
    "prepare_example",
    "pyoco_mixed_noise",
]
