"""Raw clips encoded inside the jitted train step: a tiny KL VAE (posterior sample) and a tiny
frozen CLIP tower, their params arguments of the compiled step rather than HLO constants.

The micro UNet on 16 x 16 clips (8 x 8 x 4 latents), one device, two clips per batch."""

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_checkpoints import TINY_VAE, write_clip_vocabulary

from jax_i2v import media
from jax_i2v.config_utils import latent_codec, load_config, text_conditioning
from jax_i2v.convert import save_text_encoder, save_vae
from jax_i2v.distill.step import mcm_inputs
from jax_i2v.models.autoencoder_kl import AutoencoderKLConfig, KLCodec, random_vae_params
from jax_i2v.models.clip import CLIPTextConfig, CLIPTextEncoder, CLIPTokenizer, random_clip_params
from jax_i2v.parallel.mesh import create_mesh
from jax_i2v.train.encoders import encode_key, frozen_params, place, step_captions
from jax_i2v.train.experiment import build_experiment
from jax_i2v.train.state import create_train_state
from jax_i2v.train.step import encoded_batch

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT_LEN = 8
CAPTIONS = ["a red circle moves left", "the blue square moves right slowly"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Random tiny vae/, text_encoder/ and tokenizer/ folders (8-token captions, 32-wide)."""
    root = tmp_path_factory.mktemp("frozen_encoders")
    vae_config = AutoencoderKLConfig.from_diffusers(TINY_VAE)
    save_vae(str(root / "vae"), KLCodec(vae_config, random_vae_params(vae_config, seed=3)))
    vocab = write_clip_vocabulary(root / "tokenizer")
    settings = json.loads((root / "tokenizer" / "tokenizer_config.json").read_text())
    (root / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": TEXT_LEN}))
    clip = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=TEXT_LEN,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["!"],
    )
    tokenizer = CLIPTokenizer.from_folder(str(root / "tokenizer"))
    save_text_encoder(str(root / "text_encoder"), CLIPTextEncoder(clip, random_clip_params(clip, seed=4), tokenizer))
    return root


def _config(folders, source="moving_shapes"):
    config = load_config(str(ROOT / "configs" / "micro.py"))
    config.codec = dict(kind="autoencoder_kl", dir=str(folders / "vae"), decode_chunk=2)
    config.text_encoder = dict(kind="clip", dir=str(folders / "text_encoder"), tokenizer_dir=str(folders / "tokenizer"))
    config.unet.update(in_channels=4, out_channels=4)
    config.data.update(source=source, latent_channels=4, text_len=TEXT_LEN)
    config.train.update(batch_size=2)
    return config


@pytest.fixture(scope="module")
def setup(folders):
    mesh = create_mesh({"data": 1}, devices=jax.devices()[:1])
    raw = build_experiment(_config(folders), mesh)
    cached = build_experiment(_config(folders, source="latents"), mesh)
    codec = latent_codec(_config(folders))
    text = text_conditioning(_config(folders).text_encoder, TEXT_LEN, 32)
    frozen = place(frozen_params(codec, text, raw.encoders), raw.frozen_shardings, raw.abstract_frozen)
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (2, 4, 16, 16, 3), dtype=np.uint8)
    raw_batch = {
        "video": video,
        "tokens": step_captions(text, raw.encoders).caption_transform(CAPTIONS),
        "frame_stride": np.ones(2, np.float32),
    }
    return mesh, raw, cached, codec, text, frozen, raw_batch


def _fresh_state(experiment, mesh):
    return create_train_state(experiment.init_params, experiment.optimizer, jax.random.key(0), mesh, experiment.rules)


def test_the_experiment_describes_raw_batches_and_the_frozen_params(setup):
    mesh, raw, cached, codec, text, frozen, raw_batch = setup
    batch, null, _, abstract_frozen = raw.abstract_inputs()
    assert (batch["video"].shape, batch["video"].dtype) == ((2, 4, 16, 16, 3), jnp.uint8)
    assert (batch["tokens"].shape, batch["tokens"].dtype, null.shape) == ((2, TEXT_LEN), jnp.int32, (TEXT_LEN,))
    assert set(abstract_frozen) == {"vae", "text"} and set(cached.abstract_inputs()[0]) == {"latents", "text", "frame_stride"}
    # Shapes from the folders' config.json alone equal the loaded weights'.
    loaded = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), frozen)
    assert jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), abstract_frozen) == loaded
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(frozen))


@pytest.mark.slow
def test_the_step_on_raw_clips_equals_the_step_on_latents_encoded_outside(setup):
    """Same key: the in-step posterior sample and CLIP forward give the loss the host path gives."""
    mesh, raw, cached, codec, text, frozen, raw_batch = setup
    rng = jax.random.key(5)
    _, raw_metrics = raw.train_step(_fresh_state(raw, mesh), raw_batch, step_captions(text, raw.encoders).null_caption, rng, frozen)
    # The old path: the codec and CLIP outside the step, with the key the step draws from at step 0.
    pixels = media.to_model_range(raw_batch["video"]).reshape(-1, 16, 16, 3)
    sample = np.asarray(codec.encode(pixels, encode_key(jax.random.fold_in(rng, 0)))).reshape(2, 4, 8, 8, 4)
    mean = np.asarray(codec.encode(pixels)).reshape(2, 4, 8, 8, 4)
    losses = {}
    for name, latents in (("sample", sample), ("mean", mean)):
        batch = {"latents": latents, "text": text.caption_transform(CAPTIONS), "frame_stride": raw_batch["frame_stride"]}
        _, metrics = cached.train_step(_fresh_state(cached, mesh), batch, text.null_caption, rng)
        losses[name] = metrics
    raw_metrics, sample_metrics = jax.device_get(raw_metrics), jax.device_get(losses["sample"])
    print({k: (float(raw_metrics[k]), float(sample_metrics[k]), float(losses["mean"][k])) for k in ("loss", "grad_norm")})
    np.testing.assert_allclose(raw_metrics["loss"], sample_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(raw_metrics["grad_norm"], sample_metrics["grad_norm"], rtol=1e-4)
    # ... and not the posterior mean's.
    assert abs(float(losses["mean"]["loss"]) - float(raw_metrics["loss"])) > 1e-3 * float(raw_metrics["loss"])


def test_each_step_key_draws_its_own_posterior_sample(setup):
    mesh, raw, cached, codec, text, frozen, raw_batch = setup
    null = step_captions(text, raw.encoders).null_caption

    @jax.jit
    def latents(step):
        rng = jax.random.fold_in(jax.random.key(5), step)
        return encoded_batch(raw.encoders, frozen, raw_batch, null, rng, mesh, raw.rules)[0]["latents"]

    first, second = np.asarray(latents(0)), np.asarray(latents(1))
    mean = np.asarray(codec.encode(media.to_model_range(raw_batch["video"]).reshape(-1, 16, 16, 3))).reshape(first.shape)
    spread = np.abs(first - second).mean()
    print("mean |sample(step 0) - sample(step 1)|", spread, "mean |sample - mean|", np.abs(first - mean).mean())
    assert spread > 1e-3 and np.abs(first - mean).mean() > 1e-3
    np.testing.assert_array_equal(first, np.asarray(latents(0)))  # a key's sample is reproducible


def _largest_constant(hlo_text: str) -> int:
    """Elements of the largest array constant in StableHLO text."""
    sizes = [
        int(np.prod([int(d) for d in s.rstrip("x").split("x")]))
        for s in re.findall(r"stablehlo\.constant dense[^\n]*: tensor<((?:\d+x)+)\w+>", hlo_text)
    ]
    return max(sizes, default=1)


def test_the_frozen_params_are_arguments_of_the_compiled_step_not_constants(setup):
    mesh, raw, cached, codec, text, frozen, raw_batch = setup
    state = raw.sharded_abstract_state()
    inputs = raw.abstract_inputs()
    lowered = raw.train_step.lower(state, *inputs)
    leaves = lambda tree: len(jax.tree_util.tree_leaves(tree))
    frozen_leaves = leaves(inputs[3])
    assert frozen_leaves == leaves(frozen) > 20
    assert leaves(lowered.args_info) == leaves(state) + leaves(inputs[0]) + 2 + frozen_leaves
    largest_vae, largest_text = (max(x.size for x in jax.tree_util.tree_leaves(frozen[k])) for k in ("vae", "text"))
    largest = _largest_constant(lowered.as_text())  # the noise schedule's 1000-entry tables
    # The check sees constants: the same encode with the params closed over bakes them in.
    closed = jax.jit(lambda video: raw.encoders.encode_video(frozen, video, jax.random.key(0))).lower(raw_batch["video"])
    closed_largest = _largest_constant(closed.as_text())
    print("largest constant: in the step", largest, "closed over", closed_largest, "largest params", largest_vae, largest_text)
    assert largest < min(largest_vae, largest_text) <= closed_largest


def test_the_mcm_inputs_encoded_in_the_step_equal_the_host_encodes(setup):
    """What the distillation loop computed on the host each step, now in its jitted step: the
    posterior sample of the clips, CLIP embeddings, and real images through the codec (the mean)."""
    mesh, raw, cached, codec, text, frozen, raw_batch = setup
    rng = np.random.default_rng(1)
    real_captions = ["a red circle", "the blue square", "a blue circle moves", "red"]
    captions = step_captions(text, raw.encoders).caption_transform
    batch = {
        **raw_batch,
        "real_images": rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8),
        "real_tokens": captions(real_captions),
    }
    key = encode_key(jax.random.fold_in(jax.random.key(5), 0))
    null = captions([""])[0]
    inside = jax.jit(lambda frozen, batch, null, key: mcm_inputs(raw.encoders, frozen, batch, null, key, True))(frozen, batch, null, key)
    pixels = media.to_model_range(batch["video"]).reshape(-1, 16, 16, 3)
    embeddings = text.caption_transform(CAPTIONS)
    real = media.to_model_range(batch["real_images"])
    host = {
        "latents": np.asarray(codec.encode(pixels, key)).reshape(2, 4, 8, 8, 4),
        "text": embeddings,
        "null_text": np.broadcast_to(text.null_caption, embeddings.shape),
        "frame_stride": batch["frame_stride"],
        "condition": embeddings.mean(axis=1),
        "real_images": np.asarray(codec.decode(codec.encode(real))),
        "real_condition": text.caption_transform(real_captions).mean(axis=1),
    }
    assert set(inside) == set(host)
    for name in host:
        error = np.abs(np.asarray(inside[name]) - host[name]).max()
        print(f"{name}: max |in step - host| = {error:.2e}")
        np.testing.assert_allclose(inside[name], host[name], atol=2e-5, rtol=0, err_msg=name)
