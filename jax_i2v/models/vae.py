"""Latent codecs: what maps pixels to the UNet's latent space and back.

Pixels are float32 `(N, H, W, 3)` in [-1, 1]; latents `(N, H / f, W / f, C)` with f =
`downsample_factor`. The SD VAE implements the same interface (`KLCodec`, autoencoder_kl.py).
"""

from __future__ import annotations

from typing import Protocol

import einops
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
        return pixels.astype(np.float32)

    def decode(self, latents):
        return latents


class SpaceToDepth:
    """Folds each `factor` x `factor` pixel block into channels: (H, W, 3) <-> (H/f, W/f, 3 f^2),
    then normalises as diffusers' VAEs do: latents = (folded - shift_factor) * scaling_factor.

    Exact and parameter-free. It lets the CPU configs run the UNet at 1/f^2 of the pixel count,
    as a latent-space model would, without training an autoencoder. The normalisation matters as
    much as SD's 0.18215: the DDPM schedules assume unit-variance data, and at a pixel std of 0.35
    most of the linear schedule's timesteps would be pure noise. Works on any leading dims, on
    numpy (host-side in the training input) and jax arrays alike.
    """

    def __init__(self, factor: int = 2, shift_factor: float = 0.0, scaling_factor: float = 1.0):
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"space_to_depth factor must be a positive integer, got {factor!r}")
        if not scaling_factor > 0:
            raise ValueError(f"space_to_depth scaling_factor must be positive, got {scaling_factor!r}")
        self.downsample_factor = factor
        self.latent_channels = 3 * factor * factor
        self.shift_factor = float(shift_factor)
        self.scaling_factor = float(scaling_factor)

    def encode(self, pixels, rng=None):
        del rng
        f = self.downsample_factor
        if pixels.shape[-3] % f or pixels.shape[-2] % f:
            raise ValueError(f"space_to_depth({f}) needs height and width divisible by {f}, got {pixels.shape}")
        folded = einops.rearrange(pixels, "... (h p) (w q) c -> ... h w (p q c)", p=f, q=f).astype(np.float32)
        return (folded - np.float32(self.shift_factor)) * np.float32(self.scaling_factor)

    def decode(self, latents):
        f = self.downsample_factor
        folded = latents / np.float32(self.scaling_factor) + np.float32(self.shift_factor)
        return einops.rearrange(folded, "... h w (p q c) -> ... (h p) (w q) c", p=f, q=f)


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II: row u is frequency u over n samples."""
    k = np.arange(n)
    matrix = np.cos(np.pi * (k[None, :] + 0.5) * k[:, None] / n) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


class BlockDCT(SpaceToDepth):
    """A lossy, parameter-free stand-in for a VAE: the 2D DCT of each `factor` x `factor` pixel
    block per colour, keeping the `frequencies` x `frequencies` lowest (JPEG without the
    quantisation). (H, W, 3) <-> (H/f, W/f, 3 n^2), normalised as SpaceToDepth.

    Why drop coefficients: the UNet must predict the noise in every latent channel, and with all
    3 f^2 folded pixels most channels carry almost no signal (edges), so learning to separate
    noise from signal at small t is slow. Keeping the low frequencies concentrates the signal in
    few channels, as a VAE's latents do. decode(encode(x)) is x low-passed within each block;
    encode(decode(z)) == z exactly.
    """

    def __init__(self, factor: int = 4, frequencies: int = 2, shift_factor: float = 0.0, scaling_factor: float = 1.0):
        super().__init__(factor, shift_factor, scaling_factor)
        if not isinstance(frequencies, int) or not 1 <= frequencies <= factor:
            raise ValueError(f"block_dct frequencies must be an integer in [1, factor={factor}], got {frequencies!r}")
        self.frequencies = frequencies
        self.latent_channels = 3 * frequencies * frequencies
        dct = _dct_matrix(factor)[:frequencies]  # (n, f)
        # (p q c) -> (u v c'): coefficient (u, v) of colour c' from pixel (p, q) of colour c.
        basis = np.einsum("up,vq,cd->pqcuvd", dct, dct, np.eye(3))
        self._basis = basis.reshape(3 * factor * factor, self.latent_channels).astype(np.float32)

    def encode(self, pixels, rng=None):
        # The projection is linear, so it commutes with the normalisation's scale.
        return super().encode(pixels, rng) @ self._basis

    def decode(self, latents):
        return super().decode(latents @ self._basis.T)
