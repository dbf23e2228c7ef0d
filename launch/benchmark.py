"""Times the video UNet's forward and forward+backward with random params.

  python launch/benchmark.py --unet-config path/to/unet/config.json \
      --batch 1 --frames 16 --latent-hw 32 32 --text-len 77

`--frames` counts the conditioning frame (the reference's `n_frames`). Prints one
JSON line: params, compile_s (forward + backward compilation), fwd_ms, fwdbwd_ms
(medians over timed runs after warm-up; fwdbwd is the gradient of the mean squared
output w.r.t. params), the model FLOPs of forward + backward (`jax_i2v.models.flops`), the
TFLOP/s they give and the MFU against the chip's dense bf16 peak (null on CPUs), and the
attention kernel per kind.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from jax_i2v.cli import exit_on_user_error
from jax_i2v.config_utils import DTYPES
from jax_i2v.convert import read_unet_config
from jax_i2v.models.attention import IMPLEMENTATIONS
from jax_i2v.models.flops import peak_bf16_flops, train_step_flops
from jax_i2v.models.unet import apply_unet, build_unet, random_params


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unet-config", required=True, help="diffusers-layout UNet config.json (file or its folder)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=16, help="frames including the conditioning frame")
    p.add_argument("--latent-hw", type=int, nargs=2, default=(32, 32), metavar=("H", "W"))
    p.add_argument("--text-len", type=int, default=77)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="compute dtype (params stay fp32)")
    p.add_argument("--attention", choices=IMPLEMENTATIONS, default="auto")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.batch < 1 or args.frames < 2 or args.text_len < 1 or min(args.latent_hw) < 1:
        p.error("need --batch >= 1, --frames >= 2, --text-len >= 1 and positive --latent-hw")
    if args.iters < 1 or args.warmup < 0:
        p.error("need --iters >= 1 and --warmup >= 0")
    return args


def _median_ms(fn, args, warmup, iters):
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run(args) -> dict:
    config = read_unet_config(args.unet_config)
    model = build_unet(config, dtype=DTYPES[args.dtype], attention=args.attention)
    height, width = args.latent_hw
    keys = jax.random.split(jax.random.key(args.seed), 3)
    params = random_params(model, args.seed)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))

    frames = args.frames - 1 if config.conditions_on_first_frame else args.frames
    c = config.in_channels
    sample = jax.random.normal(keys[0], (args.batch, frames, height, width, c))
    first = jax.random.normal(keys[1], (args.batch, 1, height, width, c))
    text = jax.random.normal(keys[2], (args.batch, args.text_len, config.cross_attention_dim))
    timesteps = jnp.full((args.batch,), 500, jnp.int32)
    stride = jnp.full((args.batch,), 3, jnp.int32)

    forward = functools.partial(apply_unet, model)

    def loss(params, *inputs):
        return jnp.mean(jnp.square(forward(params, *inputs).astype(jnp.float32)))

    inputs = (params, sample, timesteps, text, first, stride)
    start = time.perf_counter()
    fwd = jax.jit(forward).lower(*inputs).compile()
    fwdbwd = jax.jit(jax.grad(loss)).lower(*inputs).compile()
    compile_s = time.perf_counter() - start
    fwdbwd_ms = _median_ms(fwdbwd, inputs, args.warmup, args.iters)
    device_kind = jax.devices()[0].device_kind
    model_flops = train_step_flops(config, batch=args.batch, frames=args.frames, height=height, width=width, text_len=args.text_len)
    achieved = model_flops / (fwdbwd_ms / 1e3)
    peak = peak_bf16_flops(device_kind)
    return {
        "params": int(n_params),
        "compile_s": round(compile_s, 3),
        "fwd_ms": round(_median_ms(fwd, inputs, args.warmup, args.iters), 3),
        "fwdbwd_ms": round(fwdbwd_ms, 3),
        "model_flops_fwdbwd": int(model_flops),
        "model_tflops_per_s": round(achieved / 1e12, 4),
        "mfu": None if peak is None else round(achieved / peak, 4),
        "batch": args.batch,
        "frames": args.frames,
        "latent_hw": [height, width],
        "text_len": args.text_len,
        "dtype": args.dtype,
        "attention": model.attention_implementation.as_dict(),
        "device": device_kind,
    }


def main(argv=None):
    args = parse_args(argv)
    with exit_on_user_error():
        result = run(args)
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
