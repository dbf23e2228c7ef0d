"""Sampling videos: `I2VPipeline` (i2v.py) over batches of first images and captions, its
sampling settings (`SamplingConfig`, sampling_config.py), diffusers pipeline folders
(diffusers_folder.py), batching and per-video keys (batch.py) and video files (videos.py)."""

from jax_i2v.pipeline.diffusers_folder import MODEL_INDEX
from jax_i2v.pipeline.i2v import I2VPipeline
from jax_i2v.pipeline.sampling_config import (
    SamplingConfig,
    check_guidance_was_trained,
    frame_stride_from_config,
    noise_alpha_from_config,
    scheduler_from_config,
)
from jax_i2v.pipeline.videos import save_videos

__all__ = [
    "MODEL_INDEX",
    "I2VPipeline",
    "SamplingConfig",
    "check_guidance_was_trained",
    "frame_stride_from_config",
    "noise_alpha_from_config",
    "save_videos",
    "scheduler_from_config",
]
