"""Latent codecs: the space-to-depth fold and block DCT of the CPU configs and the config check around them."""

import dataclasses
import pathlib

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jax_i2v.config_utils import latent_codec, load_config
from jax_i2v.data.moving_shapes import MovingShapesConfig, generate_example
from jax_i2v.models.vae import BlockDCT, PixelSpace, SpaceToDepth

ROOT = pathlib.Path(__file__).resolve().parents[1]
MOVING_SHAPES_FIELDS = {f.name for f in dataclasses.fields(MovingShapesConfig)}


def test_space_to_depth_folds_pixel_blocks_into_channels_and_back_exactly():
    pixels = np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 12, 3)).astype(np.float32)
    codec = SpaceToDepth(2)
    latents = codec.encode(pixels)
    assert latents.shape == (2, 3, 4, 6, 12) and isinstance(latents, np.ndarray)
    # Latent pixel (i, j) holds pixel block rows 2i..2i+1, columns 2j..2j+1, channel-minor.
    np.testing.assert_array_equal(latents[1, 2, 3, 5].reshape(2, 2, 3), pixels[1, 2, 6:8, 10:12])
    np.testing.assert_array_equal(codec.decode(latents), pixels)
    np.testing.assert_array_equal(np.asarray(codec.decode(jnp.asarray(latents))), pixels)


def test_space_to_depth_normalises_like_a_vae_and_inverts_it():
    pixels = np.random.default_rng(1).uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
    codec = SpaceToDepth(2, shift_factor=-0.5, scaling_factor=3.0)
    latents = codec.encode(pixels)
    np.testing.assert_allclose(latents, (SpaceToDepth(2).encode(pixels) + 0.5) * 3.0, rtol=1e-6)
    np.testing.assert_allclose(codec.decode(latents), pixels, atol=1e-6)
    with pytest.raises(ValueError, match="scaling_factor must be positive"):
        SpaceToDepth(2, scaling_factor=0.0)


def test_tiny_codec_gives_the_unet_unit_variance_latents_of_its_training_data():
    tiny = load_config(str(ROOT / "configs" / "tiny.py"))
    generator = MovingShapesConfig(**{k: v for k, v in tiny.data.dataset.to_dict().items() if k in MOVING_SHAPES_FIELDS})
    videos = np.stack([generate_example(123, i, generator)["video"][::4] for i in range(64)])
    latents = latent_codec(tiny).encode(videos.astype(np.float32) / 127.5 - 1.0)
    assert abs(latents.mean()) < 0.15 and 0.85 < latents.std() < 1.15


def test_space_to_depth_rejects_sizes_it_cannot_fold():
    with pytest.raises(ValueError, match="divisible by 4"):
        SpaceToDepth(4).encode(np.zeros((1, 8, 6, 3), np.float32))
    with pytest.raises(ValueError, match="positive integer"):
        SpaceToDepth(0)


def test_configs_name_their_codec_and_must_agree_with_the_data_section():
    tiny = load_config(str(ROOT / "configs" / "tiny.py"))
    codec = latent_codec(tiny)
    assert isinstance(codec, BlockDCT) and codec.latent_channels == tiny.unet.in_channels == 12

    tiny.data.latent_size = 32
    with pytest.raises(ValueError, match=r"latent_size, latent_channels = \(8, 12\)"):
        latent_codec(tiny)
    tiny.codec = ml_collections.ConfigDict({"kind": "space_to_depth", "factor": 4})
    with pytest.raises(ValueError, match=r"latent_size, latent_channels = \(8, 48\)"):
        latent_codec(tiny)
    tiny.data.update(latent_size=32, latent_channels=3)
    tiny.codec = ml_collections.ConfigDict({"kind": "pixels"})
    assert isinstance(latent_codec(tiny), PixelSpace)
    tiny.codec = ml_collections.ConfigDict({"kind": "vqgan"})
    with pytest.raises(ValueError, match="expected kind 'pixels', 'space_to_depth'"):
        latent_codec(tiny)


def test_dct_matrix_is_scipys_orthonormal_dct_ii():
    from scipy.fft import dct

    from jax_i2v.models.vae import _dct_matrix

    np.testing.assert_allclose(_dct_matrix(4), dct(np.eye(4), norm="ortho", axis=0), atol=1e-12)


def test_block_dct_keeping_every_frequency_is_lossless_and_a_rotation_of_the_fold():
    pixels = np.random.default_rng(2).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    codec = BlockDCT(4, frequencies=4, shift_factor=-0.5, scaling_factor=2.0)
    latents = codec.encode(pixels)
    assert latents.shape == (2, 2, 2, 48)
    np.testing.assert_allclose(codec.decode(latents), pixels, atol=1e-5)
    # Orthonormal: the same per-position norm as the plain fold.
    folded = SpaceToDepth(4, shift_factor=-0.5, scaling_factor=2.0).encode(pixels)
    np.testing.assert_allclose(np.linalg.norm(latents, axis=-1), np.linalg.norm(folded, axis=-1), rtol=1e-5)


def test_block_dct_low_pass_keeps_flat_blocks_and_is_a_projection():
    rng = np.random.default_rng(3)
    codec = BlockDCT(4, frequencies=2, shift_factor=-0.52, scaling_factor=1.5)
    flat_blocks = np.repeat(np.repeat(rng.uniform(-1, 1, (2, 3, 2, 3)), 4, axis=1), 4, axis=2).astype(np.float32)
    latents = codec.encode(flat_blocks)
    assert latents.shape == (2, 3, 2, 12)
    np.testing.assert_allclose(codec.decode(latents), flat_blocks, atol=1e-5)
    z = rng.normal(size=(5, 2, 2, 12)).astype(np.float32)
    np.testing.assert_allclose(codec.encode(codec.decode(z)), z, atol=1e-5)
    np.testing.assert_allclose(np.asarray(codec.decode(jnp.asarray(z))), codec.decode(z), atol=1e-6)
    # Detail at a dropped frequency is removed: block DCT basis image (2, 3) decodes to zero.
    k = np.arange(4) + 0.5
    pattern = np.outer(np.cos(np.pi * k * 2 / 4), np.cos(np.pi * k * 3 / 4))
    pixels = np.repeat(np.tile(pattern, (2, 2))[None, :, :, None], 3, axis=-1).astype(np.float32)
    np.testing.assert_allclose(codec.decode(codec.encode(pixels)), np.zeros_like(pixels), atol=1e-5)
    with pytest.raises(ValueError, match="frequencies must be an integer"):
        BlockDCT(4, frequencies=5)
