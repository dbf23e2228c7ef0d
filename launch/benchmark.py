"""Times the video UNet's forward and forward+backward with random params.

  python launch/benchmark.py --unet_config=path/to/unet/config.json \
      --batch=1 --frames=16 --latent_hw=32,32 --text_len=77
  python launch/benchmark.py --config=configs/tiny.py --frames=8 --latent_hw=8,8

The UNet is a diffusers-layout config.json (`--unet_config`) or an experiment config's `unet`
section (`--config`, with --config.KEY=VALUE overrides; its model.attention unless --attention).
`--frames` counts the conditioning frame (the reference's `n_frames`). Prints one
JSON line: params, compile_s (forward + backward compilation), fwd_ms, fwdbwd_ms
(medians over timed runs after warm-up; fwdbwd is the gradient of the mean squared
output w.r.t. params), the model FLOPs of forward + backward (`jax_i2v.models.flops`), the
TFLOP/s they give and the MFU against the chip's dense bf16 peak (null on CPUs), and the
attention kernel per kind. `--op_profile` adds `fwdbwd_op_ms`: forward + backward's time by kind of
op (convolution, matmul, ...) from a profiler trace (`jax_i2v.op_profile`).
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from absl import flags
from ml_collections import config_flags

from jax_i2v.cli import define_attention_flag, define_integer_list, define_seed_flag, exit_on_user_error, parse_launcher_flags
from jax_i2v.config_utils import DTYPES, attention_setting, unet_config
from jax_i2v.convert import read_unet_config
from jax_i2v.models.flops import peak_bf16_flops, train_step_flops
from jax_i2v.models.unet import apply_unet, build_unet, random_params
from jax_i2v.op_profile import op_time_breakdown
from jax_i2v.params_io import parameter_count

FLAGS = flags.FlagValues()
_UNET_CONFIG = flags.DEFINE_string("unet_config", None, "diffusers-layout UNet config.json (file or its folder)", flag_values=FLAGS)
_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config (configs/*.py) whose unet section is timed", flag_values=FLAGS)
_BATCH = flags.DEFINE_integer("batch", 1, "clips per step", lower_bound=1, flag_values=FLAGS)
_FRAMES = flags.DEFINE_integer("frames", 16, "frames including the conditioning frame", lower_bound=2, flag_values=FLAGS)
_LATENT_HW = define_integer_list("latent_hw", [32, 32], "latent height,width", flag_values=FLAGS)
_TEXT_LEN = flags.DEFINE_integer("text_len", 77, "caption tokens", lower_bound=1, flag_values=FLAGS)
_DTYPE = flags.DEFINE_enum("dtype", "float32", sorted(DTYPES), "compute dtype (params stay fp32)", flag_values=FLAGS)
_ATTENTION = define_attention_flag(FLAGS, fallback="the config's model.attention, else auto")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed runs first", lower_bound=0, flag_values=FLAGS)
_ITERS = flags.DEFINE_integer("iters", 5, "timed runs", lower_bound=1, flag_values=FLAGS)
_SEED = define_seed_flag("picks the random params and inputs", FLAGS)
_OP_PROFILE = flags.DEFINE_bool("op_profile", False, "also trace forward + backward and report its time by kind of op", flag_values=FLAGS)
flags.register_validator(
    "latent_hw", lambda hw: len(hw) == 2 and min(hw) >= 1, "--latent_hw takes two positive sizes: H,W", flag_values=FLAGS
)


def _median_ms(fn, args, warmup, iters):
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run(
    config,
    batch: int = 1,
    frames: int = 16,
    latent_hw: tuple[int, int] = (32, 32),
    text_len: int = 77,
    dtype: str = "float32",
    attention: str = "auto",
    warmup: int = 2,
    iters: int = 5,
    seed: int = 0,
    op_profile: bool = False,
) -> dict:
    """Times the UNet of `config` (a UNetConfig) on random params and inputs."""
    model = build_unet(config, dtype=DTYPES[dtype], attention=attention)
    height, width = latent_hw
    keys = jax.random.split(jax.random.key(seed), 3)
    params = random_params(model, seed)
    n_params = parameter_count(params)

    generated = frames - 1 if config.conditions_on_first_frame else frames
    c = config.in_channels
    sample = jax.random.normal(keys[0], (batch, generated, height, width, c))
    first = jax.random.normal(keys[1], (batch, 1, height, width, c))
    text = jax.random.normal(keys[2], (batch, text_len, config.cross_attention_dim))
    timesteps = jnp.full((batch,), 500, jnp.int32)
    stride = jnp.full((batch,), 3, jnp.int32)

    forward = functools.partial(apply_unet, model)

    def loss(params, *inputs):
        return jnp.mean(jnp.square(forward(params, *inputs).astype(jnp.float32)))

    inputs = (params, sample, timesteps, text, first, stride)
    start = time.perf_counter()
    fwd = jax.jit(forward).lower(*inputs).compile()
    fwdbwd = jax.jit(jax.grad(loss)).lower(*inputs).compile()
    compile_s = time.perf_counter() - start
    fwdbwd_ms = _median_ms(fwdbwd, inputs, warmup, iters)
    device_kind = jax.devices()[0].device_kind
    model_flops = train_step_flops(config, batch=batch, frames=frames, height=height, width=width, text_len=text_len)
    achieved = model_flops / (fwdbwd_ms / 1e3)
    peak = peak_bf16_flops(device_kind)
    result = {
        "params": n_params,
        "compile_s": round(compile_s, 3),
        "fwd_ms": round(_median_ms(fwd, inputs, warmup, iters), 3),
        "fwdbwd_ms": round(fwdbwd_ms, 3),
        "model_flops_fwdbwd": int(model_flops),
        "model_tflops_per_s": round(achieved / 1e12, 4),
        "mfu": None if peak is None else round(achieved / peak, 4),
        "batch": batch,
        "frames": frames,
        "latent_hw": [height, width],
        "text_len": text_len,
        "dtype": dtype,
        "attention": model.attention_implementation.as_dict(),
        "device": device_kind,
    }
    if op_profile:
        result["fwdbwd_op_ms"] = op_time_breakdown(fwdbwd, lambda: fwdbwd(*inputs), repeats=iters)
    return result


def main(argv=None) -> dict:
    """Runs the benchmark for the command-line arguments `argv` (default: sys.argv[1:])."""
    parse_launcher_flags(FLAGS, argv, __doc__)
    with exit_on_user_error():
        if (_UNET_CONFIG.value is None) == (_CONFIG.value is None):
            raise ValueError("give the UNet as --unet_config or --config (one of them)")
        if _UNET_CONFIG.value:
            config, attention = read_unet_config(_UNET_CONFIG.value), _ATTENTION.value or "auto"
        else:
            config, attention = unet_config(_CONFIG.value), _ATTENTION.value or attention_setting(_CONFIG.value)
        result = run(
            config,
            batch=_BATCH.value,
            frames=_FRAMES.value,
            latent_hw=tuple(_LATENT_HW.value),
            text_len=_TEXT_LEN.value,
            dtype=_DTYPE.value,
            attention=attention,
            warmup=_WARMUP.value,
            iters=_ITERS.value,
            seed=_SEED.value,
            op_profile=_OP_PROFILE.value,
        )
    print(json.dumps(result))
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
