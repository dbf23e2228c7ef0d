"""FrameInit: put the first frame's low spatio-temporal frequencies into the initial noise.

ConsistI2V `frameinit_utils.py` (after FreeInit): the static video (the first-frame latent repeated,
or a camera-motion crop sequence) is noised to `noise_level` with the *same* noise as the initial
latents, and the 3D FFT over (T, H, W) of the two is mixed through a centred low-pass mask.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jax_i2v.diffusion.schedules import NoiseSchedule, add_noise

FILTER_TYPES = ("gaussian", "butterworth", "ideal", "box")
# Channels-last video (B, T, H, W, C): the FFT runs over T, H, W.
VIDEO_AXES = (1, 2, 3)


@dataclasses.dataclass(frozen=True)
class FrameInitConfig:
    """Defaults are the release's (`inference.yaml`: gaussian, d_s = d_t = 0.25, t = 850)."""

    filter_type: str = "gaussian"
    d_s: float = 0.25
    d_t: float = 0.25
    order: int = 4  # Butterworth only
    noise_level: int = 850  # per mille of the training timesteps

    def __post_init__(self):
        if self.filter_type not in FILTER_TYPES:
            raise ValueError(f"filter_type must be one of {FILTER_TYPES}, got {self.filter_type!r}")
        if self.d_s < 0 or self.d_t < 0 or self.order < 1:
            raise ValueError(f"need d_s, d_t >= 0 and order >= 1, got {self.d_s}, {self.d_t}, {self.order}")
        if not 0 <= self.noise_level <= 1000:
            raise ValueError(f"noise_level is per mille of the training timesteps, got {self.noise_level}")

    def timestep(self, num_train_timesteps: int) -> int:
        return int(num_train_timesteps * self.noise_level / 1000)


def low_pass_filter(frames: int, height: int, width: int, config: FrameInitConfig = FrameInitConfig()) -> np.ndarray:
    """The (T, H, W) float32 mask, centred where `fftshift` puts the zero frequency (index n // 2)."""
    d_s, d_t = config.d_s, config.d_t
    if d_s == 0 or d_t == 0:
        return np.zeros((frames, height, width), np.float32)
    if config.filter_type == "box":
        mask = np.zeros((frames, height, width), np.float32)
        # Both spatial half-widths come from H, as in the reference.
        half_s, half_t = round(height // 2 * d_s), round(frames // 2 * d_t)
        ct, cy, cx = frames // 2, height // 2, width // 2
        mask[ct - half_t : ct + half_t, cy - half_s : cy + half_s, cx - half_s : cx + half_s] = 1.0
        return mask
    t = (d_s / d_t) * (2.0 * np.arange(frames) / frames - 1.0)
    y = 2.0 * np.arange(height) / height - 1.0
    x = 2.0 * np.arange(width) / width - 1.0
    d_square = t[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2
    if config.filter_type == "gaussian":
        mask = np.exp(-d_square / (2.0 * d_s**2))
    elif config.filter_type == "butterworth":
        mask = 1.0 / (1.0 + (d_square / d_s**2) ** config.order)
    else:  # ideal; the threshold is 2 d_s on D^2 in the reference, kept as is.
        mask = (d_square <= 2.0 * d_s).astype(np.float64)
    return mask.astype(np.float32)


def frequency_mix(low: jax.Array, high: jax.Array, mask: jax.Array, axes=VIDEO_AXES) -> jax.Array:
    """Re IFFT(ifftshift(M * shift(FFT(low)) + (1 - M) * shift(FFT(high)))) over `axes`, float32.

    `mask` has the shape of the FFT axes (e.g. (T, H, W)) and broadcasts over the rest.
    """
    shape = [1] * low.ndim
    for axis, n in zip(axes, mask.shape):
        shape[axis] = n
    mask = jnp.asarray(mask, jnp.float32).reshape(shape)

    def centred_spectrum(x):
        return jnp.fft.fftshift(jnp.fft.fftn(x.astype(jnp.float32), axes=axes), axes=axes)

    mixed = mask * centred_spectrum(low) + (1.0 - mask) * centred_spectrum(high)
    return jnp.real(jnp.fft.ifftn(jnp.fft.ifftshift(mixed, axes=axes), axes=axes))


def frame_init(schedule: NoiseSchedule, static_video: jax.Array, noise: jax.Array, mask: jax.Array, timestep) -> jax.Array:
    """Initial latents (B, T, H, W, C): the low frequencies of `static_video` noised to `timestep`
    with `noise`, the high frequencies of `noise` itself."""
    if static_video.shape != noise.shape:
        raise ValueError(f"static video {static_video.shape} and noise {noise.shape} must have one shape")
    noised = add_noise(schedule, static_video.astype(jnp.float32), noise, timestep)
    return frequency_mix(noised, noise, mask)
