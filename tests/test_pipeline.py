"""Sampler and pipeline wiring, checked with analytic stand-in models."""

import dataclasses
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_i2v import media
from jax_i2v.config_utils import load_config
from jax_i2v.diffusion.ddim import DDIMConfig, padded_timesteps
from jax_i2v.diffusion.frameinit import FrameInitConfig, frame_init, low_pass_filter
from jax_i2v.diffusion.sampler import SamplingOptions, initial_noise, sample_chunk
from jax_i2v.models.autoencoder_kl import AutoencoderKLConfig, KLCodec, random_vae_params
from jax_i2v.models.config import UNetConfig
from jax_i2v.models.unet import build_unet, random_params
from jax_i2v.pipeline import I2VPipeline, SamplingConfig
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
    latents = _pipeline().sample_latents(GREY, "a prompt", num_frames=4, steps=5, chunks=3, show_progress=False)
    assert latents.shape == (1, 3 * 4 - 2, 8, 8, 3)
    level = np.asarray(latents).mean(axis=(0, 2, 3, 4)) - (128 / 127.5 - 1.0)
    np.testing.assert_allclose(level, [0.0] + [STEP] * 3 + [2 * STEP] * 3 + [3 * STEP] * 3, atol=1e-4)


def test_frames_are_decoded_to_unit_range_and_sizes_checked():
    pipe = _pipeline()
    frames = pipe(GREY, "a prompt", num_frames=3, steps=2, show_progress=False, num_videos_per_prompt=2)
    assert frames.shape == (2, 3, 8, 8, 3) and frames.dtype == np.float32
    np.testing.assert_allclose(frames[:, 1:], (128 / 127.5 - 1.0 + STEP) / 2 + 0.5, atol=1e-4)
    with pytest.raises(ValueError, match="steps"):
        pipe(GREY, num_frames=3, steps=0)
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


def _options(num_steps, frames, size, text_scale=1.0, eta=0.0, fresh_noise_alpha=1.0, use_frameinit=False):
    return SamplingOptions(
        timesteps=jnp.asarray(padded_timesteps(num_steps)),
        num_steps=jnp.int32(num_steps),
        text_scale=jnp.float32(text_scale),
        image_scale=jnp.float32(1.0),
        eta=jnp.float32(eta),
        fresh_noise_alpha=jnp.float32(fresh_noise_alpha),
        use_frameinit=jnp.bool_(use_frameinit),
        frameinit_mask=jnp.asarray(low_pass_filter(frames, size, size, FrameInitConfig())),
        frameinit_timestep=jnp.int32(850),
    )


def test_zero_prediction_chunk_is_frameinit_noise_scaled_analytically():
    """eps = 0: the output is the FrameInit latents' frames 2..F divided by sqrt(alpha_bar_981)."""
    b, f, h, w, c = 2, 6, 8, 8, 3
    keys = jax.random.split(jax.random.key(7), b)
    first = jax.random.normal(jax.random.key(0), (b, 1, h, w, c))
    static = jnp.broadcast_to(first, (b, f, h, w, c))
    text = jnp.ones((b, 4, 6))
    mask = low_pass_filter(f, h, w, FrameInitConfig())
    options = _options(50, frames=f, size=h, text_scale=7.5, use_frameinit=True)
    zero_model = lambda sample, *args: jnp.zeros_like(sample)
    noise = initial_noise(keys, static.shape[1:], 1.0)
    out = sample_chunk(zero_model, first, static, text, text, jnp.ones((b,)), noise, keys, options, SCHEDULER, "text")
    initial = frame_init(SCHEDULE, static, noise, mask, 850)
    alpha = float(SCHEDULE.alphas_cumprod[981])
    np.testing.assert_allclose(out, np.asarray(initial)[:, 1:] / np.sqrt(alpha), rtol=1e-4, atol=1e-4)
    without = sample_chunk(
        zero_model,
        first,
        static,
        text,
        text,
        jnp.ones((b,)),
        noise,
        keys,
        options.replace(use_frameinit=jnp.bool_(False)),
        SCHEDULER,
        "text",
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
        options = _options(10, frames=f, size=h, eta=1.0, fresh_noise_alpha=fresh_noise_alpha)
        keys = jax.random.split(jax.random.key(3), b)
        noise = initial_noise(keys, static.shape[1:], noise_alpha)
        out = np.asarray(sample_chunk(zero_model, first, static, text, text, jnp.ones((b,)), noise, keys, options, SCHEDULER, "none"))
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


# A real (random-weight) UNet whose output depends on the image, the caption and every noise draw:
# eta 1 draws fresh noise at each step, and guidance runs the caption-free branch too.
TINY_UNET = UNetConfig(
    in_channels=3,
    out_channels=3,
    block_out_channels=(32,),
    down_block_types=("CrossAttnDownBlock2D",),
    up_block_types=("CrossAttnUpBlock2D",),
    attention_head_dim=(2,),
    norm_num_groups=4,
    cross_attention_dim=8,
    sample_size=8,
    n_frames=3,
)
PAIRS_SEEDS = [5, 9, 2]


@pytest.fixture(scope="module")
def tiny_pipe():
    unet = build_unet(TINY_UNET, attention="xla")
    sampling = SamplingConfig(steps=2, eta=1.0, text_guidance=2.0, noise_alpha=0.5)
    return I2VPipeline(unet, random_params(unet, 0), text_encoder=HashedWordEncoder(4, 8), sampling=sampling)


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (10, 12, 3), dtype=np.uint8) for _ in range(3)]
    return images, ["a red circle moves left", "a blue square", "two discs"]


@pytest.fixture(scope="module")
def batch_of_three(tiny_pipe, pairs):
    return tiny_pipe(*pairs, seed=PAIRS_SEEDS, show_progress=False)


def test_a_batch_of_pairs_equals_each_pair_sampled_alone_with_its_seed(tiny_pipe, pairs, batch_of_three):
    assert batch_of_three.shape == (3, 3, 8, 8, 3)
    for image, prompt, seed, video in zip(*pairs, PAIRS_SEEDS, batch_of_three):
        alone = tiny_pipe(image, prompt, seed=seed, show_progress=False)
        np.testing.assert_allclose(alone[0], video, atol=1e-5)
    assert np.abs(batch_of_three[0] - batch_of_three[1]).max() > 1e-2


def test_latents_given_as_the_noise_the_seeds_draw_give_the_same_videos(tiny_pipe, pairs, batch_of_three):
    noise = tiny_pipe.prepare_latents(3, seed=PAIRS_SEEDS, num_frames=3)
    assert noise.shape == (3, 3, 8, 8, 3)
    np.testing.assert_array_equal(tiny_pipe(*pairs, seed=PAIRS_SEEDS, latents=noise, show_progress=False), batch_of_three)
    other = tiny_pipe(*pairs, seed=PAIRS_SEEDS, latents=noise[::-1], show_progress=False)
    assert np.abs(other[0] - batch_of_three[0]).max() > 1e-2


def test_num_videos_per_prompt_repeats_each_pair_with_its_own_seeds(tiny_pipe, pairs, batch_of_three):
    images, prompts = pairs
    videos = tiny_pipe(images[0], prompts[0], num_videos_per_prompt=3, seed=[PAIRS_SEEDS[0], 1, 3], show_progress=False)
    assert videos.shape == (3, 3, 8, 8, 3)
    np.testing.assert_allclose(videos[0], batch_of_three[0], atol=1e-5)
    assert np.abs(videos[1] - videos[0]).max() > 1e-2 and np.abs(videos[2] - videos[1]).max() > 1e-2
    with pytest.raises(ValueError, match="2 prompts for 3"):
        tiny_pipe(images, prompts[:2])
    with pytest.raises(ValueError, match="seeds for 6 videos"):
        tiny_pipe(images, prompts, num_videos_per_prompt=2, seed=[1, 2])


def test_the_first_frame_encoded_as_the_posterior_mode_is_deterministic():
    """With a VAE (posterior std > 0) the first frame's latent is a draw from video i's key, or the
    posterior's mode whatever the seed; the drift oracle's video is that latent plus STEP."""
    vae_config = AutoencoderKLConfig(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        norm_num_groups=4,
        latent_channels=4,
    )
    vae = KLCodec(vae_config, random_vae_params(vae_config, image_size=16))
    pipe = I2VPipeline(DriftOracle(dataclasses.replace(CONFIG, in_channels=4, out_channels=4)), {}, HashedWordEncoder(4, 6), vae=vae)
    image = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    kwargs = dict(num_frames=2, steps=2, frameinit="none", show_progress=False)
    mode = [pipe.sample_latents(image, seed=seed, first_frame_sample="mode", **kwargs) for seed in (0, 1)]
    sampled = [pipe.sample_latents(image, seed=seed, first_frame_sample="sample", **kwargs) for seed in (0, 1)]
    np.testing.assert_array_equal(mode[0][:, 0], mode[1][:, 0])
    np.testing.assert_allclose(mode[0], mode[1], atol=1e-6)  # the oracle's video: the first latent + STEP
    np.testing.assert_allclose(mode[0][:, 0], vae.encode(media.to_model_range(image[None])), atol=1e-6)
    assert np.abs(sampled[0][:, 0] - mode[0][:, 0]).max() > 1e-3 and np.abs(sampled[0][:, 0] - sampled[1][:, 0]).max() > 1e-3
    np.testing.assert_array_equal(sampled[0], pipe.sample_latents(image, seed=0, **kwargs))
