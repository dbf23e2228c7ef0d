"""Properties of the video UNet: frame-count freedom, conditioning paths, batching, dtypes, input checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jax_i2v.config_utils import text_conditioning
from jax_i2v.models import UNetConfig, build_unet, map_mixers
from jax_i2v.models.unet import dummy_inputs
from jax_i2v.train.experiment import initial_params


def _inputs(config, key, batch=2, frames=5, hw=(8, 8), text_len=7):
    """Random inputs; `frames` counts the conditioning frame. The defaults are reference case 0's
    shapes, so the session's compiled reference apply is reused."""
    ks = jax.random.split(key, 3)
    sample_frames = frames - 1 if config.conditions_on_first_frame else frames
    c = config.in_channels
    return dict(
        sample=jax.random.normal(ks[0], (batch, sample_frames) + hw + (c,)),
        timesteps=jnp.full((batch,), 400),
        encoder_hidden_states=jax.random.normal(ks[1], (batch, text_len, config.cross_attention_dim)),
        first_frame_latents=jax.random.normal(ks[2], (batch, 1) + hw + (c,)),
        frame_stride=jnp.full((batch,), 2),
    )


@pytest.fixture(scope="module")
def temporal_off_params(reference_unet):
    """Reference params with every alpha at 1: all temporal layers become identities."""
    return map_mixers(jnp.ones_like, reference_unet[1])


def test_same_params_run_any_frame_count(reference_unet, reference_apply):
    model, params = reference_unet
    for frames in (2, 5, 9):
        inputs = _inputs(model.config, jax.random.key(frames), frames=frames)
        out = reference_apply(params, **inputs)
        assert out.shape == inputs["sample"].shape
        assert np.isfinite(np.asarray(out)).all()


def test_frames_are_independent_when_temporal_layers_are_off(reference_unet, reference_apply, temporal_off_params):
    """At alpha = 1 a frame's output depends only on itself and frame 0, whatever the clip length."""
    model, _ = reference_unet
    long = _inputs(model.config, jax.random.key(0), frames=9)
    short = dict(long, sample=long["sample"][:, :1])
    out_long = np.asarray(reference_apply(temporal_off_params, **long))
    out_short = np.asarray(reference_apply(temporal_off_params, **short))
    np.testing.assert_allclose(out_long[:, :1], out_short, atol=1e-5)


def test_temporal_layers_mix_frames(reference_unet, reference_apply):
    model, params = reference_unet
    inputs = _inputs(model.config, jax.random.key(1))
    perturbed = dict(inputs, sample=inputs["sample"].at[:, 3].add(1.0))
    a = np.asarray(reference_apply(params, **inputs))
    b = np.asarray(reference_apply(params, **perturbed))
    assert np.abs(a[:, 0] - b[:, 0]).max() > 1e-3


def test_spatial_first_frame_attention_reaches_every_frame(reference_unet, reference_apply, temporal_off_params):
    """With temporal layers off, the only route from frame 0 to frame k is spatial first-frame attention."""
    model, _ = reference_unet
    inputs = _inputs(model.config, jax.random.key(2))
    changed = dict(inputs, first_frame_latents=inputs["first_frame_latents"] + 1.0)
    delta = np.abs(np.asarray(reference_apply(temporal_off_params, **inputs)) - np.asarray(reference_apply(temporal_off_params, **changed)))
    assert (delta.max(axis=(0, 2, 3, 4)) > 1e-3).all()

    # In input_only mode the frame is prepended but not attended to spatially: no route is left.
    input_only = build_unet(dataclasses.replace(model.config, first_frame_condition_mode="input_only"))
    apply = jax.jit(lambda p, kw: input_only.apply({"params": p}, **kw))
    np.testing.assert_allclose(np.asarray(apply(temporal_off_params, inputs)), np.asarray(apply(temporal_off_params, changed)), atol=1e-6)


def test_per_sample_timesteps_and_strides(reference_unet, reference_apply):
    """Row i of a batch with per-sample (t, stride) equals row i of the batch run at (t_i, stride_i)."""
    model, params = reference_unet
    inputs = _inputs(model.config, jax.random.key(3))
    timesteps, strides = np.array([10, 900]), np.array([1, 5])
    batched = np.asarray(reference_apply(params, **dict(inputs, timesteps=timesteps, frame_stride=strides)))
    outs = []
    for i in range(2):
        outs.append(np.asarray(reference_apply(params, **dict(inputs, timesteps=timesteps[i], frame_stride=strides[i]))))
        np.testing.assert_allclose(batched[i], outs[i][i], atol=2e-5)
    # The per-sample values matter: row 1 run at row 0's (t, stride) is a different prediction.
    assert np.abs(batched[1] - outs[0][1]).max() > 1e-3


def test_bfloat16_compute_with_float32_params(reference_unet, reference_cases, reference_apply):
    """bf16 rounds to 8 mantissa bits (~0.4% per op); through ~30 layers we allow 8% of the output's
    max for the worst element and 4% of its mean magnitude on average (measured: 3.4% and 2.1%)."""
    model, params = reference_unet
    bf16 = build_unet(model.config, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    inputs, _ = reference_cases[0]
    out = jax.jit(lambda p, kw: bf16.apply({"params": p}, **kw))(params, inputs)
    assert out.dtype == jnp.bfloat16
    ref = np.asarray(reference_apply(params, **inputs))
    err = np.abs(np.asarray(out, np.float32) - ref)
    assert err.max() <= 0.08 * np.abs(ref).max()
    assert err.mean() <= 0.04 * np.abs(ref).mean()


def test_frame_stride_embedding_starts_at_zero(reference_unet, reference_apply):
    """The stride MLP's last layer initialises to zero, and zero there removes the stride's effect."""
    from jax_i2v.models.layers import TimestepEmbedding

    fresh = TimestepEmbedding(16, zero_init_last=True).init(jax.random.key(4), jnp.ones((1, 8)))["params"]
    assert not np.asarray(fresh["linear_2"]["kernel"]).any() and not np.asarray(fresh["linear_2"]["bias"]).any()
    assert np.asarray(fresh["linear_1"]["kernel"]).any()

    model, params = reference_unet
    stride_mlp = params["frame_stride_embedding"]
    zeroed = dict(params, frame_stride_embedding=dict(stride_mlp, linear_2=jax.tree.map(jnp.zeros_like, stride_mlp["linear_2"])))
    inputs = _inputs(model.config, jax.random.key(5))
    np.testing.assert_array_equal(
        np.asarray(reference_apply(zeroed, **dict(inputs, frame_stride=1))),
        np.asarray(reference_apply(zeroed, **dict(inputs, frame_stride=5))),
    )
    assert (
        np.abs(
            np.asarray(reference_apply(params, **dict(inputs, frame_stride=1)))
            - np.asarray(reference_apply(params, **dict(inputs, frame_stride=5)))
        ).max()
        > 1e-3
    )


def _tiny_config(**overrides):
    base = dict(
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=(2, 4),
        cross_attention_dim=16,
        norm_num_groups=8,
        n_temp_heads=4,
    )
    return UNetConfig(**{**base, **overrides})


@pytest.mark.parametrize(
    "overrides",
    [
        dict(first_frame_condition_mode="none"),
        dict(first_frame_condition_mode="input_only"),
        dict(first_frame_condition_mode="conv2d"),
        dict(temp_pos_embedding="sinusoidal", augment_temporal_attention=False),
        dict(use_temporal=False, use_frame_stride_condition=False),
        dict(use_linear_projection=False, downsample_padding=0),
    ],
    ids=["none", "input_only", "conv2d", "sinusoidal", "image_only", "conv_proj"],
)
def test_every_reference_option_traces(overrides):
    """Each option initialises and traces on an odd, non-square latent (skips resized like diffusers).

    `eval_shape` runs every shape rule of the forward pass without XLA compilation.
    """
    config = _tiny_config(**overrides)
    model = build_unet(config)
    inputs = _inputs(config, jax.random.key(6), batch=1, frames=3, hw=(5, 7), text_len=2)
    out = jax.eval_shape(lambda kw: model.apply(model.init(jax.random.key(7), **kw), **kw), inputs)
    assert out.shape == inputs["sample"].shape  # mode "none" predicts every frame it is given
    assert out.dtype == jnp.float32


def test_bad_inputs_raise_clear_errors(reference_unet):
    model, params = reference_unet
    good = _inputs(model.config, jax.random.key(10), batch=2)

    def call(**changes):
        return model.apply({"params": params}, **dict(good, **changes))

    with pytest.raises(ValueError, match="channels"):
        call(sample=good["sample"][..., :3])
    with pytest.raises(ValueError, match="at least 2 frames"):
        call(sample=good["sample"][:, :0])
    with pytest.raises(ValueError, match="first_frame_latents"):
        call(first_frame_latents=good["first_frame_latents"][:, :, :4])
    with pytest.raises(ValueError, match="cross_attention_dim"):
        call(encoder_hidden_states=jnp.zeros((2, 3, 7)))
    with pytest.raises(ValueError, match="timesteps"):
        call(timesteps=jnp.zeros((3,)))
    with pytest.raises(ValueError, match="frame_stride is required"):
        call(frame_stride=None)
    with pytest.raises(ValueError, match=r"\(B, F, H, W, C\)"):
        call(sample=good["sample"][0])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(attention_head_dim=(3, 4)), "not divisible by its spatial head count"),
        (dict(n_temp_heads=3), "not divisible by n_temp_heads"),
        (dict(block_out_channels=(48, 64), norm_num_groups=8), "multiple of 32"),
        (dict(block_out_channels=(32, 60), attention_head_dim=(2, 8), norm_num_groups=4, use_temporal=False), "spatial head count"),
        (dict(first_frame_condition_mode="channel"), "first_frame_condition_mode"),
        (dict(up_block_types=("UpBlock2D",)), "same length"),
    ],
)
def test_bad_configs_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        _tiny_config(**overrides)


def test_dummy_inputs_initialise_every_mode():
    for mode in ("none", "concat"):
        config = _tiny_config(first_frame_condition_mode=mode)
        shapes = jax.eval_shape(lambda: build_unet(config).init(jax.random.key(0), **dummy_inputs(config)))
        assert "conv_in" in shapes["params"]


def test_initial_temporal_mixers_switch_frame_mixing_on_or_off(reference_unet, reference_apply):
    """Training from scratch starts the alphas at `train.temporal_mixer_init`: at 1 frames are
    processed independently, at 0 the fresh temporal layers already mix them."""
    model, _ = reference_unet
    text = text_conditioning({"kind": "hashed"}, 7, model.config.cross_attention_dim)
    inputs = _inputs(model.config, jax.random.key(2))
    perturbed = dict(inputs, sample=inputs["sample"].at[:, 3].add(1.0))
    for mixer_init, mixes in ((1.0, False), (0.0, True)):
        params = initial_params(jax.random.key(0), model, text.module, mixer_init)
        alphas = [leaf for path, leaf in traverse_util.flatten_dict(params).items() if path[-1] == "alpha"]
        assert alphas and all(float(a[0]) == mixer_init for a in alphas)
        change = np.abs(np.asarray(reference_apply(params, **inputs))[:, 0] - np.asarray(reference_apply(params, **perturbed))[:, 0]).max()
        assert (change > 1e-3) == mixes, (mixer_init, change)
