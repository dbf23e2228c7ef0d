import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_i2v.diffusion.objective import ObjectiveConfig
from jax_i2v.diffusion.schedules import make_schedule
from jax_i2v.models.text_encoder import PAD_ID, START_ID, TextTransformer, TrainedTextEncoder, WordTokenizer
from jax_i2v.train.step import unet_loss_fn


def test_tokenizer_is_deterministic_and_needs_no_vocabulary():
    tok = WordTokenizer(vocab_size=512, max_length=6)
    ids = tok(["A red circle moves left.", "a red circle moves left", "", "one two three four five six seven"])
    np.testing.assert_array_equal(ids[0], ids[1])
    assert ids[0, 0] == START_ID and (ids[2, 1:] == PAD_ID).all() and (tok(["red circle"])[0, 3:] == PAD_ID).all()
    assert ids.shape == (4, 6) and (ids[3] != PAD_ID).all()  # truncated to max_length
    assert (ids[:, 1:][ids[:, 1:] != PAD_ID] >= 2).all() and ids.max() < 512
    np.testing.assert_array_equal(WordTokenizer(512, 6)(["red"]), tok(["red"]))
    with pytest.raises(TypeError):
        tok("a single string")


def test_padding_does_not_change_the_encoding_of_the_words():
    """Padding keys are masked: extra padding leaves the real tokens' outputs unchanged."""
    module = TextTransformer(vocab_size=128, max_length=12, width=32, layers=2, heads=4, output_dim=16)
    short, long = WordTokenizer(128, 6), WordTokenizer(128, 12)
    params = module.init(jax.random.key(0), long(["x"]))["params"]
    a = TrainedTextEncoder(module, params, short).encode(["a blue square moves up"])
    b = TrainedTextEncoder(module, params, long).encode(["a blue square moves up"])
    assert b.shape == (1, 12, 16)
    np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-5)


class _TextScaledModel(nn.Module):
    """A stand-in UNet whose prediction depends on the caption embedding."""

    @nn.compact
    def __call__(self, sample, timesteps, encoder_hidden_states, first_frame_latents=None, frame_stride=None):
        scale = self.param("scale", nn.initializers.ones, ())
        return scale * sample * jnp.mean(encoder_hidden_states, axis=(1, 2))[:, None, None, None, None]


def test_the_text_encoder_trains_jointly_with_the_unet():
    module = TextTransformer(vocab_size=64, max_length=5, width=16, layers=1, heads=2, output_dim=8)
    tokenizer = WordTokenizer(64, 5)
    loss_fn = unet_loss_fn(_TextScaledModel(), make_schedule(), ObjectiveConfig(), text_module=module)
    params = {"unet": {"scale": jnp.float32(1.0)}, "text": module.init(jax.random.key(0), tokenizer([""]))["params"]}
    batch = {
        "latents": jax.random.normal(jax.random.key(1), (4, 3, 4, 4, 3)),
        "tokens": jnp.asarray(tokenizer(["a red circle", "a blue square", "green", "moves left"])),
    }
    grads = jax.grad(loss_fn)(params, batch, jnp.asarray(tokenizer([""])[0]), jax.random.key(2))
    assert float(jnp.abs(grads["unet"]["scale"])) > 0
    text_grad = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(grads["text"]))
    assert text_grad > 0
