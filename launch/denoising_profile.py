"""Denoising errors of a trained model by noise level, on held-out clips; prints one JSON object.

  python launch/denoising_profile.py --checkpoint runs/tiny --num-videos 8 --seed 1

For each timestep, held-out moving-shapes clips are noised as in training and the model's clean-clip
and noise estimates are scored (mean squared error in latent units, jax_i2v/eval/denoising.py);
`static_x0_mse` is the clean-clip error of the repeated first frame, for scale.
`x0_mse_reversed_caption` repeats the clean-clip error (same noise) with every direction in the
captions reversed: a model that reads the motion from its caption does worse with it at high
noise, one that ignores the caption scores the same. Clips, checkpoint and `--config` work as in
launch/evaluate.py; the clips use frame stride 1.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jax_i2v.cli import exit_on_user_error
from jax_i2v.data.moving_shapes import reverse_directions
from jax_i2v.diffusion.schedules import make_schedule
from jax_i2v.eval.denoising import denoising_errors
from jax_i2v.eval.synthetic_benchmark import load_run_and_clips
from jax_i2v.models.unet import apply_unet
from jax_i2v.pipeline import noise_alpha_from_config

DEFAULT_TIMESTEPS = (10, 50, 100, 200, 400, 600, 800, 999)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training workdir, checkpoints/STEP folder or params export")
    p.add_argument("--config", help="config file whose data section replaces the checkpoint's (dataset location)")
    p.add_argument("--num-videos", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="picks the held-out videos and the noise")
    p.add_argument("--timesteps", type=int, nargs="+", default=DEFAULT_TIMESTEPS)
    p.add_argument("--no-ema", action="store_true")
    args = p.parse_args(argv)
    if args.num_videos < 1:
        p.error("--num-videos must be >= 1")
    return args


def run(args) -> dict:
    pipe, config, clips = load_run_and_clips(args.checkpoint, args.num_videos, args.seed, args.config, use_ema=not args.no_ema)
    latents = pipe.encode_frames(np.stack([clip.video for clip in clips]), jax.random.key(args.seed))
    conditioned = pipe.unet.config.conditions_on_first_frame
    first, clean = (latents[:, :1], latents[:, 1:]) if conditioned else (None, latents)
    schedule = make_schedule(**config.schedule.to_dict())
    captions = [clip.caption for clip in clips]
    errors = denoising_errors(
        lambda *inputs: apply_unet(pipe.unet, pipe.params, *inputs),
        schedule,
        config.objective.prediction_type,
        clean,
        first,
        pipe.text_encoder.encode(captions),
        jnp.ones((len(clips),), jnp.float32),
        args.timesteps,
        jax.random.key(args.seed),
        noise_alpha=noise_alpha_from_config(config),
        other_texts={"reversed_caption": pipe.text_encoder.encode([reverse_directions(c) for c in captions])},
    )
    static = jnp.broadcast_to(latents[:, :1], latents[:, 1:].shape)
    return {
        "static_x0_mse": float(jnp.mean(jnp.square(static - latents[:, 1:]))),
        "timesteps": {str(t): e for t, e in errors.items()},
        "settings": {"checkpoint": args.checkpoint, "num_videos": args.num_videos, "seed": args.seed},
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    with exit_on_user_error():
        result = run(args)
    print(json.dumps(result))
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
