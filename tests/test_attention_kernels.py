"""The attention kernel choice per platform, and the Pallas splash kernel (interpret mode on CPU)
against the XLA path on the UNet's real spatial-attention shapes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from jax_i2v.models.attention import AttentionKernels, _softmax_attention, dot_product_attention, resolve_attention
from jax_i2v.models.config import UNetConfig
from jax_i2v.models.unet import apply_unet, attention_head_widths, build_unet, dummy_inputs, random_params
from jax_i2v.parallel.partitioning import DEFAULT_RULES

SD21_WIDTHS = {"spatial": (64,), "cross": (40, 64, 80, 160), "temporal": (40, 80, 160)}


def test_auto_resolves_from_the_target_platform():
    cpu = resolve_attention("auto", "cpu", SD21_WIDTHS, jnp.float32)
    assert cpu == AttentionKernels("blocked", "blocked", "blocked", interpret=False)
    tpu = resolve_attention("auto", "tpu", SD21_WIDTHS, jnp.bfloat16)
    assert tpu == AttentionKernels("splash", "xla", "xla", interpret=False)
    # cuDNN where its fused kernel runs: bf16, head widths <= 128 (temporal heads of 160 fall back).
    gpu = resolve_attention("auto", "gpu", SD21_WIDTHS, jnp.bfloat16)
    assert gpu.as_dict() == {"spatial": "cudnn", "cross": "xla", "temporal": "xla"}
    assert resolve_attention("auto", "cuda", {"spatial": (64,), "cross": (64,), "temporal": (40,)}, jnp.bfloat16).temporal == "cudnn"
    assert resolve_attention("auto", "gpu", SD21_WIDTHS, jnp.float32).as_dict() == {k: "xla" for k in ("spatial", "cross", "temporal")}
    # Asked for on a CPU, splash runs in Pallas interpret mode.
    assert resolve_attention("splash", "cpu", SD21_WIDTHS, jnp.float32) == AttentionKernels("splash", "xla", "xla", interpret=True)
    with pytest.raises(ValueError, match="needs a GPU"):
        resolve_attention("cudnn", "tpu", SD21_WIDTHS, jnp.bfloat16)
    with pytest.raises(ValueError, match="expected one of"):
        resolve_attention("flash", "tpu", SD21_WIDTHS, jnp.bfloat16)


def test_head_widths_of_the_released_unet():
    config = UNetConfig(
        block_out_channels=(320, 640, 1280, 1280),
        attention_head_dim=(5, 10, 20, 20),
        n_temp_heads=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    assert attention_head_widths(config) == SD21_WIDTHS
    # A UNet built for a TPU from this CPU host gets the TPU kernels, not the host's.
    assert build_unet(config, dtype=jnp.bfloat16, platform="tpu").attention_implementation.spatial == "splash"
    assert build_unet(config, platform="cpu").attention_implementation.spatial == "blocked"


def _qkv(key, lead, q_len, kv_len, heads, width, dtype):
    kq, kk, kv = jax.random.split(key, 3)
    return (
        jax.random.normal(kq, lead + (q_len, heads, width)).astype(dtype),
        jax.random.normal(kk, lead + (kv_len, heads, width)).astype(dtype),
        jax.random.normal(kv, lead + (kv_len, heads, width)).astype(dtype),
    )


def _loss(attention):
    # A non-linear read-out, so every output element gets its own cotangent.
    return lambda q, k, v: jnp.sum(jnp.sin(attention(q, k, v).astype(jnp.float32)))


splash = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, implementation="splash", interpret=True))
splash_grad = jax.jit(
    jax.grad(_loss(lambda q, k, v: dot_product_attention(q, k, v, implementation="splash", interpret=True)), argnums=(0, 1, 2))
)
xla_grad = jax.jit(jax.grad(_loss(_softmax_attention), argnums=(0, 1, 2)))


# Spatial first-frame attention: a frame's H*W queries over [frame || frame 0] (2*H*W keys) with
# SD-2.1's head width 64: 16x16 latents (256 / 512, multiples of the 128 blocks) and 8x10
# (80 / 160: padded, the padding masked).
@pytest.mark.parametrize("tokens,heads", [(256, 5), (80, 2)])
def test_splash_equals_xla_in_float32(tokens, heads):
    q, k, v = _qkv(jax.random.key(tokens), (2, 3), tokens, 2 * tokens, heads, 64, jnp.float32)
    # Both are exact softmax attention in float32: they differ by summation order only (~1e-6).
    np.testing.assert_allclose(splash(q, k, v), _softmax_attention(q, k, v), atol=1e-5, rtol=1e-5)
    for got, want in zip(splash_grad(q, k, v), xla_grad(q, k, v)):
        np.testing.assert_allclose(got, want, atol=5e-5, rtol=1e-4)


def test_splash_in_bfloat16_is_as_close_to_exact_as_the_xla_path():
    q, k, v = _qkv(jax.random.key(1), (1, 2), 80, 160, 2, 64, jnp.bfloat16)
    exact = _softmax_attention(*(x.astype(jnp.float32) for x in (q, k, v)))
    splash_error = float(jnp.max(jnp.abs(splash(q, k, v).astype(jnp.float32) - exact)))
    xla_error = float(jnp.max(jnp.abs(_softmax_attention(q, k, v).astype(jnp.float32) - exact)))
    # Outputs are convex combinations of unit-scale values: bf16's 2^-8 relative rounding of the
    # probabilities and the output bounds the error near 1e-2. Splash keeps the logits in float32,
    # the XLA path rounds them to bf16 first, so splash is no less exact.
    assert splash_error < 2e-2 and splash_error <= xla_error * 1.05 + 1e-3, (splash_error, xla_error)
    exact_grads = jax.grad(_loss(_softmax_attention), argnums=(0, 1, 2))(*(x.astype(jnp.float32) for x in (q, k, v)))
    for got, want in zip(splash_grad(q, k, v), exact_grads):
        scale = float(jnp.max(jnp.abs(want)))
        assert float(jnp.max(jnp.abs(got.astype(jnp.float32) - want))) < 4e-2 * scale


def test_splash_under_a_mesh_splits_videos_and_heads_and_equals_one_device():
    q, k, v = _qkv(jax.random.key(2), (4, 2), 80, 160, 2, 64, jnp.float32)
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))

    def sharded(q, k, v):
        with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
            return jax.jit(lambda q, k, v: dot_product_attention(q, k, v, implementation="splash", interpret=True)).lower(q, k, v)

    lowered = sharded(q, k, v)
    assert "shard_map" in lowered.as_text() or "manual" in lowered.as_text()
    np.testing.assert_allclose(lowered.compile()(q, k, v), splash(q, k, v), atol=1e-6)


def test_tiny_unet_with_splash_equals_xla_forward_and_backward():
    config = UNetConfig(
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",),
        block_out_channels=(32,),
        layers_per_block=1,
        attention_head_dim=(2,),
        cross_attention_dim=16,
        norm_num_groups=8,
        n_temp_heads=2,
        first_frame_condition_mode="concat",
        augment_temporal_attention=True,
        use_frame_stride_condition=True,
    )
    models = {name: build_unet(config, attention=name, platform="cpu") for name in ("xla", "splash")}
    assert models["splash"].attention_implementation.spatial == "splash"
    params = random_params(models["xla"], 0)
    inputs = dummy_inputs(config, batch=2, frames=3, height=10, width=8)  # 80 tokens a frame: padded blocks
    keys = jax.random.split(jax.random.key(3), 3)
    inputs.update(
        sample=jax.random.normal(keys[0], inputs["sample"].shape),
        first_frame_latents=jax.random.normal(keys[1], inputs["first_frame_latents"].shape),
        encoder_hidden_states=jax.random.normal(keys[2], (2, 5, 16)),
        timesteps=jnp.array([10, 700]),
    )
    args = [inputs[k] for k in ("sample", "timesteps", "encoder_hidden_states", "first_frame_latents", "frame_stride")]

    def value_and_grad(model):
        loss = lambda p: jnp.mean(jnp.square(apply_unet(model, p, *args)))
        return jax.jit(jax.value_and_grad(loss))(params)

    (loss_xla, grads_xla), (loss_splash, grads_splash) = value_and_grad(models["xla"]), value_and_grad(models["splash"])
    np.testing.assert_allclose(loss_splash, loss_xla, rtol=1e-5)
    flat_xla, flat_splash = jax.tree_util.tree_leaves(grads_xla), jax.tree_util.tree_leaves(grads_splash)
    for got, want in zip(flat_splash, flat_xla):
        np.testing.assert_allclose(got, want, atol=1e-5 * max(1.0, float(np.max(np.abs(want)))), rtol=1e-4)
