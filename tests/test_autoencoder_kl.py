"""The Flax AutoencoderKL equals diffusers' on a tiny random VAE, and `vae/` folders convert both ways."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from hf_checkpoints import TINY_VAE, tiny_vae
from safetensors.numpy import load_file, save_file

from jax_i2v.config_utils import latent_codec
from jax_i2v.convert import CONFIG_NAME, WEIGHTS_NAME, load_vae, save_vae
from jax_i2v.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference_vae(tmp_path_factory):
    """(torch AutoencoderKL with every weight random, its saved `vae/` folder)."""
    vae = tiny_vae(torch, diffusers)
    folder = tmp_path_factory.mktemp("pipeline") / "vae"
    vae.save_pretrained(folder, safe_serialization=True)
    return vae, str(folder)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)


def _torch_nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))


def _nhwc(t):
    return np.moveaxis(t.detach().numpy(), 1, -1)


def test_encoder_and_decoder_match_diffusers(reference_vae, images):
    vae, folder = reference_vae
    codec = load_vae(folder)
    mean, logvar = codec.module.apply({"params": codec.params}, images, method=AutoencoderKL.encode)
    with torch.no_grad():
        posterior = vae.encode(_torch_nchw(images)).latent_dist
        decoded = vae.decode(posterior.mean).sample
    np.testing.assert_allclose(mean, _nhwc(posterior.mean), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(logvar, _nhwc(posterior.logvar), atol=TOLERANCE, rtol=0)
    ours = codec.module.apply({"params": codec.params}, mean, method=AutoencoderKL.decode)
    assert np.abs(np.asarray(ours) - _nhwc(decoded)).max() <= TOLERANCE


def test_codec_scales_latents_and_decodes_in_chunks(reference_vae, images):
    vae, folder = reference_vae
    codec = load_vae(folder, decode_chunk=1)
    latents = codec.encode(images)  # no rng: the posterior mean
    with torch.no_grad():
        mean = _nhwc(vae.encode(_torch_nchw(images)).latent_dist.mean)
    np.testing.assert_allclose(latents, mean * TINY_VAE["scaling_factor"], atol=TOLERANCE, rtol=0)
    frames = jnp.concatenate([latents, latents[:1]])  # 3 frames: chunks of 2 leave a remainder
    chunked = load_vae(folder, decode_chunk=2).decode(frames)
    whole = load_vae(folder, decode_chunk=0).decode(frames)
    np.testing.assert_allclose(chunked, whole, atol=1e-5, rtol=0)  # batch size changes float summation order
    sampled = codec.encode(images, jax.random.key(0))
    assert sampled.shape == latents.shape and not np.allclose(sampled, latents)


def test_save_vae_loads_in_diffusers(tmp_path, reference_vae, images):
    vae, folder = reference_vae
    save_vae(str(tmp_path / "vae"), load_vae(folder))
    again = diffusers.AutoencoderKL.from_pretrained(tmp_path / "vae").eval()
    assert again.config.scaling_factor == TINY_VAE["scaling_factor"]
    original = load_file(os.path.join(folder, WEIGHTS_NAME))
    exported = load_file(str(tmp_path / "vae" / WEIGHTS_NAME))
    assert exported.keys() == original.keys()
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_legacy_attention_names_load(tmp_path, reference_vae, images):
    _, folder = reference_vae
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = load_file(os.path.join(folder, WEIGHTS_NAME))
    renamed = {}
    for key, value in state.items():
        for new, old in legacy.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        renamed[key] = value
    assert any(".query." in k for k in renamed)
    (tmp_path / "vae").mkdir()
    save_file(renamed, str(tmp_path / "vae" / WEIGHTS_NAME))
    (tmp_path / "vae" / CONFIG_NAME).write_text(open(os.path.join(folder, CONFIG_NAME)).read())
    np.testing.assert_array_equal(
        load_vae(str(tmp_path / "vae")).decode(np.zeros((1, 8, 8, 4))), load_vae(folder).decode(np.zeros((1, 8, 8, 4)))
    )


def test_bad_folders_name_the_file_and_key(tmp_path, reference_vae):
    _, folder = reference_vae
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing" / CONFIG_NAME)):
        load_vae(str(tmp_path / "missing"))
    state = load_file(os.path.join(folder, WEIGHTS_NAME))
    state["decoder.conv_in.weight"] = state["decoder.conv_in.weight"][:, :2]
    del state["encoder.conv_out.bias"]
    (tmp_path / "vae").mkdir()
    save_file(state, str(tmp_path / "vae" / WEIGHTS_NAME))
    config = json.loads(open(os.path.join(folder, CONFIG_NAME)).read())
    (tmp_path / "vae" / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"diffusion_pytorch_model.safetensors does not match.*decoder\.conv_in\.weight.*encoder\.conv_out\.bias"
    ):
        load_vae(str(tmp_path / "vae"))
    (tmp_path / "vae" / CONFIG_NAME).write_text(json.dumps({**config, "act_fn": "gelu"}))
    with pytest.raises(ValueError, match="config.json.*act_fn"):
        load_vae(str(tmp_path / "vae"))


def test_config_round_trips_through_diffusers_dict():
    config = AutoencoderKLConfig.from_diffusers({**TINY_VAE, "_class_name": "AutoencoderKL", "force_upcast": True})
    assert config.downsample_factor == 2
    assert AutoencoderKLConfig.from_diffusers(config.to_diffusers()) == config
    with pytest.raises(ValueError, match="unknown keys.*block_channels"):
        AutoencoderKLConfig.from_diffusers({"block_channels": [8]})


def test_experiment_config_selects_the_vae_folder(reference_vae, images):
    _, folder = reference_vae
    config = ml_collections.ConfigDict(
        dict(
            codec=dict(kind="autoencoder_kl", dir=folder, decode_chunk=1),
            data=dict(resolution=16, latent_size=8, latent_channels=4),
        )
    )
    codec = latent_codec(config)
    assert codec.decode_chunk == 1
    np.testing.assert_array_equal(codec.encode(images), load_vae(folder).encode(images))
    config.data.latent_size = 4
    with pytest.raises(ValueError, match="latent_size"):
        latent_codec(config)


def test_bfloat16_compute_stays_close_to_float32(reference_vae, images):
    _, folder = reference_vae
    full, half = load_vae(folder), load_vae(folder, dtype=jnp.bfloat16)
    latents = full.encode(images)
    assert half.params is not None and jax.tree_util.tree_leaves(half.params)[0].dtype == jnp.float32
    for ours, reference in ((half.encode(images), latents), (half.decode(latents), full.decode(latents))):
        error = np.abs(np.asarray(ours) - np.asarray(reference))
        assert error.mean() < 0.03 * np.abs(np.asarray(reference)).mean() and error.max() < 0.1
