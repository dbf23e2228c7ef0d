"""The ConsistI2V video UNet (Flax Linen, channels-last (B, F, H, W, C))."""

from jax_i2v.models.config import UNetConfig
from jax_i2v.models.unet import VideoUNet, build_unet, clamp_mixers, map_mixers, random_params

__all__ = ["UNetConfig", "VideoUNet", "build_unet", "clamp_mixers", "map_mixers", "random_params"]
