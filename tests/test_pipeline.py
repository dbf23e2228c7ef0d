"""Sampler and pipeline wiring, checked with analytic stand-in models."""

import dataclasses
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_i2v.config_utils import load_config
from jax_i2v.diffusion.ddim import DDIMConfig, padded_timesteps
from jax_i2v.diffusion.frameinit import FrameInitConfig, frame_init, low_pass_filter
from jax_i2v.diffusion.sampler import SamplingOptions, sample_chunk
from jax_i2v.diffusion.schedules import pyoco_mixed_noise
from jax_i2v.models.config import UNetConfig
from jax_i2v.pipeline import I2VPipeline
from jax_i2v.text import HashedWordEncoder

SCHEDULER = DDIMConfig()
SCHEDULE = SCHEDULER.schedule()
CONFIG = UNetConfig(
    in_channels=3,
    out_channels=3,
    block_out_channels=(32,),
    down_block_types=("DownBlock2D",),
    up_block_types=("UpBlock2D",),
    attention_head_dim=(1,),
    norm_num_groups=4,
    cross_attention_dim=6,
    sample_size=8,
    first_frame_condition_mode="concat",
)
STEP = 0.25


class DriftOracle(nn.Module):
    """Predicts the noise of the clean video 'every frame = conditioning frame + STEP', exactly.

    Deterministic DDIM then returns that video whatever the initial noise, so each autoregressive
    chunk must come out STEP above the frame it was conditioned on.
    """

    config: UNetConfig

    def __call__(self, sample, timesteps, encoder_hidden_states, first_frame_latents=None, frame_stride=None):
        alpha = SCHEDULE.alphas_cumprod[timesteps][:, None, None, None, None]
        target = first_frame_latents + STEP
        return (sample - jnp.sqrt(alpha) * target) / jnp.sqrt(1.0 - alpha)


def _pipeline():
    return I2VPipeline(DriftOracle(CONFIG), {}, text_encoder=HashedWordEncoder(4, CONFIG.cross_attention_dim))


GREY = np.full((8, 8, 3), 128, np.uint8)  # model range 0.0039


def test_each_chunk_is_conditioned_on_the_previous_chunks_last_latent():
    latents = _pipeline().sample_latents(GREY, "a prompt", num_frames=4, num_steps=5, chunks=3, show_progress=False)
    assert latents.shape == (1, 3 * 4 - 2, 8, 8, 3)
    level = np.asarray(latents).mean(axis=(0, 2, 3, 4)) - (128 / 127.5 - 1.0)
    np.testing.assert_allclose(level, [0.0] + [STEP] * 3 + [2 * STEP] * 3 + [3 * STEP] * 3, atol=1e-4)


def test_frames_are_decoded_to_unit_range_and_sizes_checked():
    pipe = _pipeline()
    frames = pipe(GREY, "a prompt", num_frames=3, num_steps=2, show_progress=False, num_videos=2)
    assert frames.shape == (2, 3, 8, 8, 3) and frames.dtype == np.float32
    np.testing.assert_allclose(frames[:, 1:], (128 / 127.5 - 1.0 + STEP) / 2 + 0.5, atol=1e-4)
    with pytest.raises(ValueError, match="num_steps"):
        pipe(GREY, num_frames=3, num_steps=0)
    with pytest.raises(ValueError, match="camera_motion"):
        pipe(GREY, num_frames=3, camera_motion="tilt")
    with pytest.raises(ValueError, match="num_frames"):
        pipe(GREY, num_frames=1)
    with pytest.raises(ValueError, match="embeddings"):
        pipe(GREY, text_embeddings=np.zeros((4, 5)))


def test_codec_and_unet_channels_must_agree():
    with pytest.raises(ValueError, match="4-channel latents"):
        I2VPipeline(DriftOracle(dataclasses.replace(CONFIG, in_channels=4, out_channels=4)), {})


def test_from_config_samples_with_the_trained_schedule_prediction_type_and_codec():
    config = load_config(str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.py"))
    config.schedule.beta_end = 0.02
    config.objective.prediction_type = "v_prediction"
    pipe = I2VPipeline.from_config(config, {"unet": {}, "text": {}})
    assert (pipe.scheduler.prediction_type, pipe.scheduler.beta_end) == ("v_prediction", 0.02)
    assert pipe.vae.downsample_factor == config.codec.factor and pipe.default_size == config.data.resolution


def _options(num_steps, frames, size, text_scale=1.0, eta=0.0, noise_alpha=1.0, fresh_noise_alpha=1.0, use_frameinit=False):
    return SamplingOptions(
        timesteps=jnp.asarray(padded_timesteps(num_steps)),
        num_steps=jnp.int32(num_steps),
        text_scale=jnp.float32(text_scale),
        image_scale=jnp.float32(1.0),
        eta=jnp.float32(eta),
        noise_alpha=jnp.float32(noise_alpha),
        fresh_noise_alpha=jnp.float32(fresh_noise_alpha),
        use_frameinit=jnp.bool_(use_frameinit),
        frameinit_mask=jnp.asarray(low_pass_filter(frames, size, size, FrameInitConfig())),
        frameinit_timestep=jnp.int32(850),
    )


def test_zero_prediction_chunk_is_frameinit_noise_scaled_analytically():
    """eps = 0: the output is the FrameInit latents' frames 2..F divided by sqrt(alpha_bar_981)."""
    b, f, h, w, c = 2, 6, 8, 8, 3
    rng = jax.random.key(7)
    first = jax.random.normal(jax.random.key(0), (b, 1, h, w, c))
    static = jnp.broadcast_to(first, (b, f, h, w, c))
    text = jnp.ones((b, 4, 6))
    mask = low_pass_filter(f, h, w, FrameInitConfig())
    options = _options(50, frames=f, size=h, text_scale=7.5, use_frameinit=True)
    zero_model = lambda sample, *args: jnp.zeros_like(sample)
    out = sample_chunk(zero_model, first, static, text, text, jnp.ones((b,)), rng, options, SCHEDULER, "text")
    # sample_chunk draws its initial noise as pyoco_mixed_noise(split(rng)[0], ...).
    noise = pyoco_mixed_noise(jax.random.split(rng)[0], static.shape, 1.0)
    initial = frame_init(SCHEDULE, static, noise, mask, 850)
    alpha = float(SCHEDULE.alphas_cumprod[981])
    np.testing.assert_allclose(out, np.asarray(initial)[:, 1:] / np.sqrt(alpha), rtol=1e-4, atol=1e-4)
    without = sample_chunk(
        zero_model, first, static, text, text, jnp.ones((b,)), rng, options.replace(use_frameinit=jnp.bool_(False)), SCHEDULER, "text"
    )
    np.testing.assert_allclose(without, np.asarray(noise)[:, 1:] / np.sqrt(alpha), rtol=1e-4, atol=1e-4)


def test_eta_noise_is_mixed_across_frames_with_the_fresh_noise_alpha():
    """With correlated training noise the posterior's noise has the same frame covariance, so eta's
    fresh noise is pyoco-mixed like the initial noise (fresh_noise_alpha); at eta 1 it makes most
    of the output of a zero model."""
    b, f, h, w, c = 2, 6, 8, 8, 3
    first = jnp.zeros((b, 1, h, w, c))
    static = jnp.broadcast_to(first, (b, f, h, w, c))
    text = jnp.ones((b, 4, 6))
    zero_model = lambda sample, *args: jnp.zeros_like(sample)

    def frame_correlation(noise_alpha, fresh_noise_alpha):
        options = _options(10, frames=f, size=h, eta=1.0, noise_alpha=noise_alpha, fresh_noise_alpha=fresh_noise_alpha)
        out = np.asarray(sample_chunk(zero_model, first, static, text, text, jnp.ones((b,)), jax.random.key(3), options, SCHEDULER, "none"))
        frames = np.moveaxis(out, 1, 0).reshape(f - 1, -1)
        return np.corrcoef(frames)[~np.eye(f - 1, dtype=bool)].mean()

    assert abs(frame_correlation(0.0, 0.0)) < 0.1
    assert 0.4 < frame_correlation(1.0, 1.0) < 0.6  # a^2 / (1 + a^2)
    assert frame_correlation(10.0, 10.0) > 0.98
    # Independent fresh noise decorrelates the frames, though the initial noise still shows.
    assert frame_correlation(10.0, 0.0) < 0.8


def test_hashed_word_encoder_is_deterministic_and_word_sensitive():
    enc = HashedWordEncoder(6, 8)
    a, b, c = enc.encode(["A red circle.", "a red circle", "a blue circle"])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b[2], c[2]) and np.array_equal(b[3], c[3])
    np.testing.assert_array_equal(HashedWordEncoder(6, 8).encode([""])[0], enc.encode([""])[0])
    assert enc.encode(["one two three four five six seven"]).shape == (1, 6, 8)
