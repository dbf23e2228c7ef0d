"""The analytic UNet FLOP count against the traced program and against XLA's cost model.

Two independent references:
- the jaxpr of the forward pass, whose dot_general / conv_general_dilated FLOPs are summed here:
  it must equal `unet_flops` exactly, with and without conv taps that read zero padding, for
  configs that exercise every branch of the walk;
- XLA's cost analysis of the compiled forward and forward + backward (what the training loop
  reports as FLOPs per step), within 5%.

Why 5% holds: XLA counts the same dots and convolutions (taps that read zero padding excluded,
hence `count_padding=False`; with them the 8x8 convs count 20% more), plus about
one FLOP per element of every elementwise op and reduction (norms, SiLU, softmax, residuals,
rotary) and 64 per element of the exact GELU (erfc is expanded into a polynomial). That excess
scales with activation size while matmul FLOPs scale with activation size x channels: at 256
channels (head width 64) XLA is 1.9% above the forward count and 1.2% above forward + backward
(whose 3x also counts the input gradients of conv_in and of the text projections, which XLA
skips); at the 32 channels of configs/micro.py it would be 14% above.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from jax_i2v.models.config import UNetConfig
from jax_i2v.models.flops import train_step_flops, unet_flops, unet_flops_breakdown
from jax_i2v.models.unet import build_unet, dummy_inputs
from jax_i2v.train.step import compiled_flops

# configs/micro.py's shapes (8x8x12 latents, 4 frames, 6 text tokens), one level, but 256 channels
# so that matmuls dominate XLA's count.
WIDE = UNetConfig(
    in_channels=12,
    out_channels=12,
    down_block_types=("CrossAttnDownBlock2D",),
    up_block_types=("CrossAttnUpBlock2D",),
    block_out_channels=(256,),
    attention_head_dim=(4,),
    n_temp_heads=4,
    cross_attention_dim=32,
    sample_size=8,
    n_frames=4,
)
WIDE_SHAPES = dict(batch=1, frames=4, height=8, width=8, text_len=6)
TOLERANCE = 0.05
# LLVM optimisation does not change the HLO that the cost model reads, only how long compiling takes.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

SMALL = dict(block_out_channels=(32, 64), attention_head_dim=(1, 2), n_temp_heads=2, cross_attention_dim=16, sample_size=8)
# Every branch of the walk: three levels with mixed block types, two layers per block, odd and
# non-square sizes (downsample rounding, upsample to the skip's size), conv2d first-frame mode,
# downsample padding 0, sinusoidal positions, no temporal window, mode "none", no temporal layers.
EXACT_CASES = {
    "released_layout": (
        dict(
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64, 64),
            attention_head_dim=(1, 2, 2),
            layers_per_block=2,
            n_temp_heads=2,
            cross_attention_dim=16,
        ),
        dict(batch=2, frames=3, height=12, width=10, text_len=5),
    ),
    "conv2d_mode_variants": (
        dict(
            SMALL,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            first_frame_condition_mode="conv2d",
            downsample_padding=0,
            temp_pos_embedding="sinusoidal",
            augment_temporal_attention=False,
            use_frame_stride_condition=False,
        ),
        dict(batch=1, frames=5, height=9, width=7, text_len=3),
    ),
    "no_first_frame_no_temporal": (
        dict(
            SMALL,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            first_frame_condition_mode="none",
            use_temporal=False,
        ),
        dict(batch=1, frames=2, height=8, width=8, text_len=4),
    ),
}


def _model_and_args(config, batch, frames, height, width, text_len):
    model = build_unet(config, attention="xla")  # materialised attention: no loops to under-count
    inputs = dummy_inputs(config, batch=batch, frames=frames, height=height, width=width)
    inputs["encoder_hidden_states"] = jnp.zeros((batch, text_len, config.cross_attention_dim), jnp.float32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs))["params"]
    forward = lambda p, x: model.apply({"params": p}, **x)
    return forward, params, inputs


def _valid_pairs(size, out, kernel, stride, pad_lo) -> int:
    """(output position, kernel tap) pairs of one conv axis that read a real, not padded, input element."""
    index = np.arange(out)[:, None] * stride + np.arange(kernel)[None, :] - pad_lo
    return int(((index >= 0) & (index < size)).sum())


def _jaxpr_matmul_flops(jaxpr, count_padding: bool) -> int:
    """2 x MACs of every dot_general and conv_general_dilated in a jaxpr, recursing into sub-jaxprs;
    conv taps that read zero padding count only with `count_padding`."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        assert name not in ("scan", "while", "cond"), f"{name}: a loop body would be counted once"
        subs = [
            x.jaxpr if isinstance(x, jax_core.ClosedJaxpr) else x
            for v in eqn.params.values()
            for x in (v if isinstance(v, (list, tuple)) else [v])
            if isinstance(x, (jax_core.ClosedJaxpr, jax_core.Jaxpr))
        ]
        total += sum(_jaxpr_matmul_flops(s, count_padding) for s in subs)
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * eqn.outvars[0].aval.size * math.prod(lhs[d] for d in contract)
        elif name == "conv_general_dilated":
            p = eqn.params
            assert p["feature_group_count"] == p["batch_group_count"] == 1
            assert set(p["lhs_dilation"]) <= {1} and set(p["rhs_dilation"]) <= {1}
            lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
            lhs, rhs, out = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape
            pairs = 1
            for i, (stride, (lo, _)) in enumerate(zip(p["window_strides"], p["padding"])):
                size, out_size, kernel = lhs[lhs_spec[2 + i]], out[out_spec[2 + i]], rhs[rhs_spec[2 + i]]
                pairs *= out_size * kernel if count_padding else _valid_pairs(size, out_size, kernel, stride, lo)
            total += 2 * lhs[lhs_spec[0]] * pairs * rhs[rhs_spec[1]] * rhs[rhs_spec[0]]
    return total


@pytest.mark.parametrize("case", sorted(EXACT_CASES))
def test_forward_count_equals_the_traced_programs_matmuls_and_convs(case):
    overrides, shapes = EXACT_CASES[case]
    config = UNetConfig(**overrides)
    forward, params, inputs = _model_and_args(config, **shapes)
    jaxpr = jax.make_jaxpr(forward)(params, inputs).jaxpr
    for count_padding in (False, True):
        assert unet_flops(config, count_padding=count_padding, **shapes) == _jaxpr_matmul_flops(jaxpr, count_padding)


@pytest.fixture(scope="module")
def wide_model():
    """(forward, param shapes, inputs) of WIDE."""
    return _model_and_args(WIDE, **WIDE_SHAPES)


def test_forward_count_is_within_5_percent_of_xlas_cost_model(wide_model):
    forward, params, inputs = wide_model
    xla = compiled_flops(jax.jit(forward).lower(params, inputs).compile(compiler_options=FAST_COMPILE))
    analytic = unet_flops(WIDE, count_padding=False, **WIDE_SHAPES)
    # XLA adds elementwise work to the same matmuls, so it can only be above the analytic count.
    assert analytic <= xla <= (1 + TOLERANCE) * analytic, (xla, analytic)


def test_train_step_count_is_within_5_percent_of_xlas_cost_model(wide_model):
    forward, params, inputs = wide_model
    grad = jax.grad(lambda p, x: jnp.mean(jnp.square(forward(p, x))))
    xla = compiled_flops(jax.jit(grad).lower(params, inputs).compile(compiler_options=FAST_COMPILE))
    analytic = train_step_flops(WIDE, remat="none", count_padding=False, **WIDE_SHAPES)
    assert abs(xla - analytic) <= TOLERANCE * analytic, (xla, analytic)


def test_train_step_conventions():
    kw = dict(WIDE_SHAPES)
    forward = unet_flops(WIDE, **kw)
    parts = unet_flops_breakdown(WIDE, **kw)
    assert sum(parts.values()) == forward
    assert train_step_flops(WIDE, remat="none", **kw) == 3 * forward
    # Outside the rematerialised blocks: conv_in, conv_out (3x3 over all B*F frames) and the
    # timestep and frame-stride MLPs (c0 -> 4c0 -> 4c0, once per video).
    b, f, h, w, c0 = kw["batch"], kw["frames"], kw["height"], kw["width"], WIDE.block_out_channels[0]
    conv_io = 2 * b * f * h * w * 9 * c0 * (WIDE.in_channels + WIDE.out_channels)
    mlps = 2 * 2 * b * (c0 * 4 * c0 + 4 * c0 * 4 * c0)
    assert train_step_flops(WIDE, remat="block", **kw) == 4 * forward - conv_io - mlps
    # dots_saveable keeps Dense outputs: the blocks' convolutions and attention products are redone.
    dots = train_step_flops(WIDE, remat="dots_saveable", **kw)
    assert dots == 3 * forward + parts["conv"] - conv_io + parts["attention"]
    with pytest.raises(ValueError):
        train_step_flops(WIDE, remat="everything", **kw)
