"""Denoising errors of a trained model by noise level, on held-out clips; prints one JSON object.

  python launch/denoising_profile.py --checkpoint=runs/tiny --num_videos=8 --seed=1

For each timestep, held-out moving-shapes clips are noised as in training and the model's clean-clip
and noise estimates are scored (mean squared error in latent units, jax_i2v/eval/denoising.py);
`static_x0_mse` is the clean-clip error of the repeated first frame, for scale.
`x0_mse_reversed_caption` repeats the clean-clip error (same noise) with every direction in the
captions reversed: a model that reads the motion from its caption does worse with it at high
noise, one that ignores the caption scores the same. Clips, checkpoint and `--config` (a config
file whose data section replaces the run's, with --config.KEY=VALUE overrides) work as in
launch/evaluate.py; the clips use frame stride 1.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from jax_i2v.cli import (
    define_integer_list,
    define_seed_flag,
    define_trained_run_flags,
    exit_on_user_error,
    parse_launcher_flags,
    quiet_library_logs,
)
from jax_i2v.data.moving_shapes import reverse_directions
from jax_i2v.diffusion.schedules import make_schedule
from jax_i2v.eval.denoising import denoising_errors
from jax_i2v.eval.synthetic_benchmark import load_run_and_clips
from jax_i2v.models.unet import apply_unet
from jax_i2v.pipeline import noise_alpha_from_config

DEFAULT_TIMESTEPS = (10, 50, 100, 200, 400, 600, 800, 999)

FLAGS = flags.FlagValues()
_CHECKPOINT, _EMA, _CONFIG = define_trained_run_flags(FLAGS)
_NUM_VIDEOS = flags.DEFINE_integer("num_videos", 8, "held-out clips", lower_bound=1, flag_values=FLAGS)
_SEED = define_seed_flag("picks the held-out videos and the noise", FLAGS)
_TIMESTEPS = define_integer_list("timesteps", list(DEFAULT_TIMESTEPS), "noise levels to score", flag_values=FLAGS)


def profile(checkpoint: str, num_videos: int = 8, seed: int = 0, timesteps=DEFAULT_TIMESTEPS, data_config=None, use_ema=True) -> dict:
    """The denoising errors of the run at `checkpoint` on `num_videos` held-out clips."""
    pipe, config, clips = load_run_and_clips(checkpoint, num_videos, seed, data_config, use_ema)
    latents = pipe.encode_frames(np.stack([clip.video for clip in clips]), jax.random.split(jax.random.key(seed), len(clips)))
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
        timesteps,
        jax.random.key(seed),
        noise_alpha=noise_alpha_from_config(config),
        other_texts={"reversed_caption": pipe.text_encoder.encode([reverse_directions(c) for c in captions])},
    )
    static = jnp.broadcast_to(latents[:, :1], latents[:, 1:].shape)
    return {
        "static_x0_mse": float(jnp.mean(jnp.square(static - latents[:, 1:]))),
        "timesteps": {str(t): e for t, e in errors.items()},
        "settings": {"checkpoint": checkpoint, "num_videos": num_videos, "seed": seed},
    }


def main(argv=None) -> dict:
    """Profiles for the command-line arguments `argv` (default: sys.argv[1:])."""
    parse_launcher_flags(FLAGS, argv, __doc__)
    quiet_library_logs()
    with exit_on_user_error():
        result = profile(_CHECKPOINT.value, _NUM_VIDEOS.value, _SEED.value, _TIMESTEPS.value, _CONFIG.value, _EMA.value)
    print(json.dumps(result))
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
