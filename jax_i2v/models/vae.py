"""Latent codecs: what maps pixels to the UNet's latent space and back.

Pixels are float32 `(N, H, W, 3)` in [-1, 1]; latents `(N, H / f, W / f, C)` with f =
`downsample_factor`. The SD AutoencoderKL implements the same interface.
"""

from __future__ import annotations

from typing import Protocol

import jax
import numpy as np


class LatentCodec(Protocol):
    downsample_factor: int
    latent_channels: int

    def encode(self, pixels: np.ndarray, rng: jax.Array) -> jax.Array:
        """(N, H, W, 3) in [-1, 1] -> (N, h, w, C) scaled latents."""

    def decode(self, latents: jax.Array) -> jax.Array:
        """(N, h, w, C) -> (N, H, W, 3), nominally in [-1, 1]."""


class PixelSpace:
    """The identity codec, for models that diffuse RGB pixels directly (the CPU-sized configs)."""

    downsample_factor = 1
    latent_channels = 3

    def encode(self, pixels, rng=None):
        del rng
        return jax.numpy.asarray(pixels, jax.numpy.float32)

    def decode(self, latents):
        return latents
